"""The address directory learnt from the agents' status, and peer episodes that add up
(in memory, the real wire format both ways)."""

from __future__ import annotations

from netevents.consumers.correlate import Correlator
from netevents.consumers.correlate.peers import SUMMED

from .test_correlator import NS, T0, Seq, batch, frames

A1, B1, B2 = "10.0.0.1", "10.0.0.2", "10.0.0.22"


def status(host: str, seq: int, t1: int, addresses=None, netns=None, published=None,
           sources=None, boot="boot-" + "x" * 8) -> object:
    e = {"version": "t", "published": published or {}, "sources": sources or {}}
    if addresses is not None:
        e["addresses"] = addresses
    if netns is not None:
        e["netns"] = netns
    return batch("status", host, seq, [e], t0=t1, t1=t1, boot=boot)


def ebpf_drop(host: str, seq: int, ts: int, count: int, src: str, dst: str, *,
              reason: str = "NETFILTER_DROP", netns: int = 4026532999, boot: str = "boot-b") -> object:
    e = {"count": count, "source": "ebpf", "reason": reason, "location": "nft_do_chain+0x4a0",
         "netns": netns, "first_ts": ts, "last_ts": ts,
         "flow": {"src": src, "dst": dst, "l4": 6, "sport": 40000, "dport": 5001}}
    return batch("drop", host, seq, [e], t0=ts - NS, t1=ts + NS // 10, boot=boot)


def ipstat(host: str, seq: int, t0: int, t1: int, peer: str, **fields) -> object:
    return batch("ipstat", host, seq, [{"peer": peer, "level": "default", **fields}], t0=t0, t1=t1)


def test_the_directory_learns_each_hosts_addresses_from_its_status_and_forgets_removed_ones():
    c, seq = Correlator(), Seq()
    c.feed(status("b", seq("b", "status"), T0, {"vb": [B1, "not-an-address"]}, {"vb": 4026532999}))
    assert c.directory.host_at(B1) == "b"
    assert c.directory.bad_input["status.addresses"] == 1  # counted and named, not a crash
    # a second address appears: learnt; the first goes away: forgotten
    c.feed(status("b", seq("b", "status"), T0 + NS, {"vb": [B1, B2]}, {"vb": 4026532999}))
    assert c.directory.host_at(B2) == "b"
    c.feed(status("b", seq("b", "status"), T0 + 2 * NS, {"vb": [B2]}, {"vb": 4026532999}))
    assert c.directory.host_at(B1) is None and c.directory.host_at(B2) == "b"
    # what a host's status claims outranks what another host's frames suggest
    c.feed(status("a", seq("a", "status"), T0, {"root": ["10.0.0.1"]}, {"root": 1}, boot="boot-a"))
    c.feed(frames("c", seq("c", "frame"), [(T0, 4, "a", "b", 7)]))  # c sends with a's address
    assert c.directory.host_at("10.0.0.1") == "a"


def test_a_kernel_wide_drop_in_a_namespace_a_status_owns_is_that_hosts():
    c, seq = Correlator(), Seq()
    # b's agent owns namespace "vb" (inode 4026532999); a's agent (same machine) reports drops
    # of every namespace, as the demo's first host does
    c.feed(status("b", seq("b", "status"), T0, {"vb": [B1]}, {"vb": 4026532999}, boot="boot-b"))
    c.feed(status("a", seq("a", "status"), T0, {"va": [A1]}, {"va": 4026532111}, boot="boot-b"))
    d = ebpf_drop("a", seq("a", "drop"), T0 + NS, 3, A1, B1)
    entity, how = c.attribute(d, d.events[0])
    assert entity == "b" and "status" in how


def _fleet(c: Correlator, seq: Seq) -> None:
    c.feed(status("a", seq("a", "status"), T0, {"va": [A1]}, {"va": 4026532111},
                  published={"ipstat": 0}, boot="boot-a"))
    c.feed(status("b", seq("b", "status"), T0, {"vb": [B1]}, {"vb": 4026532999},
                  published={"drop": 0}, sources={"drops": {"state": "running"}}, boot="boot-b"))


def clock(c: Correlator, t: int, **kw) -> list:
    """The stream's clock reaches ``t`` (a batch of a bystander), then the correlator ticks."""
    c.feed(batch("status", "clock", int(t // NS), [{"version": "t"}], t0=t - NS, t1=t))
    return c.tick(t, **kw)


def peer_incidents(made):
    return [i for i in made if i.type == "peer"]


def test_a_peer_episode_adds_up_over_its_opening_updates_and_closing():
    c, seq = Correlator(window=6, report_interval=2), Seq()
    _fleet(c, seq)
    made = []
    published = {"retrans_segs": 0, "timeouts": 0, "drops": 0}
    W = 3 * NS  # the ipstat interval
    # a drop before the episode opens (b's drop batch arrives before a's ipstat window)
    made += c.feed(ebpf_drop("b", seq("b", "drop"), T0 + NS // 2, 2, A1, B1))
    published["drops"] += 2

    def b_status(t: int) -> None:  # b's status counts every drop batch it made
        c.feed(status("b", seq("b", "status"), t, {"vb": [B1]}, {"vb": 4026532999},
                      published={"drop": seq.n[("b", "drop")]}, boot="boot-b"))

    for w in range(6):  # six windows with retransmits, and drops at b on the pair's flows
        t0, t1 = T0 + w * W, T0 + (w + 1) * W
        made += c.feed(ebpf_drop("b", seq("b", "drop"), t0 + NS * 3 // 2, w + 1, A1, B1))
        made += c.feed(ebpf_drop("b", seq("b", "drop"), t0 + NS * 3 // 2, 1, B1, A1,
                                 reason="TCP_INVALID_SEQUENCE"))  # b -> a, dropped at b
        made += c.feed(ebpf_drop("b", seq("b", "drop"), t0 + NS * 3 // 2, 5, "10.9.9.9", B1))
        published["drops"] += w + 2
        made += c.feed(ipstat("a", seq("a", "ipstat"), t0, t1, B1, retrans_segs=10 + w,
                              timeouts=w % 2, flags=["retransmits"]))
        published["retrans_segs"] += 10 + w
        published["timeouts"] += w % 2
        b_status(t1 + NS // 10)
        made += clock(c, t1 + NS // 5)
        b_status(t1 + NS * 22 // 10)  # now b's drops are known past the window
        made += clock(c, t1 + NS * 22 // 10)
    for s in range(20, 40):
        b_status(T0 + s * NS)
        made += clock(c, T0 + s * NS)
    incs = peer_incidents(made)
    phases = [i.details["phase"] for i in incs]
    assert phases[0] == "open" and phases[-1] == "close" and "update" in phases, phases
    assert len({i.details["episode"] for i in incs}) == 1
    last = incs[-1]
    assert last.hosts == ["a", "b"] and last.details["peer_host"] == "b"
    assert last.first_ts == T0 and last.last_ts == T0 + 18 * NS
    for f in ("retrans_segs", "timeouts"):
        assert last.details[f] == published[f]
        assert sum(i.details["new"][f] for i in incs) == published[f]
    assert last.details["peer_dropped"] == published["drops"]
    assert sum(i.details["new"]["peer_dropped"] for i in incs) == published["drops"]
    reasons = {d["reason"]: d["count"] for d in last.details["peer_drops"]}
    assert reasons == {"NETFILTER_DROP": 2 + 21, "TCP_INVALID_SEQUENCE": 6}
    # fields a never published are absent, not 0
    for f in set(SUMMED) - {"retrans_segs", "timeouts"}:
        assert f not in last.details and f not in last.details["new"]
    assert "b dropped 29 on their flows (NETFILTER_DROP at nft_do_chain+0x4a0 +1 more)" in last.summary
    assert last.summary.startswith("peer: a -> b (10.0.0.2): 75 retransmits, 3 timeouts over 18s")


def test_a_publication_waits_for_the_peers_drops_and_says_when_they_are_late():
    c, seq = Correlator(window=20, report_interval=1, grace=1), Seq()  # max wait 10 s
    _fleet(c, seq)
    c.feed(ipstat("a", seq("a", "ipstat"), T0, T0 + 2 * NS, B1, retrans_segs=30))
    # b's drops are known up to T0 + 1 s only: the opening waits
    c.feed(ebpf_drop("b", seq("b", "drop"), T0 + NS // 2, 1, A1, B1))
    assert peer_incidents(clock(c, T0 + 3 * NS)) == []
    # b's drop batch covering the span arrives: the opening goes out with its drops
    c.feed(ebpf_drop("b", seq("b", "drop"), T0 + NS * 19 // 10, 9, A1, B1))
    (opening,) = peer_incidents(clock(c, T0 + 3 * NS))
    assert opening.details["peer_dropped"] == 10 and opening.details["drops_late"] is False

    # a second window whose drops never come in time: published late after max_wait, saying so
    c.feed(ipstat("a", seq("a", "ipstat"), T0 + 2 * NS, T0 + 4 * NS, B1, retrans_segs=5))
    c.feed(status("b", seq("b", "status"), T0 + 5 * NS, {"vb": [B1]}, {"vb": 4026532999},
                  published={"drop": 99}, boot="boot-b"))  # b made batches we have not got
    made = []
    for s in range(5, 15):
        made += peer_incidents(clock(c, T0 + s * NS))
    (late,) = made
    assert late.details["drops_late"] is True and "late" in late.summary
    # the late drop arrives: it is added to the next (closing) publication, counted as late
    c.feed(ebpf_drop("b", seq("b", "drop"), T0 + 3 * NS, 4, A1, B1))
    (closing,) = peer_incidents(clock(c, T0 + 40 * NS, flush=True))
    assert closing.details["phase"] == "close" and closing.details["late_drops"] == 4
    assert closing.details["new"]["peer_dropped"] == 4 and closing.details["peer_dropped"] == 14


def test_a_peer_that_is_no_fleet_host_and_a_host_without_drop_source():
    c, seq = Correlator(window=2), Seq()
    c.feed(status("a", seq("a", "status"), T0, {"va": [A1]}, boot="boot-a"))
    c.feed(status("b", seq("b", "status"), T0, {"vb": [B1]}, published={"ipstat": 1},
                  sources={"ipstats": {"state": "running"}}, boot="boot-b"))
    c.feed(ipstat("a", seq("a", "ipstat"), T0, T0 + NS, "192.0.2.7", retrans_segs=3, segs_out=0))
    c.feed(ipstat("a", seq("a", "ipstat"), T0, T0 + NS, B1, retrans_segs=4))
    incs = peer_incidents(clock(c, T0 + 3 * NS))
    by_peer = {i.details["peer"]: i for i in incs}
    stranger = by_peer["192.0.2.7"]
    assert stranger.hosts == ["a"] and stranger.details["peer_host"] is None
    assert stranger.details["segs_out"] == 0  # published as 0: kept as 0
    assert "peer_drops" not in stranger.details
    assert "b publishes no drop events" in by_peer[B1].summary


def test_frames_toward_a_host_without_capture_are_not_captured_at_the_receiver():
    c, seq = Correlator(grace=1, report_interval=0), Seq()
    c.feed(status("b", seq("b", "status"), T0, {"vb": [B1]}, boot="boot-b"))
    c.feed(frames("a", seq("a", "frame"), [(T0 + i * 1000, 4, "a", "b", i) for i in range(5)]))
    made = clock(c, T0 + 5 * NS)
    (inc,) = [i for i in made if i.type == "path_loss"]
    assert inc.details["unknown_uncaptured"] == 5 and inc.details["lost"] == 0
    assert "not captured at the receiver" in inc.summary and "capture gap" not in inc.summary


def test_a_peer_whose_drop_source_dropped_nothing_is_not_late():
    c, seq = Correlator(window=2), Seq()
    c.feed(status("a", seq("a", "status"), T0, {"va": [A1]}, boot="boot-a"))
    c.feed(ipstat("a", seq("a", "ipstat"), T0, T0 + NS, B1, retrans_segs=4))
    # b runs a drop source that has published no drop batch: its status says so
    c.feed(status("b", seq("b", "status"), T0 + 6 * NS, {"vb": [B1]}, published={"status": 1},
                  sources={"drops.ebpf": {"state": "running"}}, boot="boot-b"))
    (inc,) = peer_incidents(clock(c, T0 + 6 * NS))
    assert inc.details["drops_late"] is False and inc.details["peer_dropped"] == 0
    assert "b dropped nothing on their flows" in inc.summary

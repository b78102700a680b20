"""Sans-IO Correlator: storms across hosts, path loss (delivered / lost / unknown in a gap),
reason attribution, bounded state with evictions counted, missing input reported."""

from __future__ import annotations

import struct

from netevents.codec import Batch, decode_batch, encode_batch
from netevents.consumers.correlate import STORM_LISTED, Correlator, fingerprint

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
ADDR = {"a": bytes([10, 0, 0, 1]), "b": bytes([10, 0, 0, 2]), "c": bytes([10, 0, 0, 3])}


def head_udp(src: bytes, dst: bytes, ip_id: int, payload: bytes, ttl: int = 64) -> bytes:
    udp = struct.pack("!HHHH", 4000, 5000, 8 + len(payload), 0xBEEF) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ip_id, 0, ttl, 17, ttl * 7, src, dst)
    return (b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + udp)[:96]


def advance(c: Correlator, t: int, receivers: tuple[str, ...] = ("a", "b", "c")) -> None:
    """Move the stream's clock to ``t``, and the receivers' captures with it (each publishes a
    frame batch ending at ``t`` with one frame that matches nothing)."""
    c.feed(batch("status", "clock", int(t // NS), [{"version": "t"}], t0=t - NS, t1=t))
    for h in receivers:
        if h in c.coverage.frame_progress or h in c.directory.addr_host.values():
            c.feed(frames(h, 10_000 + int(t // NS) + len(c.counts), [(t, 0, "c", h, 65000)]))


def tick(c: Correlator, t: int) -> list:
    """The stream's clock reaches ``t``, then the correlator ticks at wall time ``t``."""
    advance(c, t)
    return c.tick(t)


class Seq:
    def __init__(self) -> None:
        self.n: dict[tuple[str, str], int] = {}

    def __call__(self, host: str, kind: str, skip: int = 0) -> int:
        v = self.n.get((host, kind), 0) + 1 + skip
        self.n[(host, kind)] = v
        return v


def batch(kind: str, host: str, seq: int, events, *, t0: int = T0, t1: int | None = None,
          boot: str | None = None, missed: int = 0, **extra) -> Batch:
    fields = {"boot": boot} if boot else {}
    if kind == "frame":
        fields.update(iface="eth0", worker=0, first_frame=0)
    fields.update(extra)
    b = Batch(kind=kind, site="local", host=host, run="r-" + host, seq=seq, t0=t0,
              t1=t1 if t1 is not None else t0 + NS, events=events, fields=fields)
    out = decode_batch(encode_batch(b))  # the real wire format, both ways
    out.missed = missed
    return out


def frames(host: str, seq: int, rows: list[tuple[int, int, str, str, int]], *, ttl: int = 64,
           missed: int = 0, gaps_before: int | None = None) -> Batch:
    """rows: (ts, dir, src host, dst host, ip_id); ``gaps_before``: gap records the ring had
    made (None: an agent that does not say)."""
    cols: dict[str, list] = {k: [] for k in ("ts", "ts_src", "caplen", "len", "dir", "src", "dst",
                                             "l4", "sport", "dport", "ip_id", "tcp_seq", "head")}
    for ts, d, s, t, ip_id in rows:
        head = head_udp(ADDR[s], ADDR[t], ip_id, f"payload-{ip_id:06d}".encode() * 3, ttl)
        for k, v in (("ts", ts), ("ts_src", 1), ("caplen", len(head)), ("len", 200), ("dir", d),
                     ("src", ADDR[s]), ("dst", ADDR[t]), ("l4", 17), ("sport", 4000),
                     ("dport", 5000), ("ip_id", ip_id), ("tcp_seq", None), ("head", head)):
            cols[k].append(v)
    ts = [r[0] for r in rows] or [T0]
    extra = {} if gaps_before is None else {"gaps_before": {"records": gaps_before, "lost": 0}}
    return batch("frame", host, seq, cols, t0=min(ts), t1=max(ts), missed=missed, **extra)


def drop(host: str, seq: int, reason: str, location: str, count: int, ts: int, *,
         source: str = "tracepoint", boot: str | None = None, **extra) -> Batch:
    e = {"count": count, "source": source, "reason": reason, "location": location,
         "first_ts": ts, "last_ts": ts, **extra}
    return batch("drop", host, seq, [e], t0=ts, t1=ts + NS, boot=boot)


def test_fingerprint_ignores_ttl_and_checksums_but_not_payload():
    h1 = head_udp(ADDR["a"], ADDR["b"], 7, b"x" * 40, ttl=64)
    h2 = head_udp(ADDR["a"], ADDR["b"], 7, b"x" * 40, ttl=63)
    h3 = head_udp(ADDR["a"], ADDR["b"], 7, b"y" * 40, ttl=64)
    assert h1 != h2
    args = (ADDR["a"], ADDR["b"], 17, 4000, 5000, 7, None)
    assert fingerprint(*args, h1) == fingerprint(*args, h2)
    assert fingerprint(*args, h1) != fingerprint(*args, h3)
    assert fingerprint(None, ADDR["b"], 17, 1, 2, 3, None, h1) is None


def test_drop_storm_across_hosts_is_one_incident_with_counts():
    c, seq = Correlator(window=10, storm_hosts=2, report_interval=0), Seq()
    out = c.feed(drop("a", seq("a", "drop"), "TCP_CSUM", "tcp_v4_rcv+0x1", 5, T0, source="counter"))
    assert out == []
    out = c.feed(drop("b", seq("b", "drop"), "TCP_CSUM", "tcp_v4_rcv+0x1", 7, T0 + NS, source="counter"))
    assert len(out) == 1
    inc = out[0]
    assert inc.type == "drop_storm" and inc.hosts == ["a", "b"]
    assert inc.details["per_host"]["a"]["count"] == 5 and inc.details["per_host"]["b"]["count"] == 7
    assert inc.first_ts == T0 and inc.last_ts == T0 + NS
    # the same hosts again: no new incident; a third host joins: one update of the same episode
    assert c.feed(drop("a", seq("a", "drop"), "TCP_CSUM", "tcp_v4_rcv+0x1", 1, T0 + 2 * NS, source="counter")) == []
    out = c.feed(drop("c", seq("c", "drop"), "TCP_CSUM", "tcp_v4_rcv+0x1", 2, T0 + 3 * NS, source="counter"))
    assert [i.hosts for i in out] == [["a", "b", "c"]]
    assert out[0].details["episode"] == inc.details["episode"] and out[0].details["update"]
    # outside the window a single host does not make a storm
    assert c.feed(drop("a", seq("a", "drop"), "X", "y", 1, T0, source="counter")) == []
    assert c.feed(drop("b", seq("b", "drop"), "X", "y", 1, T0 + 30 * NS, source="counter")) == []


def test_kernel_wide_drops_are_machine_wide_unless_the_event_names_the_namespace():
    c, seq = Correlator(storm_hosts=2), Seq()
    # two namespace hosts on one machine (same boot id), a third machine
    for h in ("a", "b"):
        c.feed(batch("status", h, seq(h, "status"), [{"version": "1"}], boot="boot-1111aaaa"))
    c.feed(batch("status", "c", seq("c", "status"), [{"version": "1"}], boot="boot-2222bbbb"))
    # both agents on machine 1 see the same kernel-wide drop: one machine-wide entity, not 2 hosts
    out = c.feed(drop("a", seq("a", "drop"), "NETFILTER_DROP", "nf_hook_slow+0x9", 4, T0, boot="boot-1111aaaa"))
    out += c.feed(drop("b", seq("b", "drop"), "NETFILTER_DROP", "nf_hook_slow+0x9", 4, T0, boot="boot-1111aaaa"))
    assert out == []
    assert c.attribute(c_batch := drop("a", 99, "R", "L", 1, T0, boot="boot-1111aaaa"),
                       c_batch.events[0])[0] == "machine:boot-111"
    # an eBPF event that names the namespace goes to that host
    ent, how = c.attribute(drop("a", 99, "R", "L", 1, T0, boot="boot-1111aaaa", source="ebpf",
                                netns_name="b", netns=4026532000),
                           {"source": "ebpf", "netns_name": "b", "netns": 4026532000})
    assert ent == "b" and "netns_name" in how
    # a counter event teaches the inode of b's namespace; an eBPF event with only the inode
    c.feed(drop("b", seq("b", "drop"), "UDP_RCVBUF_ERRORS", "Udp:RcvbufErrors", 1, T0,
                source="counter", netns=4026532999, boot="boot-1111aaaa"))
    assert c.attribute(drop("a", 99, "R", "L", 1, T0), {"source": "ebpf", "netns": 4026532999})[0] == "b"
    # machine 2 (single host) + machine 1 (machine-wide) = a storm of 2 entities, said so
    out = c.feed(drop("c", seq("c", "drop"), "NETFILTER_DROP", "nf_hook_slow+0x9", 3, T0 + NS, boot="boot-2222bbbb"))
    assert len(out) == 1
    assert out[0].hosts == ["c", "machine:boot-111"]
    assert out[0].details["per_host"]["machine:boot-111"]["count"] == 4  # not 8: same drops
    assert "machine-wide" in out[0].summary
    assert out[0].details["machine_wide"] == ["machine:boot-111"]


def test_namespaces_outside_the_scope_are_set_aside_and_counted():
    # what the demo needs: its kernel-wide source sees every namespace of the machine, but only
    # its hosts and its hub belong in its incidents
    for scope, storm_entities in ((None, ["a", "netns:hub", "netns:stranger"]), ({"hub"}, ["a", "netns:hub"])):
        c, seq = Correlator(storm_hosts=2, report_interval=0, namespaces=scope), Seq()
        c.feed(batch("status", "a", seq("a", "status"), [{"version": "1"}], boot="boot-1"))
        out = []
        for ns, n in (("stranger", 9), ("hub", 4), (None, 2)):
            extra = {"netns_name": ns} if ns else {}
            out += c.feed(drop("a", seq("a", "drop"), "NETFILTER_DROP", "nf_hook_slow+0x9", n,
                               T0, source="ebpf", boot="boot-1", **extra))
        assert out and out[-1].hosts == storm_entities
        entities = {d["entity"] for d in c.drop_table()}
        assert ("netns:stranger" in entities) == (scope is None)
        assert c.directory.foreign == ({} if scope is None else {"stranger": 9})


def _learn(c: Correlator, seq: Seq) -> None:
    """a and b announce their addresses (an outgoing frame each to c)."""
    c.feed(frames("a", seq("a", "frame"), [(T0, 4, "a", "c", 1)]))
    c.feed(frames("b", seq("b", "frame"), [(T0, 4, "b", "c", 2)]))


def test_path_loss_delivered_lost_and_unknown_in_a_capture_gap():
    c, seq = Correlator(grace=2, report_interval=0, gap_slack=0.001), Seq()
    _learn(c, seq)
    base = T0 + NS
    ids = list(range(100, 130))
    ms = 10_000_000  # 10 ms between frames
    c.feed(frames("a", seq("a", "frame"), [(base + i * ms, 4, "a", "b", i) for i in ids]))
    # b sees all but 100..104 (lost) and 110..114 (inside a capture gap on b); TTL is lower there
    arrived = [i for i in ids if not 100 <= i <= 104 and not 110 <= i <= 114]
    gap_lo, gap_hi = base + 109 * ms + 50_000, base + 115 * ms + 50_000
    c.feed(batch("gap", "b", seq("b", "gap"), [{"iface": "eth0", "lost": 5, "cause": "ring_full",
                                                "after_ts": gap_lo, "before_ts": gap_hi}]))
    c.feed(frames("b", seq("b", "frame"), [(base + i * ms + 50_000, 0, "a", "b", i) for i in arrived], ttl=63))
    assert tick(c, base + 2 * NS) == []  # still within the grace period: nothing judged
    incs = tick(c, base + 5 * NS)
    paths = [i for i in incs if i.type == "path_loss"]
    assert len(paths) == 1
    d = paths[0].details
    assert paths[0].hosts == ["a", "b"]
    assert (d["delivered"], d["lost"], d["unknown"]) == (20, 5, 5)
    assert d["delay_ns"]["p50"] == 50_000 and d["delay_ns"]["p99"] == 50_000
    assert d["ts_src"] == {"software->software": 20}
    assert paths[0].missing_input == {"a/frame": 0, "a/gap": 0, "b/frame": 0, "b/gap": 0}
    assert c.path_table()[0]["lost"] == 5


def test_arrival_before_departure_still_matches():
    c, seq = Correlator(grace=1, report_interval=0), Seq()
    _learn(c, seq)
    c.feed(frames("b", seq("b", "frame"), [(T0 + 2 * NS, 0, "a", "b", 77)]))
    c.feed(frames("a", seq("a", "frame"), [(T0 + 2 * NS - 10_000, 4, "a", "b", 77)]))
    assert c.pairs[("a", "b")].delivered == 1
    assert tick(c, T0 + 10 * NS) == []


def test_loss_coinciding_with_a_drop_on_the_receiver_names_the_reason():
    c, seq = Correlator(grace=1, report_interval=0), Seq()
    _learn(c, seq)
    base = T0 + 5 * NS
    c.feed(frames("a", seq("a", "frame"), [(base + i, 4, "a", "b", i) for i in range(3)]))
    # inside b: a backlog drop (before b's capture tap) explains it; a socket drop cannot
    c.feed(drop("b", seq("b", "drop"), "CPU_BACKLOG", "enqueue_to_backlog+0x1", 3, base,
                source="ebpf", netns_name="b"))
    c.feed(drop("b", seq("b", "drop"), "SOCKET_RCVBUFF", "__udp_queue_rcv_skb+0x1", 900, base,
                source="ebpf", netns_name="b"))
    c.feed(drop("a", seq("a", "drop"), "OTHER_ON_A", "x", 3, base, source="counter"))
    inc = [i for i in tick(c, base + 2 * NS) if i.type == "path_loss"][0]
    assert inc.details["lost"] == 3
    assert inc.details["reasons"] == {"CPU_BACKLOG": 3}
    assert "CPU_BACKLOG" in inc.summary and "drop" in inc.inputs


def test_a_sampled_drop_of_the_very_packet_names_its_loss_over_the_vote():
    c, seq = Correlator(grace=1, report_interval=0), Seq()
    _learn(c, seq)
    base = T0 + 5 * NS
    c.feed(frames("a", seq("a", "frame"), [(base + i, 4, "a", "b", i) for i in range(4)]))
    # the bridge namespace on the path: a big tail-drop aggregate, and the eBPF source's
    # per-packet record of frame 1 dropped by a firewall (payload from the network header)
    c.feed(drop("b", seq("b", "drop"), "QDISC_DROP", "__dev_queue_xmit+0x1", 50, base,
                source="ebpf", netns_name="hub"))
    pkt = head_udp(ADDR["a"], ADDR["b"], 1, b"payload-000001" * 3, ttl=63)[14:]
    c.feed(drop("b", seq("b", "drop"), "NETFILTER_DROP", "nft_do_chain+0x1", 1, base + 1,
                source="ebpf", netns_name="hub", payload=pkt, orig_len=len(pkt),
                flow={"src": "10.0.0.1", "dst": "10.0.0.2", "l4": 17, "sport": 4000,
                      "dport": 5000, "ip_id": 1}))
    inc = [i for i in tick(c, base + 2 * NS) if i.type == "path_loss"][0]
    assert inc.details["lost"] == 4
    assert inc.details["reasons"] == {"NETFILTER_DROP (path (hub))": 1, "QDISC_DROP (path (hub))": 3}
    assert inc.details["reasons_by_packet"] == 1


def test_an_offload_super_packet_missing_whole_at_the_receiver_is_unknown_not_lost():
    # A TSO/GSO TCP super-packet seen at the sender's tap can be cut into segments on the way
    # (tbf_segment, the NIC): the receiver sees other frames, so its absence proves nothing.
    c, seq = Correlator(grace=1, report_interval=0), Seq()
    _learn(c, seq)
    base = T0 + 5 * NS
    big = frames("a", seq("a", "frame"), [(base, 4, "a", "b", 7), (base + 1, 4, "a", "b", 8)])
    big.events["l4"] = [6, 6]
    big.events["tcp_seq"] = [1000, 2000]
    big.events["len"] = [15_000, 1514]  # the first is a super-packet, the second a real frame
    c.feed(big)
    inc = [i for i in tick(c, base + 2 * NS) if i.type == "path_loss"][0]
    assert (inc.details["lost"], inc.details["unknown"], inc.details["unknown_offload"]) == (1, 1, 1)
    assert "offload" in inc.summary


def test_machine_wide_reasons_are_only_those_that_can_sit_on_the_path():
    c, seq = Correlator(grace=1, report_interval=0), Seq()
    for h in ("a", "b"):
        c.feed(batch("status", h, seq(h, "status"), [{"version": "1"}], boot="boot-1"))
    c.feed(frames("a", seq("a", "frame"), [(T0, 4, "a", "c", 1)]))
    c.feed(frames("b", seq("b", "frame"), [(T0, 4, "b", "c", 2)]))
    base = T0 + 5 * NS
    c.feed(frames("a", seq("a", "frame"), [(base + i, 4, "a", "b", 10 + i) for i in range(4)]))
    # the tracepoint (machine-wide): many socket drops somewhere, a few qdisc drops
    c.feed(drop("a", seq("a", "drop"), "SOCKET_RCVBUFF", "__udp_queue_rcv_skb+0x1", 5000, base, boot="boot-1"))
    c.feed(drop("a", seq("a", "drop"), "QDISC_DROP", "__dev_queue_xmit+0x1", 4, base, boot="boot-1"))
    inc = [i for i in tick(c, base + 2 * NS) if i.type == "path_loss"][0]
    assert inc.details["reasons"] == {"QDISC_DROP (machine-wide)": 4}


def test_missing_input_is_reported_from_sequence_holes():
    c, seq = Correlator(grace=1, report_interval=0), Seq()
    _learn(c, seq)
    c.feed(frames("a", seq("a", "frame", skip=3), [(T0 + NS, 4, "a", "b", 9)], missed=3))
    inc = [i for i in tick(c, T0 + 5 * NS) if i.type == "path_loss"][0]
    assert inc.missing_input["a/frame"] == 3 and inc.missing_input["b/frame"] == 0


def test_missed_receiver_frame_batches_make_unknown_not_lost():
    c, seq = Correlator(grace=1, report_interval=0), Seq()
    _learn(c, seq)
    c.feed(frames("b", seq("b", "frame"), [(T0 + NS, 0, "c", "b", 1)]))
    c.feed(frames("a", seq("a", "frame"), [(T0 + 2 * NS, 4, "a", "b", 50)]))
    # b's next frame batch comes after 2 missed ones: the time between is a hole
    c.feed(frames("b", seq("b", "frame", skip=2), [(T0 + 3 * NS, 0, "c", "b", 2)], missed=2))
    inc = [i for i in tick(c, T0 + 10 * NS) if i.type == "path_loss"][0]
    assert (inc.details["lost"], inc.details["unknown"]) == (0, 1)
    assert inc.missing_input["b/frame"] == 2


def test_bounded_state_counts_evictions():
    c, seq = Correlator(grace=1, max_frames=10, max_keys=5), Seq()
    _learn(c, seq)
    c.feed(frames("a", seq("a", "frame"), [(T0 + NS + i, 4, "a", "b", 1000 + i) for i in range(25)]))
    assert len(c.paths.departures) == 10
    assert c.evicted["frames"] == 17  # 27 departures (2 from _learn) into 10 places
    for i in range(8):
        c.feed(drop("a", seq("a", "drop"), f"R{i}", "loc", 1, T0, source="counter"))
    assert len(c.storms) == 5 and c.evicted["storms"] == 3
    inc = [i for i in tick(c, T0 + 10 * NS) if i.type == "path_loss"][0]
    assert inc.details["lost"] == 10 and inc.details["frames_evicted"] == 17


def test_peer_view_joins_retransmits_drops_and_the_peers_view():
    c, seq = Correlator(window=10), Seq()
    _learn(c, seq)
    c.feed(batch("ipstat", "b", seq("b", "ipstat"), [{"peer": "10.0.0.1", "segs_in": 40, "retrans_segs": 0}]))
    c.feed(drop("b", seq("b", "drop"), "TCP_ZEROWINDOW", "tcp_data_queue+0x1", 6, T0 + NS, source="counter"))
    assert c.feed(batch("ipstat", "a", seq("a", "ipstat"),
                        [{"peer": "10.0.0.2", "retrans_segs": 9, "timeouts": 1, "flags": ["retrans"]}],
                        t0=T0, t1=T0 + 2 * NS)) == []  # published by tick, once b's drops are in
    out = [i for i in c.tick(T0 + 3 * NS) if i.type == "peer"]
    assert len(out) == 1
    inc = out[0]
    assert inc.type == "peer" and inc.hosts == ["a", "b"] and inc.details["phase"] == "open"
    assert inc.details["retrans_segs"] == 9 and "segs_out" not in inc.details
    # a counter drop has no flow: it is b's, in the span, but not on the pair's flows
    assert inc.details["peer_host_drops"][0]["reason"] == "TCP_ZEROWINDOW"
    assert inc.details["peer_dropped"] == 0
    assert inc.details["peer_view_of_sender"]["segs_in"] == 40
    assert set(inc.inputs) == {"ipstat", "drop"}
    # an update waits for the report interval
    c.feed(batch("ipstat", "a", seq("a", "ipstat"), [{"peer": "10.0.0.2", "retrans_segs": 3}],
                 t0=T0 + 2 * NS, t1=T0 + 3 * NS))
    assert [i for i in c.tick(T0 + 3 * NS) if i.type == "peer"] == []


def test_a_consumer_running_behind_does_not_judge_frames_still_in_its_backlog():
    c, seq = Correlator(grace=1, report_interval=0), Seq()
    _learn(c, seq)
    c.feed(frames("a", seq("a", "frame"), [(T0 + NS, 4, "a", "b", 42)]))
    # wall clock a minute later, but the stream has only reached T0 + 1 s: nothing judged
    assert c.tick(T0 + 60 * NS) == [] and len(c.paths.departures) == 1
    c.feed(frames("b", seq("b", "frame"), [(T0 + NS + 5000, 0, "a", "b", 42)]))
    assert c.pairs[("a", "b")].delivered == 1 and c.pairs[("a", "b")].lost == 0
    # at shutdown, flush judges against the wall clock
    c.feed(frames("a", seq("a", "frame"), [(T0 + 2 * NS, 4, "a", "b", 43)]))
    c.feed(frames("b", seq("b", "frame"), [(T0 + 3 * NS, 0, "c", "b", 7)]))  # b got past it
    inc = c.tick(T0 + 60 * NS, flush=True)
    assert inc and inc[0].details["lost"] == 1


def test_frames_wait_for_a_receiver_whose_capture_is_behind():
    c, seq = Correlator(grace=1, report_interval=0), Seq()
    _learn(c, seq)
    c.feed(frames("b", seq("b", "frame"), [(T0 + NS, 0, "c", "b", 1)]))
    c.feed(frames("a", seq("a", "frame"), [(T0 + 2 * NS, 4, "a", "b", 44)]))
    advance(c, T0 + 5 * NS, receivers=("a",))  # the stream moves on; b's capture does not
    assert c.tick(T0 + 5 * NS) == [] and len(c.paths.departures) == 1
    # b comes back with the gap record of its stall: the frame is unknown, not lost
    c.feed(batch("gap", "b", seq("b", "gap"), [{"iface": "eth0", "lost": 9, "cause": "ring_full",
                                                "after_ts": T0 + NS, "before_ts": T0 + 6 * NS}]))
    c.feed(frames("b", seq("b", "frame"), [(T0 + 6 * NS, 0, "c", "b", 2)]))
    advance(c, T0 + 9 * NS, receivers=())
    inc = c.tick(T0 + 9 * NS)
    assert inc and (inc[0].details["lost"], inc[0].details["unknown"]) == (0, 1)
    # a receiver that stays silent past max_wait: unknown, never lost
    c.feed(frames("a", seq("a", "frame"), [(T0 + 10 * NS, 4, "a", "b", 45)]))
    advance(c, T0 + 30 * NS, receivers=("a",))
    inc = c.tick(T0 + 30 * NS)
    assert inc and (inc[0].details["lost"], inc[0].details["unknown"]) == (0, 2)


def _gap_scene(c: Correlator, seq: Seq) -> tuple[int, list[int], int, int]:
    """a sends 30 frames to b; b's ring overflowed on 110..114. b's frame batches say one gap
    record came before them (``gaps_before``) and arrive; the gap record itself has not."""
    _learn(c, seq)
    base = T0 + NS
    ms = 10_000_000
    ids = list(range(100, 130))
    c.feed(frames("a", seq("a", "frame"), [(base + i * ms, 4, "a", "b", i) for i in ids]))
    arrived = [i for i in ids if not 110 <= i <= 114]
    c.feed(frames("b", seq("b", "frame"), [(base + i * ms + 50_000, 0, "a", "b", i) for i in arrived],
                  gaps_before=1, ttl=63))
    # b's capture goes on well past the grace period (frames from c), the record still away
    c.feed(frames("b", seq("b", "frame"), [(base + 4 * NS, 0, "c", "b", 9)], gaps_before=1))
    return base, ids, base + 109 * ms + 50_000, base + 115 * ms + 50_000


def test_frames_that_overtake_their_gap_record_wait_for_it():
    # The agent batches gaps apart from frames (and the bus carries them in another stream):
    # the frames after a gap can come first. Judging then would call the gap's frames lost.
    c, seq = Correlator(grace=1, report_interval=0, gap_slack=0.001), Seq()
    base, _ids, gap_lo, gap_hi = _gap_scene(c, seq)
    assert c.coverage.frame_progress["b"] < base  # b's progress held back: a gap record is owed
    c.feed(batch("status", "clock", 1, [{"version": "t"}], t0=base, t1=base + 4 * NS))
    assert c.tick(base + 4 * NS) == [] and len(c.paths.departures) == 5  # the five wait
    assert c.counts["frame_batches_held_for_gaps"] == 2
    c.feed(batch("gap", "b", seq("b", "gap"), [{"iface": "eth0", "worker": 0, "lost": 5,
                                                "cause": "ring_full", "after_ts": gap_lo,
                                                "before_ts": gap_hi}]))
    assert c.coverage.frame_progress["b"] == base + 4 * NS
    incs = c.tick(base + 4 * NS)
    d = incs[0].details
    assert (d["delivered"], d["lost"], d["unknown"]) == (25, 0, 5)


def test_a_gap_record_that_never_comes_makes_its_span_unknown_and_is_counted():
    c, seq = Correlator(grace=1, report_interval=0, gap_slack=0.001), Seq()
    base, _ids, _lo, _hi = _gap_scene(c, seq)
    # the gap batch was lost on the way: after max_wait (10 s) the held span is a hole
    c.feed(batch("status", "clock", 1, [{"version": "t"}], t0=base, t1=base + 20 * NS))
    incs = c.tick(base + 20 * NS)
    d = incs[0].details
    assert (d["delivered"], d["lost"], d["unknown"]) == (25, 0, 5)
    assert c.counts["gap_records_never_seen"] == 1
    assert c.coverage.frame_progress["b"] == base + 4 * NS
    # and the ring goes on: a later batch (no new gap) moves b's progress at once
    c.feed(frames("b", seq("b", "frame"), [(base + 21 * NS, 0, "c", "b", 10)], gaps_before=1))
    assert c.coverage.frame_progress["b"] == base + 21 * NS


def test_one_ring_waiting_for_a_gap_record_holds_back_its_hosts_other_rings():
    c, seq = Correlator(grace=1), Seq()
    _learn(c, seq)
    c.feed(frames("b", seq("b", "frame"), [(T0 + 2 * NS, 0, "c", "b", 1)], gaps_before=0))
    for t, owed in ((T0 + NS, 0), (T0 + 5 * NS, 1)):  # worker 1 (its own run, like a real one)
        c.feed(batch("frame", "b", seq("b", "frame"), frames("b", 1, [(t, 0, "c", "b", 2)]).events,
                     t0=t, t1=t, worker=1, gaps_before={"records": owed, "lost": 3 * owed}))
    c.feed(frames("b", seq("b", "frame"), [(T0 + 9 * NS, 0, "c", "b", 3)], gaps_before=0))
    assert c.coverage.frame_progress["b"] == T0 + NS  # worker 1 owes a record; its ring had reached T0+1s
    c.feed(batch("gap", "b", seq("b", "gap"), [{"iface": "eth0", "worker": 1, "lost": 3,
                                                "cause": "ring_full", "after_ts": T0 + 3 * NS,
                                                "before_ts": T0 + 4 * NS}]))
    assert c.coverage.frame_progress["b"] == T0 + 9 * NS


def test_storm_updates_are_rate_limited_and_listed_hosts_capped():
    c, seq = Correlator(window=30, storm_hosts=2, report_interval=5), Seq()
    made = []
    for i in range(300):
        h = f"h{i:03d}"
        made += c.feed(drop(h, seq(h, "drop"), "TCP_CSUM", "x", 1 + i % 3, T0 + i * NS // 100, source="counter"))
    assert len(made) == 1 and made[0].details["hosts_total"] == 2  # the first, at threshold
    later = tick(c, T0 + 6 * NS)  # one update for all hosts that joined since
    storms = [i for i in later if i.type == "drop_storm"]
    assert len(storms) == 1 and storms[0].details["hosts_total"] == 300
    assert len(storms[0].details["per_host"]) == STORM_LISTED
    assert storms[0].details["episode"] == made[0].details["episode"]


def test_hosts_back_after_a_quiet_window_cost_one_look_at_the_storm_not_one_per_host():
    """A consumer's gap (or a lull) longer than the window: every host of a reported storm comes
    back at once. No incident per host, and the storm's hosts are scanned once, at the tick."""
    c, seq = Correlator(window=10, storm_hosts=2, report_interval=5), Seq()
    hosts = [f"h{i:03d}" for i in range(200)]
    made = []
    for i, h in enumerate(hosts):
        made += c.feed(drop(h, seq(h, "drop"), "TCP_CSUM", "x", 1, T0 + i * NS // 100, source="counter"))
    made += tick(c, T0 + 6 * NS)
    assert [i.details["hosts_total"] for i in made] == [2, 200]
    scans = []
    check = c.storms._check
    c.storms._check = lambda *a: scans.append(a) or check(*a)
    back = T0 + 40 * NS  # every entry is older than the window
    for h in hosts:
        assert c.feed(drop(h, seq(h, "drop"), "TCP_CSUM", "x", 1, back, source="counter")) == []
    assert scans == []
    assert [i for i in tick(c, back + NS) if i.type == "drop_storm"] == []  # the same episode
    assert len(scans) == 1
    # a host never named before still makes an update of the episode at once
    out = c.feed(drop("new", seq("new", "drop"), "TCP_CSUM", "x", 1, back + 7 * NS, source="counter"))
    assert [i.details["hosts_total"] for i in out] == [201]
    assert out[0].details["episode"] == made[0].details["episode"]


def test_partitioned_members_share_the_work_and_together_judge_what_one_would():
    # 12 hosts in a ring, each sending 10 frames a second to the next, of which every 7th
    # never arrives; drops of 3 kinds on every host; retransmits toward the next host.
    hosts = [f"h{i:02d}" for i in range(12)]
    addr = {h: bytes([10, 0, 1, i + 1]) for i, h in enumerate(hosts)}
    seq = Seq()
    batches = []

    def frame_batch(host, rows):
        cols: dict[str, list] = {k: [] for k in ("ts", "ts_src", "dir", "src", "dst", "l4", "sport",
                                                 "dport", "ip_id", "tcp_seq", "head", "caplen", "len")}
        for ts, d, s, t, ip_id in rows:
            head = head_udp(addr[s], addr[t], ip_id, b"x" * 20)
            for k, v in (("ts", ts), ("ts_src", 1), ("dir", d), ("src", addr[s]), ("dst", addr[t]),
                         ("l4", 17), ("sport", 4000), ("dport", 5000), ("ip_id", ip_id),
                         ("tcp_seq", None), ("head", head), ("caplen", len(head)), ("len", 200)):
                cols[k].append(v)
        return batch("frame", host, seq(host, "frame"), cols, t0=rows[0][0], t1=rows[-1][0])

    for sec in range(6):
        t = T0 + sec * NS
        for i, h in enumerate(hosts):
            nxt = hosts[(i + 1) % len(hosts)]
            ids = [sec * 10 + k for k in range(10)]
            batches.append(frame_batch(h, [(t + k * 1000, 4, h, nxt, ip) for k, ip in enumerate(ids)]))
            batches.append(frame_batch(nxt, [(t + k * 1000 + 500, 0, h, nxt, ip)
                                             for k, ip in enumerate(ids) if ip % 7]))
            for reason, loc in (("TCP_CSUM", "tcp_v4_rcv+0x1"), ("QDISC_DROP", "dev+0x2"),
                                ("NO_SOCKET", "udp+0x3")):
                batches.append(drop(h, seq(h, "drop"), reason, loc, 5, t, source="counter"))
            batches.append(batch("ipstat", h, seq(h, "ipstat"),
                                 [{"peer": str(ipaddress_of(addr[nxt])), "retrans_segs": 2}],
                                 t0=t, t1=t + NS))

    def run(partition):
        c = Correlator(grace=1, report_interval=0, window=30, partition=partition)
        made = []
        for b in batches:
            made += c.feed(b)
        made += c.tick(T0 + 10 * NS)
        made += c.tick(T0 + 60 * NS, flush=True)
        return c, made

    one, one_made = run((0, 1))
    members = [run((k, 3)) for k in range(3)]
    pairs = [{k: (p.delivered, p.lost) for k, p in c.pairs.items()} for c, _ in members]
    assert all(pairs), "each member judged some paths"
    union = {}
    for p in pairs:
        assert not set(p) & set(union), "a path judged by two members"
        union.update(p)
    assert union == {k: (p.delivered, p.lost) for k, p in one.pairs.items()}
    assert sum(v[1] for v in union.values()) == sum(1 for sec in range(6) for k in range(10)
                                                    if (sec * 10 + k) % 7 == 0) * len(hosts)

    def keys(made, typ, key):
        return sorted(key(i) for i in made if i.type == typ)

    storm = lambda i: (i.details["reason"], i.details["location"], i.details["update"])  # noqa: E731
    peer = lambda i: (i.details["from"], i.details["peer"], i.first_ts)  # noqa: E731
    for typ, key in (("drop_storm", storm), ("peer", peer)):
        parts = [keys(m, typ, key) for _, m in members]
        assert sorted(sum(parts, [])) == keys(one_made, typ, key), typ
        assert sum(1 for p in parts if p) >= 2, f"{typ}: the work is shared"


def ipaddress_of(raw: bytes) -> str:
    import ipaddress

    return str(ipaddress.ip_address(raw))

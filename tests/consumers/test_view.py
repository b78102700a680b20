"""FleetView: the tallies behind `top` and `up`, and what it says about agents' own losses."""

from netevents.codec import Batch
from netevents.consumers.view import FleetView


def status(host, run, seq, final=False, lost=None):
    return Batch(kind="status", site="s", host=host, run=run, seq=seq, t0=1, t1=2,
                 events=[{"version": "x", "final": final, "lost": lost or {}}])


def test_losses_per_host_add_up_over_runs_and_killed_runs_are_named():
    v = FleetView()
    v.feed(status("a", "r1", 1, lost={"queue.drop": 2}))
    v.feed(status("a", "w1", 1, lost={"capture.ring": 5}))       # a capture worker's run
    v.feed(status("a", "r2", 1, lost={"queue.drop": 1}))         # r1 and w1 never said goodbye
    v.feed(status("b", "r9", 1, final=True))
    v.feed(status("b", "r10", 1))                                 # b's old run ended cleanly
    assert v.agent_losses()["a"] == {"queue.drop": 3, "capture.ring": 5}
    assert v.unclean_ends == {"a": ["r1", "w1"]}
    assert "2 run(s) ended without a final status" in v.summary()
    assert v.final_seen("b") and not v.final_seen("a")


def test_missed_batches_are_unexplained_unless_the_agent_reported_the_loss():
    v = FleetView()
    v.feed(status("a", "r1", 1))
    d = Batch(kind="drop", site="s", host="a", run="r1", seq=5, t0=1, t1=2,
              events=[{"count": 3, "source": "counter", "reason": "QDISC_DROP", "location": "q"}])
    d.missed = 4
    v.feed(d)
    assert v.unexplained() == 4
    v.feed(status("a", "r1", 2, lost={"publish.drop": 10}))
    assert v.unexplained() == 0
    assert v.drop_sites[("a", "QDISC_DROP", "q")] == 3
    assert "QDISC_DROP" in v.render("drops")


def test_peers_view_shows_retransmits_and_resets_both_ways_in_the_order_asked():
    v = FleetView()
    v.feed(Batch(kind="ipstat", site="s", host="a", run="r", seq=1, t0=1, t1=2, events=[
        {"peer": "10.0.0.2", "retrans_segs": 3},
        {"peer": "10.0.0.3", "resets": 7, "resets_in": 2},
        {"peer": "10.0.0.4", "resets_in": 1}]))

    def rows():
        lines = v.render("peers").splitlines()
        return [ln.split() for ln in lines if " a " in ln and "10.0.0." in ln]

    assert [r[:6] for r in rows()] == [["3", "0", "0", "0", "a", "10.0.0.2"],
                                       ["0", "0", "7", "2", "a", "10.0.0.3"],
                                       ["0", "0", "0", "1", "a", "10.0.0.4"]]
    v.cycle_sort()
    v.cycle_sort()
    v.cycle_sort()
    assert v.peer_sort == "resets"
    assert [r[5] for r in rows()] == ["10.0.0.3", "10.0.0.4", "10.0.0.2"]  # 9 resets first


def test_peers_view_puts_the_peer_hosts_drops_on_their_flows_next_to_the_retransmits():
    v = FleetView()
    for host, addrs in (("va", ["10.1.0.1"]), ("vb", ["10.1.0.2"])):
        v.feed(Batch(kind="status", site="s", host=host, run="r", seq=1, t0=1, t1=2,
                     events=[{"version": "x", "addresses": {host: addrs}}]))
    v.feed(Batch(kind="ipstat", site="s", host="va", run="r", seq=1, t0=10**9, t1=11 * 10**9,
                 events=[{"peer": "10.1.0.2", "retrans_segs": 40, "timeouts": 2}]))
    flow = {"src": "10.1.0.1", "dst": "10.1.0.2", "l4": 6}
    v.feed(Batch(kind="drop", site="s", host="vb", run="r", seq=1, t0=1, t1=2, events=[
        {"count": 25, "source": "ebpf", "reason": "NETFILTER_DROP", "location": "nft_do_chain+0x4a0",
         "flow": flow, "first_ts": 2 * 10**9, "last_ts": 12 * 10**9},
        {"count": 9, "source": "ebpf", "reason": "NETFILTER_DROP", "location": "nft_do_chain+0x4a0",
         "flow": {"src": "10.9.9.9", "dst": "10.1.0.2"}},    # another flow: not theirs
        {"count": 4, "source": "counter", "reason": "QDISC_DROP", "location": "q"}]))  # no flow
    (row,) = v.peer_rows()
    assert (row["host"], row["peer_host"], row["retrans"], row["timeouts"]) == ("va", "vb", 40, 2)
    assert row["peer_drops"] == 25 and row["window_s"] == 11.0  # a's windows and b's drops
    assert row["peer_drop_sites"] == [("NETFILTER_DROP", "nft_do_chain+0x4a0", 25)]
    line = next(ln for ln in v.render("peers").splitlines() if ln.split()[4:5] == ["va"])
    assert line.split()[:9] == ["40", "2", "0", "0", "va", "10.1.0.2", "vb", "25", "11s"]
    assert "25 NETFILTER_DROP at nft_do_chain+0x4a0" in line
    v.peer_sort = "drops"
    assert v.peer_rows()[0]["peer_drops"] == 25


def test_hosts_view_aligns_columns_abbreviates_states_and_shows_waiting_hosts():
    v = FleetView()
    v.feed(Batch(kind="netstat", site="s", host="early", run="r0", seq=1, t0=1, t1=2,
                 events=[{"group": "Tcp", "scope": "", "deltas": {"RetransSegs": 1}}]))
    text = v.render("hosts")
    assert "1 host(s)" in text
    row = next(line for line in text.splitlines() if line.startswith("early"))
    assert "waiting for status" in row
    v.feed(Batch(kind="status", site="s", host="a-much-longer-host-name", run="r1", seq=1, t0=1,
                 t1=2, events=[{"version": "x", "lost": {}, "sources": {
                     "netstat": {"state": "running"},
                     "drops.netdm": {"state": "unavailable", "reason": "no NET_DM in this kernel"},
                     "drops.ebpf": {"state": "running"}}}]))
    lines = v.render("hosts").splitlines()
    table = lines[lines.index(next(x for x in lines if x.startswith("host"))):]
    head = table[0]
    row = next(x for x in table if x.startswith("a-much-longer-host-name"))
    assert "netstat:ok" in row and "drops.netdm:n/a" in row and "runn" not in row
    # every column starts where its heading starts
    for col in ("run", "sources"):
        assert row[head.index(col) - 2:head.index(col)] == "  "
    end = head.index("capture gaps") + len("capture gaps")
    assert row[end - 1] == "0" and row[end:end + 2] == "  "   # right-aligned under its heading
    assert any("drops.netdm: n/a: no NET_DM in this kernel" in x for x in lines)


def test_counters_are_kept_per_host_so_no_host_moves_anothers_figures():
    v = FleetView()
    for host, n in (("a", 3), ("liar", 10**12)):
        v.feed(Batch(kind="netstat", site="s", host=host, run="r", seq=1, t0=1, t1=2,
                     events=[{"group": "Tcp", "deltas": {"RetransSegs": n}}]))
    assert v.counters[("a", "Tcp", "RetransSegs")] == 3
    assert v.counters[("liar", "Tcp", "RetransSegs")] == 10**12
    rows = [ln.split() for ln in v.render("counters").splitlines() if ln.endswith("Tcp.RetransSegs")]
    assert sorted((r[1], r[0]) for r in rows) == [("a", "3"), ("liar", str(10**12))]


def test_path_loss_details_of_the_wrong_shape_are_not_shown_as_numbers():
    v = FleetView()
    v.feed(Batch(kind="incident", site="s", host="corr", run="r", seq=1, t0=1, t1=2, events=[
        {"type": "path_loss", "summary": "x", "details": {
            "from": "a", "to": "b", "delivered": {}, "lost": "7", "delay_ns": 5, "reasons": [1]}}]))
    assert v.path_rows() == [{"from": "a", "to": "b", "delivered": 0, "lost": 0, "unknown": 0,
                              "p50_ns": None, "p99_ns": None, "reason": None}]
    assert "a" in v.render("paths")

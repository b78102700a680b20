"""The archive's sans-IO core and its files: gap placement, accounting, rotation, tshark."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from netevents.consumers.archive import ArchiveFiles, PcapngArchive, packetid_base
from netevents.pcapng import EnhancedPacket, InterfaceStatistics, iter_packets, read_pcapng
from tests.framegen import T0, drop_batch, frame_batch, gap_batch

needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None,
                                  reason="needs tshark (Debian package tshark)")


def run_core(batches, *, final=True):
    core = PcapngArchive()
    data = core.open_section()
    for b in batches:
        data += core.add(b)
    data += core.close_section(T0 + 10**9, final=final)
    return core, read_pcapng(data)


def dropcounts(result):
    """{(iface name, host, packetid offset in ring): dropcount} for frames that carry one."""
    return {p.packetid: p.dropcount for _i, p in iter_packets(result) if p.dropcount}


def test_gap_before_its_frames_goes_on_frame_k_plus_1():
    base = packetid_base("h1", "r1", "eth0", 0)
    core, r = run_core([gap_batch("h1", "r1", 1, [(9, 40), (15, 3)]),
                        frame_batch("h1", "r1", 1, 0, 20)])
    assert dropcounts(r) == {base + 10: 40, base + 16: 3}
    pk = {p.packetid - base: p for _i, p in iter_packets(r)}
    assert "40 frames lost between frame 9 and 10" in pk[10].comments[0]
    s = core.summary()
    assert (s["frames"], s["dropcount"], s["gaps"], s["gaps_late"]) == (20, 43, 2, 0)
    isb, = r.of(InterfaceStatistics)
    assert isb.counters["ifrecv"] == 63 and isb.counters["osdrop"] == 43
    assert isb.counters["starttime"] == T0 and isb.counters["endtime"] == T0 + 19 * 1000


def test_gap_after_its_frame_goes_on_the_next_frame_written():
    base = packetid_base("h1", "r1", "eth0", 0)
    core, r = run_core([frame_batch("h1", "r1", 1, 0, 20), gap_batch("h1", "r1", 1, [(9, 40)]),
                        frame_batch("h1", "r1", 2, 20, 5)])
    assert dropcounts(r) == {base + 20: 40}
    p = next(p for _i, p in iter_packets(r) if p.packetid == base + 20)
    assert "reported after that frame was archived" in p.comments[0]
    assert core.summary()["gaps_late"] == 1 and core.summary()["dropcount"] == 40


def test_gap_in_a_later_batch_waits_for_it():
    base = packetid_base("h1", "r1", "eth0", 0)
    _core, r = run_core([frame_batch("h1", "r1", 1, 0, 20), gap_batch("h1", "r1", 1, [(29, 7)]),
                         frame_batch("h1", "r1", 2, 20, 20)])
    assert dropcounts(r) == {base + 30: 7}


def test_missed_frame_batch_is_unseen_not_lost():
    core, r = run_core([frame_batch("h1", "r1", 1, 0, 10), frame_batch("h1", "r1", 3, 20, 10)])
    s = core.summary()
    assert s["unseen_frames"] == 10 and s["dropcount"] == 0 and s["frames"] == 20
    assert not dropcounts(r)
    notes = [c for _i, p in iter_packets(r) for c in p.comments if "not received" in c]
    assert notes == ["frames 10..19 of this ring were not received by the archive "
                     "(missed batches), not lost by the capture"]


def test_redelivered_frames_are_not_written_twice():
    b1 = frame_batch("h1", "r1", 1, 0, 10)
    core, r = run_core([b1, frame_batch("h1", "r1", 2, 5, 10)])
    ids = [p.packetid for _i, p in iter_packets(r)]
    assert len(ids) == len(set(ids)) == 15
    assert core.summary()["duplicate_frames"] == 5


def test_one_interface_per_host_iface_worker_and_unique_packet_ids():
    batches = [frame_batch(h, "r", 1, 0, 5, iface=i, worker=w)
               for h in ("h1", "h2") for i in ("eth0", "eth1") for w in (0, 1)]
    _core, r = run_core(batches)
    names = [(i.name, i.description) for i in r.of(type(r.blocks[1]))]
    assert len(names) == 8 and len(set(names)) == 4       # worker differs: same name, two IDBs
    ids = [p.packetid for _i, p in iter_packets(r)]
    assert len(ids) == len(set(ids)) == 40


def test_unplaced_gaps_are_counted_at_the_end():
    core, r = run_core([frame_batch("h1", "r1", 1, 0, 10), gap_batch("h1", "r1", 1, [(99, 5)])])
    s = core.summary()
    assert (s["gaps_unplaced"], s["lost_unplaced"], s["dropcount"]) == (1, 5, 0)
    isb, = r.of(InterfaceStatistics)
    assert isb.counters["osdrop"] == 5 and "1 unplaced" not in isb.comments[0]
    assert "5 unplaced" in isb.comments[0]


def test_drop_packets_go_to_the_hosts_pseudo_interface():
    core, r = run_core([drop_batch("h1", "r1", 1, 3), drop_batch("h2", "r2", 1, 2)])
    pk = list(iter_packets(r))
    assert {i.name for i, _p in pk} == {"drops@h1", "drops@h2"}
    assert len(pk) == 4 + 3
    first = pk[0][1]
    assert first.comments == ["dropped by the kernel of h1: reason NETFILTER_DROP at "
                              "nf_hook_slow+0x8e on veth-b [netdm, sw]"]
    synth = [p for _i, p in pk if "synthesised" in p.comments[0]]
    assert len(synth) == 2 and all(p.data[12:14] == b"\x08\x00" for p in synth)
    s = core.summary()
    assert s["drop_packets"] == 7 and s["alert_drops_not_archived"] == 2


def test_bad_events_are_counted_and_the_rest_kept():
    bad_gap = gap_batch("h1", "r1", 1, [(1, 2)])
    bad_gap.events.append({"iface": "eth0", "lost": "many", "cause": "ring_full"})
    bad_frames = frame_batch("h1", "r9", 1, 0, 3)
    del bad_frames.fields["first_frame"]
    core, r = run_core([bad_gap, bad_frames, frame_batch("h1", "r1", 1, 0, 5)])
    s = core.summary()
    assert s["bad_events"] == 2 and s["frames"] == 5 and s["dropcount"] == 2


def test_checkpoint_restore_resumes_rings_and_waiting_gaps():
    core = PcapngArchive()
    core.open_section()
    core.add(frame_batch("h1", "r1", 1, 0, 10))
    core.add(gap_batch("h1", "r1", 1, [(14, 6)]))
    state = json.loads(json.dumps(core.checkpoint()))
    again = PcapngArchive()
    again.restore(state)
    data = again.open_section() + again.add(frame_batch("h1", "r1", 2, 5, 15))
    r = read_pcapng(data)
    base = packetid_base("h1", "r1", "eth0", 0)
    assert [p.packetid - base for p in r.of(EnhancedPacket)] == list(range(10, 20))
    assert dropcounts(r) == {base + 15: 6}
    assert again.written == {"h1|r1|frame": 2, "h1|r1|gap": 1}


def test_rotation_by_size_gives_complete_files(tmp_path):
    core = PcapngArchive()
    files = ArchiveFiles(tmp_path, core, rotate_bytes=8_000)
    files.open()
    files.write_batch(gap_batch("h1", "r1", 1, [(49, 11), (149, 12)]))
    for i in range(8):
        files.write_batch(frame_batch("h1", "r1", i + 1, i * 25, 25))
    files.close(final=True)
    paths = sorted(tmp_path.glob("*.pcapng"))
    assert len(paths) >= 3
    total_frames = total_drop = 0
    for p in paths:
        r = read_pcapng(p.read_bytes())
        side = json.loads(p.with_name(p.name + ".json").read_text())
        assert side["complete"] and not r.truncated
        frames = len(r.of(EnhancedPacket))
        assert frames == side["frames"]
        assert sum(e.dropcount or 0 for e in r.of(EnhancedPacket)) == side["dropcount"]
        assert len(r.of(InterfaceStatistics)) == len(side["interfaces"])
        total_frames += frames
        total_drop += side["dropcount"]
    assert (total_frames, total_drop) == (200, 23)


@needs_tshark
def test_tshark_sees_drop_counts_names_and_comments(tmp_path):
    files = ArchiveFiles(tmp_path, PcapngArchive())
    files.open()
    for host in ("web-1", "db-2"):
        files.write_batch(gap_batch(host, "r", 1, [(9, 40), (33, 2)], iface="veth-b", worker=1))
        files.write_batch(frame_batch(host, "r", 1, 0, 30, iface="veth-b", worker=1))
        files.write_batch(frame_batch(host, "r", 2, 30, 30, iface="veth-b", worker=1))
        files.write_batch(drop_batch(host, "r", 1, 2))
    files.close(final=True)
    path, = tmp_path.glob("*.pcapng")
    out = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-E", "separator=|",
                          "-e", "frame.interface_name", "-e", "frame.interface_description",
                          "-e", "frame.drop_count", "-e", "udp.srcport", "-e", "frame.comment"],
                         check=True, capture_output=True, text=True).stdout.splitlines()
    rows = [line.split("|") for line in out]
    assert len(rows) == 2 * (60 + 3)
    with_drop = [(r[1], int(r[2]), r[3]) for r in rows if r[2]]
    # frame k+1 = 10 and 34 -> UDP source ports 1034 and 1058 (framegen: 1024 + frame)
    assert sorted(with_drop) == sorted([(h, 40, "1034") for h in ("web-1", "db-2")]
                                       + [(h, 2, "1058") for h in ("web-1", "db-2")])
    assert sum(d for _h, d, _p in with_drop) == 84
    drops = [r for r in rows if r[0].startswith("drops@")]
    assert {r[0] for r in drops} == {"drops@web-1", "drops@db-2"}
    assert all("reason" in r[4] and "at " in r[4] for r in drops)
    assert {r[1] for r in rows if r[0] == "veth-b"} == {"web-1", "db-2"}


def test_resume_after_kill_between_flush_and_checkpoint(tmp_path):
    """The file got one more batch than its sidecar knows: a restart must not write it again,
    nor its gap's dropcount."""
    core = PcapngArchive()
    files = ArchiveFiles(tmp_path, core)
    files.open()
    files.write_batch(frame_batch("h1", "r1", 1, 0, 10))
    files.write_batch(gap_batch("h1", "r1", 1, [(14, 5)]))
    # "kill -9" after the flush of batch 2, before its checkpoint: bytes in, sidecar not rewritten
    files.fh.write(core.add(frame_batch("h1", "r1", 2, 10, 10)))
    files.fh.write(core.add(frame_batch("h1", "r1", 3, 20, 10))[:150])   # torn mid-block
    files.fh.flush()
    files.fh.close()

    again = PcapngArchive()
    files2 = ArchiveFiles(tmp_path, again)
    state, beyond = files2.resume_state()
    assert len(beyond) == 10
    again.restore(state)
    assert again.advance(beyond) == 10
    files2.open()
    files2.write_batch(frame_batch("h1", "r1", 2, 10, 10))      # redelivered
    files2.write_batch(frame_batch("h1", "r1", 3, 20, 10))
    files2.close(final=True)
    # the killed file was closed by the restart: torn block cut, ISB added, sidecar complete
    first = files.files[0]
    r1 = read_pcapng(first.read_bytes())
    side = json.loads(first.with_name(first.name + ".json").read_text())
    assert not r1.truncated and side["complete"] and side["sealed"]
    assert side["torn_bytes_cut"] == 150
    assert side["frames"] == len(r1.of(EnhancedPacket)) == 20 and side["dropcount"] == 5
    isb, = r1.of(InterfaceStatistics)
    assert isb.counters["usrdeliv"] == 20 and isb.counters["osdrop"] == 5
    pk = [p for f in sorted(tmp_path.glob("*.pcapng")) for p in read_pcapng(f.read_bytes()).of(EnhancedPacket)]
    base = packetid_base("h1", "r1", "eth0", 0)
    assert sorted(p.packetid - base for p in pk) == list(range(30))
    assert sum(p.dropcount or 0 for p in pk) == 5
    assert again.summary()["lost_unplaced"] == 0


def test_isb_uses_the_kernels_ring_totals_and_idb_names_the_timestamps():
    b = frame_batch("h1", "r1", 1, 0, 10, hwtstamp={"filter": "all", "phc_index": 2})
    b.fields["ring"] = {"packets": 1000, "drops": 40, "freezes": 3}
    soft = frame_batch("h2", "r2", 1, 0, 10, hwtstamp={"filter": None, "phc_index": None})
    _core, r = run_core([b, soft])
    idbs = r.of(type(r.blocks[1]))
    assert idbs[0].hardware == "netevents capture worker 0; hardware timestamps (rx filter all, PHC /dev/ptp2)"
    assert idbs[1].hardware == "netevents capture worker 0; software timestamps"
    isb1, isb2 = r.of(InterfaceStatistics)
    assert (isb1.counters["ifrecv"], isb1.counters["osdrop"], isb1.counters["usrdeliv"]) == (1000, 40, 10)
    assert "ring totals since capture start: 1000 packets, 40 drops" in isb1.comments[0]
    assert (isb2.counters["ifrecv"], isb2.counters["osdrop"]) == (10, 0)


def test_out_of_range_values_are_counted_and_the_file_stays_valid():
    huge_len = frame_batch("h1", "r1", 1, 0, 3)
    huge_len.events["len"][1] = 1 << 40
    neg_ts = frame_batch("h2", "r2", 1, 0, 3)
    neg_ts.events["ts"][0] = -5
    huge_gap = gap_batch("h1", "r1", 1, [(1, 1 << 70)])
    weird_drop = drop_batch("h3", "r3", 1, 1)
    weird_drop.events[0]["orig_len"] = 1 << 40
    ring = frame_batch("h4", "r4", 1, 0, 2)
    ring.fields["ring"] = {"packets": -1, "drops": 1 << 80}
    core, r = run_core([huge_len, neg_ts, huge_gap, weird_drop, ring,
                        frame_batch("h1", "r1", 2, 0, 4)])
    s = core.summary()
    assert s["bad_events"] == 4
    assert s["frames"] == 4 + 2 and s["drop_packets"] == 1
    assert not r.truncated and len(r.of(EnhancedPacket)) == 7


def test_a_batch_that_fails_midway_is_left_out_whole(monkeypatch):
    core = PcapngArchive()
    data = core.open_section()
    data += core.add(frame_batch("h1", "r1", 1, 0, 3))
    data += core.add(gap_batch("h2", "r2", 1, [(0, 4)]))
    bad = frame_batch("h2", "r2", 1, 0, 3)
    bad.events["head"][2] = 12345            # not bytes: fails inside the hot loop
    data += core.add(bad)
    data += core.add(frame_batch("h1", "r1", 2, 3, 3))
    data += core.close_section(T0, final=True)
    r = read_pcapng(data)
    s = core.summary()
    assert s["bad_batches"] == 1 and s["dropcount"] == 0 and s["frames"] == 6
    assert len(r.of(EnhancedPacket)) == 6
    assert s["lost_unplaced"] == 4          # the gap is still there, given up only at the end
    # h2's IDB (from the failed batch) is gone; the one at the end carries the unplaced gap's ISB
    idbs = r.of(type(r.blocks[1]))
    assert [i.description for i in idbs] == ["h1", "h2"]
    assert idbs[1].offset > r.of(EnhancedPacket)[-1].offset


def _ts_order(result) -> list[int]:
    return [p.timestamp for p in result.of(EnhancedPacket)]


def test_rings_written_together_are_merged_into_time_order():
    """Two workers' batches overlapping in time, written as one group: every packet by
    timestamp (each ring's packet ids still ascending), gaps still on their frames; a batch
    that comes behind what the file already has is written and counted."""
    core = PcapngArchive()
    data = core.open_section()
    group = [gap_batch("h1", "r1", 1, [(14, 6)], worker=1),
             frame_batch("h1", "r1", 1, 0, 40, worker=0, step=1000),
             frame_batch("h1", "r1", 1, 0, 40, worker=1, ts0=T0 + 500, step=1000),
             frame_batch("h1", "r1", 2, 40, 40, worker=0, step=1000),
             drop_batch("h2", "r9", 1, 3, ts0=T0 + 20_250)]
    data += core.add_group(group)
    assert core.counts["out_of_order"] == 0
    data += core.add_group([frame_batch("h1", "r1", 3, 80, 5, worker=0, step=1000)])
    assert core.counts["out_of_order"] == 0
    data += core.add_group([frame_batch("h1", "r1", 2, 40, 5, worker=1, ts0=T0 + 500)])
    assert core.counts["out_of_order"] == 5       # behind the file: written, counted
    data += core.close_section(T0 + 10**9)
    r = read_pcapng(data)
    ts = _ts_order(r)
    assert len(ts) == 40 + 40 + 40 + 4 + 5 + 5   # drop_batch(n=3): 4 packets
    assert ts[:-5] == sorted(ts[:-5])
    by_if: dict[int, list[int]] = {}
    for idb, p in iter_packets(r):
        if idb.name != "drops@h2":
            by_if.setdefault(id(idb), []).append(p.packetid)
    assert all(ids == sorted(ids) for ids in by_if.values()) and len(by_if) == 2
    assert dropcounts(r) == {packetid_base("h1", "r1", "eth0", 1) + 15: 6}
    assert core.summary()["out_of_order"] == 5


def test_time_order_window_releases_behind_the_newest_and_keeps_ring_order():
    from netevents.consumers.archive.service import TimeOrder

    order = TimeOrder(1.0, max_held=4)
    s = 10**9
    a1 = frame_batch("h", "r", 1, 0, 2, worker=0, ts0=T0)
    b1 = frame_batch("h", "r", 1, 0, 2, worker=1, ts0=T0 + s // 2)
    for b in (a1, b1):
        order.add(b, 100.0)
    assert order.release(100.1) == []                     # nothing 1 s behind the newest yet
    a2 = frame_batch("h", "r", 2, 2, 2, worker=0, ts0=T0 + 2 * s)
    order.add(a2, 100.2)
    assert order.release(100.2) == [a1, b1]               # both > 1 s behind a2
    assert order.deadline() == 100.2 + 2.0
    assert order.release(102.2) == [a2]                   # the wall bound
    late = [frame_batch("h", "r", i, 2 * i, 2, worker=0, ts0=T0 + 9 * s) for i in range(3, 9)]
    for b in late:
        order.add(b, 103.0)
    assert order.release(103.0) == late[:2]               # over max_held: the oldest go
    assert order.release(None) == late[2:]


def test_time_order_releases_what_overlaps_the_released_packets():
    from netevents.consumers.archive.service import TimeOrder

    order = TimeOrder(1.0)
    x = frame_batch("h", "r", 1, 0, 10, worker=0, ts0=T0)                # T0 .. T0 + 9 us
    y = frame_batch("h", "r", 1, 0, 10, worker=1, ts0=T0 + 5_000)        # overlaps x
    z = frame_batch("h", "r", 1, 0, 10, worker=2, ts0=T0 + 50_000)       # after both
    order.add(x, 100.0)
    order.add(y, 101.5)
    order.add(z, 101.5)
    # x waited out the wall bound; y starts before x's last packet: it goes too; z stays
    assert order.release(102.0) == [x, y]
    assert order.release(103.6) == [z]

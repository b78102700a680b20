"""The extract core (sans-IO): gaps in place through the archive core, filtered frames are not
'unseen', the sidecar is the archive's."""

from __future__ import annotations

from netevents.consumers.extract import Extractor
from netevents.consumers.filters import EventFilter
from netevents.pcapng import EnhancedPacket, read_pcapng
from tests.framegen import frame_batch, gap_batch


def run(ex: Extractor, batches) -> tuple[bytes, dict]:
    data = bytearray(ex.head)
    for b in batches:
        data += ex.add(b)
    data += ex.finish(1)
    return bytes(data), ex.sidecar("x.pcapng", len(data))


def test_all_frames_gaps_on_their_frame():
    gaps = gap_batch("h", "r", 1, [(9, 5), (24, 3)])
    frames = [frame_batch("h", "r", i + 1, i * 10, 10) for i in range(3)]
    data, side = run(Extractor(), [gaps, *frames])
    pkts = read_pcapng(data).of(EnhancedPacket)
    assert len(pkts) == 30 and side["packets"] == 30
    assert [(i, p.dropcount) for i, p in enumerate(pkts) if p.dropcount] == [(10, 5), (25, 3)]
    assert side["dropcount"] == 8 and side["unseen_frames"] == 0 and side["complete"]


def test_port_filter_keeps_gaps_and_counts_no_unseen_frames():
    # frame k has sport 1024 + k: keep frames 3..6 and 20..21 of 0..29
    want = [1024 + k for k in (3, 4, 5, 6, 20, 21)]
    gaps = gap_batch("h", "r", 1, [(4, 2), (14, 7)])     # before frame 5 (kept), 15 (filtered)
    frames = [frame_batch("h", "r", i + 1, i * 10, 10) for i in range(3)]
    ex = Extractor(EventFilter.build(port=want))
    data, side = run(ex, [gaps, *frames])
    pkts = read_pcapng(data).of(EnhancedPacket)
    assert len(pkts) == 6 and side["frames"] == 6 and side["extract"]["filtered_frames"] == 24
    assert [p.dropcount for p in pkts] == [None, None, 2, None, 7, None]
    assert side["unseen_frames"] == 0 and side["dropcount"] == 9


def test_missed_batch_is_still_unseen_under_a_filter():
    frames = [frame_batch("h", "r", 1, 0, 10), frame_batch("h", "r", 3, 20, 10)]   # 10..19 missed
    ex = Extractor(EventFilter.build(port=[1024 + 2, 1024 + 25]))
    _data, side = run(ex, frames)
    assert side["frames"] == 2 and side["unseen_frames"] == 10


def test_iface_filter_drops_other_rings_and_their_gaps():
    batches = [gap_batch("h", "r", 1, [(4, 2)], iface="eth1"), gap_batch("h", "r", 2, [(4, 9)]),
               frame_batch("h", "r", 1, 0, 10, iface="eth1"), frame_batch("h", "r", 2, 0, 10)]
    _data, side = run(Extractor(EventFilter.build(iface=["eth1"])), batches)
    assert side["frames"] == 10 and side["dropcount"] == 2 and side["extract"]["filtered_gaps"] == 1

"""The subscription's intake without a server: real encoded batches in, accepted batches out."""

import logging
import os

import msgpack
import pytest

from netevents.bus import Intake
from netevents.codec import MAX_BATCH_BYTES, Batch, encode_batch
from netevents.errors import SubjectError
from netevents.events import DropEvent, GapEvent, StatusEvent
from netevents.subjects import event_subject


def batch(host="web-1", seq=1, kind="drop", run="run1", site="dc1", events=None):
    if events is None:
        events = {"drop": [DropEvent(count=seq, source="counter", reason="QDISC_DROP")],
                  "gap": [GapEvent(iface="eth0", lost=3, cause="ring_full")]}[kind]
    return Batch(kind=kind, site=site, host=host, run=run, seq=seq, t0=1, t1=2, events=events)


def status(host="web-1", seq=1, run="run1", published=None):
    return batch(host, seq, "status", run,
                 events=[StatusEvent(version="0.1.0", published=published or {})])


def msg(b, subject=None):
    """(subject, data) as the batch's agent would publish it, or on another ``subject``."""
    return subject or event_subject(b.kind, b.site, b.host), encode_batch(b)


def test_an_accepted_batch_is_decoded_and_nothing_is_counted_against_it():
    intake = Intake(["drop"])
    got = intake.accept(*msg(batch(seq=1)))
    assert (got.kind, got.site, got.host, got.run, got.seq, got.missed) == (
        "drop", "dc1", "web-1", "run1", 1, 0)
    assert got.events == [{"count": 1, "source": "counter", "reason": "QDISC_DROP",
                           "origin": "sw"}]
    assert not intake.rejected and intake.last_error is None
    assert intake.missed == 0 and intake.unreceived == 0
    assert intake.tracker.report()["web-1"]["drop"]["received"] == 1


def test_malformed_messages_are_counted_by_reason_and_the_next_good_one_goes_through(caplog):
    subject = "netevents.v1.drop.dc1.web-1"
    good = batch().header() | {"events": [{"count": 1, "source": "counter"}]}

    def pack(**over):
        return msgpack.packb(good | over, use_bin_type=True)

    intake = Intake(["drop"])
    with caplog.at_level(logging.WARNING, logger="netevents.bus"):
        for data in (b"\xc1" + os.urandom(299),          # 0xc1 is never valid msgpack
                     pack()[:-4],                         # truncated
                     b"\xdd" + b"\xff" * 4,               # an array length with no array
                     pack(v=9),                           # wrong version
                     pack(seq="x"),                       # wrong type
                     pack(host="a.b"),                    # not a token
                     b"\0" * (MAX_BATCH_BYTES + 1)):      # refused before parsing
            assert intake.accept(subject, data) is None
    assert intake.rejected == {"malformed": 3, "version": 1, "schema": 2, "oversize": 1}
    assert "over the" in intake.last_error and subject in intake.last_error
    # The 1st and 2nd of a reason are logged, then only the 4th, 8th, ...: never a flood.
    assert sum("malformed" in r.getMessage() for r in caplog.records) == 2
    assert intake.accept(*msg(batch(seq=1))).seq == 1
    assert intake.tracker.report()["web-1"]["drop"] == {
        "received": 1, "missed": 0, "duplicates": 0, "before_join": 0, "runs": 1}


def test_host_globs_filter_silently_and_filtered_batches_are_not_tracked():
    intake = Intake(["drop"], ["web-*"])
    assert intake.accept(*msg(batch("db-1", seq=1))) is None
    assert intake.accept(*msg(batch("db-1", seq=3))) is None
    assert intake.accept(*msg(batch("web-2", seq=1))).host == "web-2"
    assert not intake.rejected
    assert set(intake.tracker.report()) == {"web-2"}
    assert intake.missed == 0


@pytest.mark.parametrize("on", [
    "netevents.v1.drop.dc1.web-2",       # speaks for another host
    "netevents.v1.drop.dc2.web-1",       # or another site
    "netevents.v1.gap.dc1.web-1",        # or another kind
    "netevents.v1.drop.dc1",             # not an event subject at all
])
def test_a_batch_that_does_not_match_its_subject_is_rejected_as_a_spoof(on):
    intake = Intake(["drop", "gap"])
    assert intake.accept(*msg(batch("web-1", seq=1), subject=on)) is None
    assert intake.rejected == {"subject": 1}
    assert on in intake.last_error
    assert intake.tracker.report() == {}  # a spoof cannot move another host's sequence


def test_a_seq_jump_is_missed_per_host_run_and_kind():
    intake = Intake(["drop", "gap"])
    seen = [intake.accept(*msg(batch("web-1", s))).missed for s in (1, 2, 5, 6, 9)]
    assert seen == [0, 0, 2, 0, 2]
    assert intake.accept(*msg(batch("web-2", 1))).missed == 0
    assert intake.accept(*msg(batch("web-2", 3))).missed == 1
    # A new run starts its own sequence; what it published before we joined is not missed.
    assert intake.accept(*msg(batch("web-2", 4, kind="gap", run="run2"))).missed == 0
    rep = intake.tracker.report()
    assert rep["web-1"]["drop"]["missed"] == 4
    assert rep["web-2"]["drop"]["missed"] == 1
    assert rep["web-2"]["gap"] == {"received": 1, "missed": 0, "duplicates": 0,
                                   "before_join": 3, "runs": 1}
    assert intake.missed == 5


def test_a_duplicate_is_dropped_counted_as_such_and_not_as_a_reject():
    intake = Intake(["drop"])
    assert intake.accept(*msg(batch(seq=1))) is not None
    assert intake.accept(*msg(batch(seq=2))) is not None
    assert intake.accept(*msg(batch(seq=2))) is None
    assert intake.accept(*msg(batch(seq=1))) is None
    assert intake.accept(*msg(batch(seq=3))).missed == 0
    assert intake.tracker.report()["web-1"]["drop"]["duplicates"] == 2
    assert not intake.rejected and intake.missed == 0


def test_a_status_announces_what_its_run_published_and_the_tail_is_unreceived():
    intake = Intake(["drop", "status"])
    for s in (1, 2):
        intake.accept(*msg(batch(seq=s)))
    # gap is not subscribed and run9 was never seen: neither is this consumer's loss.
    intake.accept(*msg(status(seq=1, published={"drop": 5, "gap": 7, "status": 1})))
    intake.accept(*msg(status(seq=1, run="run9", published={"drop": 40})))
    assert intake.unreceived == 3 and intake.missed == 0  # drop 3, 4, 5 not here (yet)
    # An older status cannot lower what was announced; a count that is not an integer is not one.
    intake.accept(*msg(status(seq=2, published={"drop": 4})))
    intake.accept(*msg(status(seq=3, published={"drop": 99.0})))
    intake.accept(*msg(status(seq=4, published={"drop": True})))
    assert intake.unreceived == 3
    got = intake.accept(*msg(batch(seq=5)))
    assert got.missed == 2                                  # 3 and 4 became a hole
    assert intake.missed == 2 and intake.unreceived == 0


def test_a_queue_group_member_counts_holes_as_shared_and_follows_no_announcement():
    intake = Intake(["drop", "status"], shared=True)
    assert intake.accept(*msg(batch(seq=1))).missed == 0
    assert intake.accept(*msg(batch(seq=4))).missed == 0    # 2, 3 went to other members
    intake.accept(*msg(status(seq=1, published={"drop": 9})))
    assert intake.shared_holes == 2
    assert intake.missed == 0 and intake.unreceived == 0
    assert intake.tracker.report()["web-1"]["drop"]["missed"] == 2


def test_an_unknown_kind_is_refused_up_front():
    with pytest.raises(SubjectError, match="unknown kind 'drops'"):
        Intake(["drop", "drops"])
    assert Intake().kinds == Intake(None).kinds and "frame" in Intake().kinds


def test_a_poisoned_seq_is_rejected_as_sequence_and_the_run_goes_on():
    intake = Intake(["drop", "status"])
    for seq in range(1, 6):
        assert intake.accept(*msg(batch(seq=seq))).missed == 0
    assert intake.accept(*msg(batch(seq=2**62))) is None
    assert intake.rejected == {"sequence": 1} and "implausible" in intake.last_error
    assert [intake.accept(*msg(batch(seq=s))).seq for s in range(6, 106)] == list(range(6, 106))
    assert intake.missed == 0
    intake.accept(*msg(status(published={"drop": 2**62})))  # a poisoned announcement
    assert intake.unreceived == 0


def test_a_seq_the_runs_status_contradicts_is_rejected_as_sequence_and_nothing_is_missed():
    intake = Intake(["drop", "status"])
    for seq in range(1, 4):
        assert intake.accept(*msg(batch(seq=seq))).missed == 0
    assert intake.accept(*msg(batch(seq=900))).missed == 896   # a lie, plausible on its own
    intake.accept(*msg(status(published={"drop": 5})))
    assert [intake.accept(*msg(batch(seq=s))).missed for s in (4, 5, 6)] == [0, 0, 0]
    assert intake.rejected == {"sequence": 1} and "announced" in intake.last_error
    assert intake.missed == 0 and intake.unreceived == 0


@pytest.mark.skipif(not __import__("netevents.lazy").lazy.ENABLED, reason="no C validator")
def test_a_consumer_that_reads_the_columns_gets_them_decoded_in_one_pass_with_equal_values():
    from netevents.lazy import LazyColumns
    from tests.framegen import frame_batch

    def feed(intake, reads):
        got = []
        for seq in range(1, 4):
            b = frame_batch("web-1", "run1", seq, seq * 8, 8)
            out = intake.accept(event_subject("frame", b.site, b.host), encode_batch(b))
            for name in reads:
                out.events[name]
            got.append(out)
        return got

    readers = feed(Intake(["frame"]), ("ts", "src", "dst", "l4", "sport", "dport", "ip_id",
                                         "tcp_seq", "head", "dir", "ts_src", "len", "caplen"))
    # taking the second batch, the intake sees the first one's columns were read: the batches
    # after it are decoded at once
    assert [type(b.events) for b in readers] == [LazyColumns, LazyColumns, dict]
    idle = feed(Intake(["frame"]), ())  # a consumer that reads none keeps them lazy
    assert [type(b.events) for b in idle] == [LazyColumns] * 3
    assert [dict(b.events) for b in readers] == [dict(b.events) for b in idle]
    assert [len(b) for b in readers] == [len(b) for b in idle] == [8, 8, 8]


@pytest.mark.skipif(not __import__("netevents.lazy").lazy.ENABLED, reason="no C validator")
def test_a_consumer_that_reads_the_rows_gets_them_decoded_in_one_pass_with_equal_values():
    from netevents.lazy import LazyRows

    def feed(intake, read):
        got = []
        for seq in range(1, 4):
            b = batch(seq=seq, events=[{"count": seq, "source": "counter", "reason": "QDISC_DROP"},
                                       {"count": 2, "source": "ebpf", "location": "x+0x1"}])
            out = intake.accept(event_subject("drop", b.site, b.host), encode_batch(b))
            if read:
                list(out.events)
            got.append(out)
        return got

    readers = feed(Intake(["drop"]), read=True)
    assert [type(b.events) for b in readers] == [LazyRows, LazyRows, list]
    idle = feed(Intake(["drop"]), read=False)  # a consumer that reads none keeps them lazy
    assert [type(b.events) for b in idle] == [LazyRows] * 3
    assert [list(b.events) for b in readers] == [list(b.events) for b in idle]
    assert [len(b) for b in readers] == [len(b) for b in idle] == [2, 2, 2]

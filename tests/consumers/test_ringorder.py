"""RingOrderHold without a server: frame batches wait for the gap records they announce, a
ring's batches leave in order, the wait is bounded and expiry says what never came."""

from __future__ import annotations

from netevents.consumers.ringorder import Released, RingOrderHold, gaps_owed

A = ("h1", "r1", "eth0", 0)
B = ("h1", "r1", "eth0", 1)


def items(released: list[Released]) -> list:
    return [r.item for r in released]


def test_gaps_owed_reads_the_batch_field():
    assert gaps_owed({"gaps_before": {"records": 3, "lost": 9}}) == 3
    assert gaps_owed({"gaps_before": {"records": 0}}) == 0
    assert gaps_owed({}) is None
    assert gaps_owed({"gaps_before": 3}) is None
    assert gaps_owed({"gaps_before": {"records": "3"}}) is None
    assert gaps_owed({"gaps_before": {"records": True}}) is None


def test_a_batch_that_owes_nothing_leaves_at_once():
    h = RingOrderHold(10)
    h.hold(A, 0, 0, "a1")
    assert h.release() == [Released(A, "a1", False, 0)]
    assert len(h) == 0 and not h.waiting(A) and h.deadline() is None


def test_a_batch_waits_for_its_records_and_holds_back_its_ring_only():
    h = RingOrderHold(10)
    h.hold(A, 2, 0, "a1")
    h.hold(A, 0, 1, "a2")          # owes less, but comes after a1 on the same ring
    h.hold(B, 0, 2, "b1")
    assert items(h.release()) == ["b1"]
    assert h.waiting(A) and not h.waiting(B) and len(h) == 2
    h.gap(A)
    assert h.release() == []
    h.gap(A)
    assert items(h.release()) == ["a1", "a2"]
    assert h.seen(A) == 2 and len(h) == 0


def test_records_that_come_first_let_the_batch_pass():
    h = RingOrderHold(10)
    h.gap(A, 3)
    h.hold(A, 3, 0, "a1")
    assert items(h.release()) == ["a1"]


def test_release_keeps_the_order_batches_were_held_in_across_rings():
    h = RingOrderHold(10)
    h.hold(A, 1, 0, "a1")
    h.hold(B, 1, 1, "b1")
    h.hold(A, 1, 2, "a2")
    h.gap(B)
    h.gap(A)
    assert items(h.release()) == ["a1", "b1", "a2"]


def test_the_wait_is_bounded_and_expiry_reports_the_missing_records():
    h = RingOrderHold(10)
    h.gap(A)
    h.hold(A, 3, 100, "a1")
    h.hold(A, 3, 105, "a2")
    h.hold(A, 4, 106, "a3")
    assert h.deadline() == 110
    assert h.release(109) == []                    # not yet
    out = h.release(110)
    # a1 waited out the bound: 2 records never came; the ring goes on from 3, so a2 (owing
    # no more) leaves with it; a3 owes one more record and waits on
    assert out == [Released(A, "a1", True, 2), Released(A, "a2", False, 0)]
    assert h.seen(A) == 3 and h.waiting(A)
    h.gap(A)
    assert items(h.release()) == ["a3"]


def test_release_without_a_clock_never_expires():
    h = RingOrderHold(10)
    h.hold(A, 1, 0, "a1")
    assert h.release() == [] and h.waiting(A)
    assert h.release(10)[0].expired


def test_max_held_pushes_the_oldest_out():
    h = RingOrderHold(1000, max_held=2)
    h.hold(A, 1, 0, "a1")
    h.hold(B, 1, 1, "b1")
    h.hold(A, 1, 2, "a2")
    out = h.release(3)
    assert out == [Released(A, "a1", True, 1), Released(A, "a2", False, 0)]
    assert len(h) == 1 and h.waiting(B)


def test_an_unannounced_batch_owes_nothing_or_waits_the_bound():
    h = RingOrderHold(10)
    h.hold(A, None, 0, "a1")
    assert items(h.release()) == ["a1"]
    w = RingOrderHold(10, unannounced_waits=True)
    w.hold(A, None, 0, "a1")
    w.hold(A, 0, 1, "a2")
    w.gap(A, 5)
    assert w.release(9) == []                      # records do not release it, only the clock
    assert w.release(10) == [Released(A, "a1", True, 0), Released(A, "a2", False, 0)]
    assert w.seen(A) == 5


def test_drain_and_forget():
    h = RingOrderHold(10)
    h.hold(A, 2, 0, "a1")
    h.hold(B, 1, 1, "b1")
    h.hold(A, 2, 2, "a2")
    h.gap(A)
    assert h.forget(B) == 1 and not h.waiting(B) and h.seen(B) == 0
    assert h.drain() == [Released(A, "a1", True, 1), Released(A, "a2", True, 1)]
    assert len(h) == 0 and h.release(100) == []

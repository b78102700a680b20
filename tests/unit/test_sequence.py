from netevents.sequence import SequenceTracker


def test_holes_are_counted_exactly_per_host_and_kind():
    t = SequenceTracker()
    for seq in (1, 2, 5, 6, 10):
        t.observe("a", "run1", "drop", seq)
    for seq in (1, 3):
        t.observe("b", "run9", "drop", seq)
    t.observe("a", "run1", "netstat", 1)
    assert t.missed("a", "drop") == 2 + 3
    assert t.missed("b") == 1
    assert t.missed(kind="netstat") == 0
    assert t.report()["a"]["drop"] == {"received": 5, "missed": 5, "duplicates": 0,
                                       "before_join": 0, "runs": 1}


def test_duplicates_and_late_joiners_are_told_apart_from_misses():
    t = SequenceTracker()
    assert t.observe("a", "r", "gap", 40) == 0          # joined late: 39 before_join, not missed
    assert t.observe("a", "r", "gap", 41) == 0
    assert t.observe("a", "r", "gap", 41) == -1         # replayed duplicate
    assert t.observe("a", "r2", "gap", 1) == 0          # a new run starts its own count
    rep = t.report()["a"]["gap"]
    assert rep["before_join"] == 39 and rep["duplicates"] == 1 and rep["missed"] == 0
    assert rep["runs"] == 2


def test_state_is_bounded_and_evictions_counted():
    t = SequenceTracker(max_runs=3)
    for i in range(5):
        t.observe("h", f"run{i}", "drop", 1)
    assert t.evicted == 2


def test_the_tail_a_hole_cannot_show_is_found_through_the_runs_status():
    t = SequenceTracker()
    for seq in (1, 2, 3):
        t.observe("h", "r1", "frame", seq)
    t.announce("h", "r1", "frame", 7)  # the run's status: 7 frame batches published
    assert t.missed() == 0 and t.unreceived() == 4  # 4, 5, 6, 7 never came (yet)
    t.observe("h", "r1", "frame", 6)  # 4 and 5 become a hole; 7 is still owed
    assert (t.missed(), t.unreceived()) == (2, 1)
    t.announce("h", "r1", "frame", 5)  # an older status changes nothing
    assert t.unreceived() == 1
    # a run (or kind) never received from is not followed: that is not this consumer's loss
    t.announce("h", "r2", "frame", 50)
    t.announce("h", "r1", "drop", 9)
    assert t.unreceived() == 1 and t.unreceived(kind="drop") == 0


def test_a_poisoned_seq_is_rejected_and_counted_and_blinds_nothing():
    from netevents.sequence import REJECTED

    t = SequenceTracker()
    for seq in range(1, 11):
        assert t.observe("h", "r", "drop", seq) == 0
    assert t.observe("h", "r", "drop", 2**62) == REJECTED
    for seq in range(11, 111):  # the next 100 legitimate batches all count, none is a duplicate
        assert t.observe("h", "r", "drop", seq) == 0
    rep = t.report()["h"]["drop"]
    assert (rep["received"], rep["missed"], rep["duplicates"], rep["implausible"]) == (110, 0, 0, 1)
    assert t.missed() == 0


def test_a_run_whose_first_batch_was_poisoned_is_rebased_by_the_real_ones():
    t = SequenceTracker()
    assert t.observe("h", "r", "drop", 2**62) == 0       # nothing to compare it with yet
    assert t.observe("h", "r", "drop", 1) == 0           # far below: the first one was the lie
    for seq in range(2, 50):
        assert t.observe("h", "r", "drop", seq) == 0
    rep = t.report()["h"]["drop"]
    assert rep["missed"] == 0 and rep["duplicates"] == 0 and rep["before_join"] == 0
    assert rep["implausible"] == 1


def test_a_consumer_away_for_longer_than_max_jump_moves_on_after_a_few_batches():
    from netevents.sequence import REJECTED

    t = SequenceTracker(max_jump=100, rebase_after=3)
    t.observe("h", "r", "frame", 1)
    assert t.observe("h", "r", "frame", 1000) == REJECTED
    assert t.observe("h", "r", "frame", 1001) == REJECTED
    assert t.observe("h", "r", "frame", 1002) == 0       # three in a row: the run really is there
    assert t.observe("h", "r", "frame", 1003) == 0
    assert t.missed() == 0 and t.rebased == 1


def test_an_implausible_announcement_is_ignored_and_counted():
    t = SequenceTracker(max_jump=1000)
    t.observe("h", "r", "drop", 5)
    t.announce("h", "r", "drop", 2**62)
    assert t.unreceived() == 0 and t.implausible[("h", "drop")] == 1
    t.announce("h", "r", "drop", 8)
    assert t.unreceived() == 3


def test_a_seq_above_what_the_runs_status_announced_is_retracted_and_the_run_goes_on():
    t = SequenceTracker()
    for seq in range(1, 6):
        t.observe("h", "r", "drop", seq)
    assert t.observe("h", "r", "drop", 5000) == 4994   # plausible jump: believed at first
    t.announce("h", "r", "drop", 7)                   # the run says: 7 published, not 5000
    # 6 and 7 are real: not duplicates of the lie; the holes it made are taken back.
    assert t.observe("h", "r", "drop", 6) == 0
    assert t.observe("h", "r", "drop", 7) == 0
    assert t.observe("h", "r", "drop", 7) == -1        # a true duplicate still is one
    rep = t.report()["h"]["drop"]
    assert (rep["missed"], rep["duplicates"], rep["implausible"]) == (0, 1, 1)
    assert t.retracted == 1 and t.missed() == 0 and t.unreceived() == 0
    for seq in range(8, 20):
        assert t.observe("h", "r", "drop", seq) == 0


def test_a_poisoned_first_batch_below_the_real_count_is_retracted_by_the_status():
    t = SequenceTracker()
    assert t.observe("h", "r", "frame", 900) == 0       # first batch: 899 before_join
    t.announce("h", "r", "frame", 3)
    assert t.observe("h", "r", "frame", 3) == 0         # real; not a duplicate of 900
    assert t.observe("h", "r", "frame", 4) == 0
    rep = t.report()["h"]["frame"]
    assert (rep["before_join"], rep["missed"], rep["duplicates"], rep["implausible"]) == (2, 0, 0, 1)


def test_an_old_status_that_a_batch_in_order_confirms_against_changes_nothing():
    t = SequenceTracker()
    t.observe("h", "r", "frame", 40)                    # joined late, real
    t.announce("h", "r", "frame", 30)                   # an older status (replayed out of order)
    assert t.observe("h", "r", "frame", 41) == 0        # in order: the position was real
    assert t.observe("h", "r", "frame", 20) == -1       # so 20 is a duplicate
    assert t.retracted == 0 and not t.implausible
    rep = t.report()["h"]["frame"]
    assert (rep["before_join"], rep["duplicates"]) == (39, 1)

"""Sans-IO sequence accounting: how many batches a consumer missed, per (host, run, kind).

Every batch carries ``(host, run, kind, seq)`` with ``seq`` = 1, 2, ... per run and kind, so a
jump tells a consumer exactly how many batches it did not receive. Batches from one agent
connection arrive in order on NATS; a ``seq`` at or below the last one seen is a duplicate (a
replay) and is counted as such, not delivered twice to the tally.

Batches that were published before the consumer subscribed are not "missed" by it; they are
counted apart as ``before_join`` so a reader can tell the two.

A hole shows only once a later batch of the same (host, run, kind) arrives. The batches a
consumer lost *after* the last one it got (it was cut off, or the agent stopped right after)
are found through the agents' ``status`` batches, which say how many batches of each kind the
run has published (``announce``): :meth:`SequenceTracker.unreceived` counts those announced
and never received -- at the end of a consumer's run, the tail the holes cannot show.

A ``seq`` is a number any publisher can write, so the tracker does not believe one that cannot
be true: a jump of more than ``max_jump`` batches past the last one (``seq = 2**62``) is
*implausible*. It is rejected (``observe`` returns :data:`REJECTED`) and counted per (host, kind)
in :attr:`SequenceTracker.implausible`; it moves neither ``missed`` nor the position, so the
run's next batches are neither missed nor taken for duplicates. Only when ``rebase_after``
implausible batches in a row follow one another (a consumer that really was away for that
long) does the tracker move to them (counted in ``rebased``, not as missed). A run whose
*first* batch was the implausible one is rebased by the first batch far below it. A status
that announces more than ``max_jump`` batches beyond what was received is ignored and counted.

A jump within ``max_jump`` is believed at first, and the run's status checks it: a status
announcing ``published = N`` below the position a jump (or a run's first batch) put the tracker
at, while no batch has followed that one in order, contradicts it. The next batch of the run
whose seq is below that position but within what the status announced is then not taken for a
duplicate: the position was the lie. It is *retracted* (counted in :attr:`implausible` and
:attr:`SequenceTracker.retracted`), the holes it made are taken back out of ``missed``, and the
tracker goes on from the real batch -- the run's later batches are neither missed nor dropped.
A status that is merely old (replayed out of order with another stream) changes nothing: the
next batch in order confirms the position.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

REJECTED = -2
"""What :meth:`SequenceTracker.observe` returns for an implausible ``seq`` (-1: a duplicate)."""


@dataclass(slots=True)
class RunState:
    first_seq: int
    last_seq: int
    received: int = 1
    missed: int = 0
    duplicates: int = 0
    alt_last: int = 0
    alt_count: int = 0
    jump_from: int = 0
    """Position before the last jump (0: the jump was the run's first batch)."""
    jump_gap: int = 0
    """Batches the last jump counted as missed."""
    unconfirmed: bool = True
    """No batch has followed the last jump (or the first batch) in order yet."""
    contradicted: int = 0
    """A status announced this many batches, fewer than the unconfirmed position (0: none)."""
    tally: Tally | None = None
    """The run's (host, kind) totals (kept here: observe reads them for every batch)."""


@dataclass(slots=True)
class Tally:
    """Totals for one (host, kind) over all runs seen."""

    received: int = 0
    missed: int = 0
    duplicates: int = 0
    before_join: int = 0
    runs: int = 0


class SequenceTracker:
    """Tracks ``seq`` per (host, run, kind); bounded, with evictions counted.

    ``observe`` returns the number of batches missed immediately before the observed one
    (0 for an in-order batch, -1 for a duplicate that should not be processed again,
    :data:`REJECTED` for an implausible ``seq``).
    """

    def __init__(self, max_runs: int = 100_000, *, max_jump: int = 1 << 20,
                 rebase_after: int = 3) -> None:
        self.max_jump = max_jump
        self.rebase_after = rebase_after
        self.implausible: Counter[tuple[str, str]] = Counter()
        """(host, kind) -> batches (and announcements) rejected as implausible."""
        self.rebased = 0
        self.retracted = 0
        """Positions a run's status proved false (see the module docstring)."""
        self._runs: OrderedDict[tuple[str, str, str], RunState] = OrderedDict()
        self._announced: dict[tuple[str, str, str], int] = {}
        self._tally: dict[tuple[str, str], Tally] = {}
        self.max_runs = max_runs
        self.evicted = 0

    def observe(self, host: str, run: str, kind: str, seq: int) -> int:
        # Hot path (every batch a consumer takes): one lookup for a run already seen.
        key = (host, run, kind)
        runs = self._runs
        state = runs.get(key)
        if state is None:
            tally = self._tally_of(host, kind)
            runs[key] = RunState(first_seq=seq, last_seq=seq, tally=tally)
            if len(runs) > self.max_runs:
                gone, _ = runs.popitem(last=False)
                self._announced.pop(gone, None)
                self.evicted += 1
            tally.runs += 1
            tally.received += 1
            tally.before_join += seq - 1
            return 0
        runs.move_to_end(key)
        tally = state.tally
        last = state.last_seq
        if seq > last + self.max_jump or seq < last - self.max_jump:
            return self._implausible(state, tally, host, kind, seq)
        state.alt_count = 0
        if seq <= last:
            if state.contradicted and state.jump_from < seq <= state.contradicted:
                return self._retract(state, tally, host, kind, seq)
            state.duplicates += 1
            tally.duplicates += 1
            return -1
        gap = seq - last - 1
        if gap:
            state.jump_from, state.jump_gap, state.unconfirmed = last, gap, True
            state.missed += gap
            tally.missed += gap
        else:
            state.unconfirmed = False
        state.contradicted = 0
        state.last_seq = seq
        state.received += 1
        tally.received += 1
        return gap

    def _tally_of(self, host: str, kind: str) -> Tally:
        tally = self._tally.get((host, kind))
        if tally is None:
            tally = self._tally[(host, kind)] = Tally()
        return tally

    def _retract(self, state: RunState, tally: Tally, host: str, kind: str, seq: int) -> int:
        """The run's status said fewer batches exist than the position: the batch that put the
        tracker there was not the run's. Undo its holes and go on from ``seq``, a real one."""
        self.implausible[(host, kind)] += 1
        self.retracted += 1
        state.missed -= state.jump_gap
        tally.missed -= state.jump_gap
        if state.jump_from == 0:  # the lie was the run's first batch: it set before_join
            tally.before_join -= state.last_seq - 1
            tally.before_join += seq - 1
            state.first_seq = seq
            gap = 0
        else:
            gap = seq - state.jump_from - 1
        state.missed += gap
        tally.missed += gap
        state.last_seq = seq
        state.jump_gap = 0
        state.unconfirmed = False
        state.contradicted = 0
        return gap

    def _implausible(self, state: RunState, tally: Tally, host: str, kind: str, seq: int) -> int:
        if seq < state.last_seq and state.received == 1 and state.first_seq == state.last_seq:
            # The run's only batch so far was the implausible one: start again from this one.
            self.implausible[(host, kind)] += 1
            tally.before_join += (seq - 1) - (state.first_seq - 1)
            state.first_seq = state.last_seq = seq
            self.rebased += 1
            return 0
        if state.alt_count and 0 < seq - state.alt_last <= self.max_jump:
            state.alt_count += 1
        else:
            state.alt_count = 1
        state.alt_last = seq
        if state.alt_count >= self.rebase_after:
            # Batches that follow one another so far from the last position: the consumer was
            # away that long. Move there (the batches in between are not counted as missed).
            state.last_seq = seq
            state.alt_count = 0
            state.unconfirmed = False
            state.received += 1
            tally.received += 1
            self.rebased += 1
            return 0
        self.implausible[(host, kind)] += 1
        return REJECTED

    def last_seq(self, host: str, run: str, kind: str) -> int | None:
        state = self._runs.get((host, run, kind))
        return None if state is None else state.last_seq

    def seed(self, host: str, run: str, kind: str, last_seq: int) -> None:
        """Start from a known position: batches up to ``last_seq`` of this run were already
        handled (a consumer resuming from its own checkpoint); they count as duplicates if they
        come again, and the next one is expected to be ``last_seq + 1``."""
        key = (host, run, kind)
        if key in self._runs:
            state = self._runs[key]
            state.last_seq = max(state.last_seq, last_seq)
            return
        tally = self._tally_of(host, kind)
        self._runs[key] = RunState(first_seq=last_seq, last_seq=last_seq, received=0,
                                   unconfirmed=False, tally=tally)
        tally.runs += 1

    def announce(self, host: str, run: str, kind: str, published: int) -> None:
        """The run says it has published ``published`` batches of ``kind`` (its status).

        Only runs this tracker has received a batch of that kind from are followed (what a run
        published before the consumer joined is not the consumer's loss)."""
        key = (host, run, kind)
        state = self._runs.get(key)
        if state is None:
            return
        if state.unconfirmed and published < state.last_seq:
            state.contradicted = published  # checked by the run's next batch (_retract)
        if published <= self._announced.get(key, 0):
            return
        if published > state.last_seq + self.max_jump:
            self.implausible[(host, kind)] += 1
            return
        self._announced[key] = published

    def unreceived(self, host: str | None = None, kind: str | None = None) -> int:
        """Batches announced by their run's status but neither received nor counted missed:
        still on the way while the run lives, lost for good once the consumer has drained."""
        # Every run announced is read (a subscription's lag() asks every second): the
        # filter is applied only when asked for.
        announced: Iterable[tuple[tuple[str, str, str], int]] = self._announced.items()
        if host is not None or kind is not None:
            announced = [(key, n) for key, n in announced
                         if (host is None or key[0] == host) and (kind is None or key[2] == kind)]
        total = 0
        runs = self._runs
        for key, n in announced:
            state = runs.get(key)
            if state is not None and n > state.last_seq:
                total += n - state.last_seq
        return total

    def missed(self, host: str | None = None, kind: str | None = None) -> int:
        return sum(t.missed for (h, k), t in self._tally.items()
                   if (host is None or h == host) and (kind is None or k == kind))

    def report(self) -> dict[str, dict[str, dict[str, int]]]:
        """``{host: {kind: {received, missed, duplicates, before_join, runs}}}``."""
        out: dict[str, dict[str, dict[str, int]]] = {}
        for (host, kind), t in sorted(self._tally.items()):
            out.setdefault(host, {})[kind] = {
                "received": t.received, "missed": t.missed, "duplicates": t.duplicates,
                "before_join": t.before_join, "runs": t.runs}
            if self.implausible.get((host, kind)):
                out[host][kind]["implausible"] = self.implausible[(host, kind)]
        return out

"""Hold a capture ring's frame batches until the gap records they announce have arrived.

Sans-IO: no clock, no loop; the caller stamps what it holds and says what time it is.

An agent batches a ring's gap records apart from its frames (another batcher, another stream on
the bus), so the frames captured after a gap can arrive before the record of it. A frame batch
says how many gap records its ring had made when the batch was made (``gaps_before.records``,
see :func:`gaps_owed`); a reader that must know a ring's gaps before its frames -- the archive
puts a gap's count on the frame after it, the correlator judges a missing frame by the
receiver's gaps -- holds the batch until that many records of the ring have arrived.

The rule, one place for every reader:

* A ring's batches leave in the order they were held: one still waiting holds back the later
  ones of its ring, whatever they owe.
* The wait is bounded: a batch held ``max_wait`` (in the caller's unit, measured from the stamp
  it was held with) leaves *expired*, with the number of records that never came; the ring then
  counts those as seen, so the batches after it that owe no more leave at once.
* ``max_held`` (optional) bounds what is held in all; past it the oldest leaves expired.
* A batch that says nothing (an older agent) owes no record by default; with
  ``unannounced_waits`` it waits out the whole bound instead.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from collections.abc import Hashable, Mapping
from typing import Any, NamedTuple


def gaps_owed(fields: Mapping[str, Any]) -> int | None:
    """The gap records a frame batch's ring had made before it (batch field
    ``gaps_before.records``), or None when the batch does not say."""
    gb = fields.get("gaps_before")
    owed = gb.get("records") if isinstance(gb, dict) else None
    return owed if type(owed) is int else None


class Released(NamedTuple):
    """What left the hold: its ring, the caller's item and why it left."""

    ring: Hashable
    item: Any
    expired: bool
    """It waited out the bound (or was pushed out by ``max_held``) rather than its records."""
    missing: int
    """For an expired batch: records it owed that had not arrived (0 if it owed none it knew)."""


class RingOrderHold:
    """Frame batches per ring, waiting for the gap records they announce.

    Args:
        max_wait: how long a batch waits at most, in the unit of the stamps and ``now``.
        max_held: batches held at most over all rings (None: no bound but ``max_wait``).
        unannounced_waits: a batch without ``gaps_before`` waits the whole bound (True) or owes
            nothing (False).
    """

    def __init__(self, max_wait: float, *, max_held: int | None = None,
                 unannounced_waits: bool = False) -> None:
        self.max_wait = max_wait
        self.max_held = max_held
        self._unannounced = None if unannounced_waits else 0
        self._seen: dict[Hashable, int] = {}
        self._queues: dict[Hashable, deque[tuple[int, Any, int | None, Any]]] = {}
        self._order: OrderedDict[int, Hashable] = OrderedDict()
        """Arrival number -> ring of every held batch, oldest first."""
        self._dirty: set[Hashable] = set()
        """Rings that got a batch or a record since the last release."""
        self._numbers = itertools.count()

    def __len__(self) -> int:
        return len(self._order)

    def hold(self, ring: Hashable, owed: int | None, stamp: Any, item: Any) -> None:
        """Hold ``item``, a batch of ``ring`` that owes ``owed`` gap records (None: it does not
        say), stamped ``stamp``. It leaves through :meth:`release`."""
        if type(owed) is not int:
            owed = self._unannounced
        n = next(self._numbers)
        q = self._queues.get(ring)
        if q is None:
            q = self._queues[ring] = deque()
        q.append((n, stamp, owed, item))
        self._order[n] = ring
        self._dirty.add(ring)

    def gap(self, ring: Hashable, records: int = 1) -> None:
        """``records`` gap records of ``ring`` arrived."""
        self._seen[ring] = self._seen.get(ring, 0) + records
        if ring in self._queues:
            self._dirty.add(ring)

    def seen(self, ring: Hashable) -> int:
        """Gap records of ``ring`` counted so far (those given up on included)."""
        return self._seen.get(ring, 0)

    def passes(self, ring: Hashable, owed: int | None) -> bool:
        """Would a batch of ``ring`` owing ``owed`` records leave at once (nothing of the ring
        held, its records in)? Then a caller may take it without holding it."""
        if type(owed) is not int:
            owed = self._unannounced
        return owed is not None and ring not in self._queues and owed <= self._seen.get(ring, 0)

    def waiting(self, ring: Hashable) -> bool:
        """Does ``ring`` have a batch held?"""
        return ring in self._queues

    def deadline(self) -> Any:
        """When the first held batch expires (its stamp + ``max_wait``), or None."""
        if not self._queues:
            return None
        return min(q[0][1] for q in self._queues.values()) + self.max_wait

    def release(self, now: Any = None) -> list[Released]:
        """What may leave, in the order it was held: batches whose records have arrived and,
        when ``now`` is given, those that waited ``max_wait``; past ``max_held``, the oldest."""
        out: list[tuple[int, Released]] = []
        while self.max_held is not None and len(self._order) > self.max_held:
            ring = next(iter(self._order.values()))
            self._leave(ring, out, force=True)
        rings = self._queues.keys() if now is not None else self._dirty
        for ring in list(rings):
            if ring in self._queues:
                self._leave(ring, out, now=now)
        self._dirty.clear()
        out.sort(key=lambda x: x[0])
        return [r for _n, r in out]

    def drain(self) -> list[Released]:
        """Everything held, in the order it was held (the reader stops)."""
        out = []
        for ring in self._order.values():  # each ring's queue is in the same order
            _n, _stamp, owed, item = self._queues[ring].popleft()
            out.append(Released(ring, item, True, max(0, (owed or 0) - self._seen.get(ring, 0))))
        self._queues.clear()
        self._order.clear()
        self._dirty.clear()
        return out

    def forget(self, ring: Hashable) -> int:
        """Drop ``ring`` (the caller stops following it); returns the batches dropped."""
        self._seen.pop(ring, None)
        self._dirty.discard(ring)
        q = self._queues.pop(ring, ())
        for n, *_ in q:
            del self._order[n]
        return len(q)

    def _leave(self, ring: Hashable, out: list, *, now: Any = None, force: bool = False) -> None:
        """Move ``ring``'s batches that may leave to ``out``, in order; ``force``: the first
        leaves whatever it owes."""
        q = self._queues[ring]
        seen = self._seen.get(ring, 0)
        while q:
            n, stamp, owed, item = q[0]
            if owed is not None and owed <= seen:
                out.append((n, Released(ring, item, False, 0)))
            elif force or (now is not None and now - stamp >= self.max_wait):
                force = False
                missing = 0 if owed is None else owed - seen
                if owed is not None:
                    seen = owed  # given up: the ring goes on from here
                out.append((n, Released(ring, item, True, missing)))
            else:
                break
            q.popleft()
            del self._order[n]
        self._seen[ring] = seen
        if not q:
            del self._queues[ring]

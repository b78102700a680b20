"""How far each host's capture is known, and where it was blind.

A frame missing at the receiver is *lost* only if the receiver's capture saw that time: its
frames were published past it and no capture gap covers it. Gap records travel in their own
batches and can arrive after the frames that follow them, so a ring's frame batch moves the
ring's progress only once the gap records it announces (``gaps_before``) are in -- the rule of
:class:`~netevents.consumers.ringorder.RingOrderHold`, bounded by ``max_wait`` of stream time.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, defaultdict, deque

from ...codec import Batch
from ...events import ring_key
from ..ringorder import Released, RingOrderHold, gaps_owed


class CaptureCoverage:
    """Per host: capture gaps (bounded, the newest kept) and the time up to which its frames and
    gaps are known (``frame_progress``).

    Args:
        max_wait_ns: stream time a frame batch waits for the gap records it announces; then
            the time it covers becomes a hole (counted in ``gap_records_never_seen``).
        gap_slack_ns: how much a gap's edges are widened (see :meth:`blind_at`).
    """

    MAX_RINGS_PER_HOST = 64
    """Capture rings (run, iface, worker) followed per host; the oldest is evicted past it."""

    def __init__(self, *, max_wait_ns: int, gap_slack_ns: int, counts: Counter[str],
                 evicted: Counter[str]) -> None:
        self.gap_slack_ns = gap_slack_ns
        self.counts = counts
        self.evicted = evicted
        self.capture_gaps: dict[str, deque[tuple[int, int | None, str]]] = defaultdict(
            lambda: deque(maxlen=1024))
        """Per host: (start, end or None, iface or why) of the times its capture was blind."""
        self.frame_progress: dict[str, int] = {}
        """Per host: the time up to which its captured frames and its capture gaps are known
        (the newest ring's progress, held back by any ring still waiting for gap records)."""
        self.ring_progress: dict[str, OrderedDict[tuple, int]] = {}
        """Per host, per capture ring (host, run, iface, worker): the end of its latest frame
        batch that is not waiting for gap records."""
        self.hold = RingOrderHold(max_wait_ns)
        """Frame batches (host, t0, t1) that wait for the gap records they announce; stamped
        with their end time and expired against the stream's clock."""

    def known_until(self, host: str) -> int:
        return self.frame_progress.get(host, 0)

    def blind_at(self, host: str, ts: int) -> bool:
        """Was ``host``'s capture blind at ``ts`` (expected arrival time)?

        A gap record sits at a ring block boundary, and two counted races can move it by a
        block (netevents/agent/capture/gaps.py), so its edges are widened by ``gap_slack``.
        """
        slack = self.gap_slack_ns
        for start, end, _iface in self.capture_gaps.get(host, ()):
            if start - slack <= ts and (end is None or ts <= end + slack):
                return True
        return False

    def gaps(self, batch: Batch) -> None:
        """A ``gap`` batch: its records are holes, and the frame batches waiting for them go."""
        host = batch.host
        for e in batch.events:
            after, before = e.get("after_ts"), e.get("before_ts")
            start = after if after is not None else batch.t0
            self.capture_gaps[host].append((int(start), before, str(e.get("iface"))))
            ring = ring_key(host, batch.run, e.get("iface"), e.get("worker"))
            self._follow(host, ring)
            self.hold.gap(ring)
        self._progress(self.hold.release())
        if batch.events:
            self._host_progress(host)

    def frames(self, batch: Batch) -> None:
        """A ``frame`` batch moves its ring's progress once its gap records are in."""
        host = batch.host
        if batch.missed:  # frame batches of this host we never saw: their time is a hole
            prev = self.frame_progress.get(host, batch.t0)
            self.capture_gaps[host].append((prev, batch.t0, "missed-batches"))
        fields = batch.fields
        ring = ring_key(host, batch.run, fields.get("iface"), fields.get("worker"))
        rings = self.ring_progress.get(host)
        if rings is None or ring not in rings:
            self._follow(host, ring)
            rings = self.ring_progress[host]
        # an agent without gaps_before (older) is taken at its word: it owes nothing
        owed = gaps_owed(fields)
        hold = self.hold
        if hold.passes(ring, owed):  # the hot path: it would leave the hold at once
            if batch.t1 > rings[ring]:
                rings[ring] = batch.t1
        else:
            hold.hold(ring, owed, batch.t1, (host, batch.t0, batch.t1))
            self._progress(hold.release())
            if hold.waiting(ring):
                self.counts["frame_batches_held_for_gaps"] += 1
        self._host_progress(host)

    def expire(self, now: int) -> None:
        """Give up on gap records frame batches waited ``max_wait`` for (stream time ``now``)."""
        for host in self._progress(self.hold.release(now)):
            self._host_progress(host)

    def _follow(self, host: str, ring: tuple) -> None:
        rings = self.ring_progress.get(host)
        if rings is None:
            rings = self.ring_progress[host] = OrderedDict()
        if ring not in rings:
            if len(rings) >= self.MAX_RINGS_PER_HOST:
                self.hold.forget(rings.popitem(last=False)[0])
                self.evicted["capture_rings"] += 1
            rings[ring] = 0

    def _progress(self, released: list[Released]) -> set[str]:
        """Frame batches out of the hold move their ring's progress. One that waited
        ``max_wait`` for gap records that never came (a gap batch lost on the way, or dropped
        on the agent): the time it covers becomes a hole of the receiver's capture -- its
        frames missing there are unknown. Returns the hosts whose rings moved."""
        hosts = set()
        for r in released:
            host, t0, t1 = r.item
            rings = self.ring_progress[host]
            if r.expired:
                self.counts["gap_records_never_seen"] += r.missing
                self.capture_gaps[host].append((rings[r.ring] or t0, t1, "gap-records-missing"))
            rings[r.ring] = max(rings[r.ring], t1)
            hosts.add(host)
        return hosts

    def _host_progress(self, host: str) -> None:
        rings = self.ring_progress.get(host, {})
        if not self.hold:  # nothing held (nearly always): no ring holds the host back
            # (a ring's progress starts at 0 and never goes down: the loop's ``best``)
            self.frame_progress[host] = max(rings.values(), default=0)
            return
        best, cap = 0, None
        waiting = self.hold.waiting
        for ring, progress in rings.items():
            if progress > best:
                best = progress
            if waiting(ring):
                cap = progress if cap is None else min(cap, progress)
        self.frame_progress[host] = best if cap is None else min(best, cap)

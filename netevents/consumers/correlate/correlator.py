"""The Correlator: one sans-IO object composing the pieces of :mod:`netevents.consumers.correlate`.

It routes each batch to the pieces that read it, keeps the stream's clock, and counts the
incidents the pieces make; the pieces hold the state.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Collection
from typing import Any

from ...codec import Batch, is_columns
from ...events import IncidentEvent
from .coverage import CaptureCoverage
from .directory import HostDirectory
from .ledger import DropLedger
from .partition import Partition
from .paths import PairStats, PathLoss
from .peers import PeerViews
from .storms import StormTracker

NS = 1_000_000_000


class Correlator:
    """Sans-IO cross-host correlation.

    Args:
        window: seconds a drop storm's evidence stays together; also the quiet time that
            closes a peer episode.
        storm_hosts: hosts on which the same (reason, location) must rise to make a storm.
        grace: seconds a departed frame waits for its arrival before it is judged -- and the
            receiver's capture must have published frames that much later than it (or the
            frame waits up to max(10 s, 5 x grace); a receiver that never got past it makes the
            frame unknown).
        max_frames: frames waiting for their match (departures and arrivals each); the oldest
            is evicted past that and counted in ``evicted["frames"]`` -- it is never judged.
        max_keys: storms, pairs, hosts, drop records kept; evictions counted by place.
        report_interval: seconds between two path_loss incidents of one pair, and between two
            publications of an open peer episode.
        peer_min_retrans: retransmits toward a peer in one ipstat window that open a peer
            episode (timeouts and resets open one too).
        gap_slack: seconds a capture gap's edges are widened by (block placement uncertainty):
            a missing frame that close to a gap is unknown, not lost.
        partition: ``(k, n)``: this instance is member ``k`` of ``n`` correlators that each see
            the whole stream and share the work by key (see :func:`partition_of`): path loss
            by the pair of addresses (both directions of a path stay together), drop storms by
            (reason, location), peer incidents by (host, peer). Every member keeps what it
            needs to explain its own incidents (addresses, capture progress and gaps, recent
            drops, the peer views). ``(0, 1)``: one correlator does everything.
        namespaces: the namespaces besides the fleet's hosts whose drops a kernel-wide source
            may name (routers, bridges on the path); drops in any other namespace of a host's
            machine are set aside and counted (``directory.foreign``). None: all of them.

    Raises:
        ConfigError: for a partition that is not ``0 <= k < n``.
    """


    def __init__(self, *, window: float = 10.0, storm_hosts: int = 2, grace: float = 3.0,
                 max_frames: int = 200_000, max_keys: int = 10_000, report_interval: float = 5.0,
                 peer_min_retrans: int = 1, gap_slack: float = 0.2,
                 partition: tuple[int, int] = (0, 1),
                 namespaces: Collection[str] | None = None) -> None:
        self.partition = Partition(*partition)
        window_ns, report_ns = int(window * NS), int(report_interval * NS)
        grace_ns, max_wait_ns = int(grace * NS), int(max(10.0, 5 * grace) * NS)
        self.evicted: Counter[str] = Counter()
        """What each piece evicted past its bound, by place."""
        self.counts: Counter[str] = Counter()
        """Batches fed by kind, incidents made by type, and what the pieces count."""
        self.stream_time = 0
        """The latest batch end time fed (ns): the correlator's clock (see :meth:`tick`)."""
        self.incidents: deque[IncidentEvent] = deque(maxlen=1000)
        """The latest incidents made (for views)."""
        self.directory = HostDirectory(max_keys=max_keys, evicted=self.evicted,
                                       namespaces=namespaces)
        self.drops = DropLedger(self.directory, max_keys=max_keys, max_packets=max_frames,
                                evicted=self.evicted)
        self.coverage = CaptureCoverage(max_wait_ns=max_wait_ns, gap_slack_ns=int(gap_slack * NS),
                                        counts=self.counts, evicted=self.evicted)
        self.storms = StormTracker(self.directory, self.partition, window_ns=window_ns,
                                   storm_hosts=storm_hosts, report_ns=report_ns,
                                   max_keys=max_keys, evicted=self.evicted)
        self.paths = PathLoss(self.directory, self.drops, self.coverage, self.partition,
                              grace_ns=grace_ns, max_wait_ns=max_wait_ns, max_frames=max_frames,
                              max_keys=max_keys, report_ns=report_ns, counts=self.counts,
                              evicted=self.evicted)
        self.peers = PeerViews(self.directory, self.drops, self.partition, window_ns=window_ns,
                               min_retrans=peer_min_retrans, max_keys=max_keys,
                               evicted=self.evicted, report_ns=report_ns,
                               max_wait_ns=max_wait_ns, counts=self.counts)

    @property
    def pairs(self) -> dict[tuple[str, str], PairStats]:
        """Per (sender, receiver): the path verdicts so far."""
        return self.paths.pairs

    @property
    def missed(self) -> Counter[tuple[str, str]]:
        """Batches missed per (host, kind), from the subscription's sequence tracker."""
        return self.directory.missed

    def attribute(self, batch: Batch, event: dict) -> tuple[str | None, str]:
        """(entity, how) a drop event belongs to: a host token, ``machine:<boot>``,
        ``netns:<name>``, or None outside ``namespaces``."""
        return self.directory.attribute(batch, event)

    def feed(self, batch: Batch) -> list[IncidentEvent]:
        """Take one batch; returns the incidents it completes (most come from :meth:`tick`)."""
        kind = batch.kind
        self.counts[kind] += 1
        if batch.t1 > self.stream_time:
            self.stream_time = batch.t1
        self.directory.see(batch)
        if kind == "frame":
            if is_columns(batch.events):  # anything else is not read
                self.coverage.frames(batch)
                self.paths.frames(batch)
        elif kind == "drop":
            out = []
            peer_drop, observe, host = self.peers.drop, self.storms.observe, batch.host
            for drop, flow in self.drops.record_batch(batch):
                if flow is not None:
                    peer_drop(drop, flow)
                inc = observe(drop, host)
                if inc is not None:
                    out.append(self._made(inc))
            return out
        elif kind == "ipstat":
            return [self._made(inc) for inc in self.peers.feed(batch)]
        elif kind == "gap":
            self.coverage.gaps(batch)
        return []

    def tick(self, now: int, *, flush: bool = False) -> list[IncidentEvent]:
        """Judge departures older than ``grace``; emit path_loss incidents and storm updates.
        ``now``: the caller's wall clock in ns (the core reads no clock).

        Frames are judged against the stream's clock, ``min(now, stream_time)``: a consumer
        that runs behind must not call a frame lost whose arrival is still in its backlog.
        ``flush`` (at shutdown) judges against ``now`` alone.
        """
        if not flush:
            now = min(now, self.stream_time)
        self.coverage.expire(now)
        self.paths.judge(now, flush=flush)
        return [self._made(inc) for inc in self.storms.due(now) + self.paths.report(now)
                + self.peers.due(now, flush=flush)]

    def _made(self, inc: IncidentEvent) -> IncidentEvent:
        self.counts[f"incident.{inc.type}"] += 1
        self.incidents.append(inc)
        return inc

    def path_table(self) -> list[dict[str, Any]]:
        """Per pair: delivered, lost, unknown, p50/p99 delay (for views and metrics)."""
        return self.paths.table()

    def drop_table(self) -> list[dict[str, Any]]:
        """Drops per (entity, reason, location) with how they were attributed, largest first."""
        return self.drops.table()

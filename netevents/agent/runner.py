"""The agent runner: collectors in a TaskGroup, batching, bounded queues, status heartbeat.

Each kind has one bounded queue and one batcher task. A batch is published when it holds
``max_events`` events or when its first event has waited ``max_wait`` (250 ms), whichever comes
first. Every place the runner can lose something is counted and reported in ``status``:

    queue.<kind>     events refused because the kind's queue was full
    publish.<kind>   events in batches the bus would not take
    <source>.<place> what collectors report through ``Sink.lost``

Shutdown drains: collectors are cancelled, queued events are batched and published, and a
final ``status`` (``final: true``) closes the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from netevents import __version__
from netevents import events as ev
from netevents.codec import Batch
from netevents.errors import BusError, CapabilityError, OversizeError, SchemaError

from .base import Collector

log = logging.getLogger("netevents.agent")

_STOP = object()


class Publisher(Protocol):
    async def publish(self, batch: Batch) -> None: ...

    async def flush(self) -> None: ...


@dataclass(slots=True)
class RunnerOptions:
    site: str = "local"
    host: str = "localhost"
    max_events: int = 1000
    max_wait: float = 0.25
    queue_size: int = 10_000
    status_interval: float = 5.0


def boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


class AgentRunner:
    """Runs collectors and publishes what they emit. Implements :class:`netevents.agent.base.Sink`."""

    def __init__(self, publisher: Publisher, collectors: list[Collector],
                 options: RunnerOptions | None = None) -> None:
        self.publisher = publisher
        self.collectors = list(collectors)
        self.opt = options or RunnerOptions()
        self.run_id = secrets.token_hex(8)
        self.boot = boot_id()
        self.started = time.monotonic()
        self.seq: Counter[str] = Counter()
        self.published: Counter[str] = Counter()
        self.published_events: Counter[str] = Counter()
        self.losses: Counter[str] = Counter()
        self.sources: dict[str, dict[str, str]] = {}
        self._queues: dict[str, asyncio.Queue] = {}
        self._batchers: dict[str, asyncio.Task] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._publish_lock = asyncio.Lock()
        self._warned: set[str] = set()
        self.own_addresses: dict[str, list[str]] | None = None
        """Namespace -> this host's addresses there (see netevents.agent.addresses)."""
        self.own_netns: dict[str, int] | None = None
        self._status_now: asyncio.Event | None = None

    # -- Sink ----------------------------------------------------------------------------------
    def _queue(self, kind: str) -> asyncio.Queue:
        q = self._queues.get(kind)
        if q is None:
            if kind not in ev.RECORDS:
                raise ValueError(f"unknown kind {kind!r}")
            q = self._queues[kind] = asyncio.Queue(maxsize=self.opt.queue_size)
            self.losses.setdefault(f"queue.{kind}", 0)
            self.losses.setdefault(f"publish.{kind}", 0)
            assert self._tg is not None, "emit() before the runner started"
            self._batchers[kind] = self._tg.create_task(self._batcher(kind, q))
        return q

    def emit(self, kind: str, event: Any, *, t0: int | None = None, t1: int | None = None) -> bool:
        try:
            self._queue(kind).put_nowait((False, event, t0, t1, None))
            return True
        except asyncio.QueueFull:
            self.losses[f"queue.{kind}"] += 1
            return False

    def emit_batch(self, kind: str, events: Any, *, t0: int | None = None, t1: int | None = None,
                   **fields: Any) -> bool:
        try:
            self._queue(kind).put_nowait((True, events, t0, t1, fields))
            return True
        except asyncio.QueueFull:
            n = len(next(iter(events.values()), ())) if isinstance(events, Mapping) else len(events)
            self.losses[f"queue.{kind}"] += n
            return False

    def lost(self, place: str, count: int) -> None:
        if count:
            self.losses[place] += count

    def declare_loss(self, place: str) -> None:
        self.losses.setdefault(place, 0)

    def state(self, source: str, state: str, reason: str = "") -> None:
        # A reason may quote what the kernel named (a path, an interface) as os.fsdecode made
        # it: a byte that is not UTF-8 is kept as its escape, so the status can be encoded.
        reason = reason.encode("utf-8", "backslashreplace").decode() if reason else ""
        self.sources[source] = {"state": state, "reason": reason} if reason else {"state": state}

    def addresses(self, table: dict[str, list[str]], inodes: dict[str, int]) -> None:
        """The host's own addresses per namespace changed: a status goes out now with them."""
        self.own_addresses, self.own_netns = dict(table), dict(inodes)
        if self._status_now is not None:
            self._status_now.set()

    # -- batching and publishing ---------------------------------------------------------------
    async def _batcher(self, kind: str, q: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await q.get()
            if item is _STOP:
                return
            rows: list[Any] = []
            window = [None, None]
            deadline = loop.time() + self.opt.max_wait
            stop = False
            while True:
                is_batch, payload, t0, t1, fields = item
                if is_batch:
                    await self._flush_rows(kind, rows, window)
                    rows, window = [], [None, None]
                    await self._publish(kind, payload, t0, t1, fields)
                else:
                    rows.append(payload)
                    if t0 is not None and (window[0] is None or t0 < window[0]):
                        window[0] = t0
                    if t1 is not None and (window[1] is None or t1 > window[1]):
                        window[1] = t1
                if len(rows) >= self.opt.max_events:
                    break
                try:
                    item = q.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        async with asyncio.timeout(remaining):
                            item = await q.get()
                    except TimeoutError:
                        break
                if item is _STOP:
                    stop = True
                    break
            await self._flush_rows(kind, rows, window)
            if stop:
                return

    async def _flush_rows(self, kind: str, rows: list[Any], window: list) -> None:
        if rows:
            await self._publish(kind, rows, window[0], window[1], None)

    def _make_batch(self, kind: str, events: Any, t0: int | None, t1: int | None,
                    fields: dict | None) -> Batch:
        now = time.time_ns()
        self.seq[kind] += 1
        extra = {"agent": __version__}
        if self.boot:
            extra["boot"] = self.boot
        if fields:
            extra.update(fields)
        t1 = t1 if t1 is not None else now
        t0 = t0 if t0 is not None else t1
        return Batch(kind=kind, site=self.opt.site, host=self.opt.host, run=self.run_id,
                     seq=self.seq[kind], t0=min(t0, t1), t1=t1, events=events, fields=extra)

    async def _publish(self, kind: str, events: Any, t0, t1, fields) -> None:
        batch = self._make_batch(kind, events, t0, t1, fields)
        n = len(batch)
        try:
            async with self._publish_lock:
                await self.publisher.publish(batch)
        except (OversizeError, SchemaError) as exc:
            if n > 1:
                # Give the sequence number back and publish two halves instead: a batch too
                # large, or the event that cannot be encoded, ends up alone.
                self.seq[kind] -= 1
                for part in _halves(events, t0, t1, fields):
                    await self._publish(kind, *part)
                return
            why = str(exc) if isinstance(exc, SchemaError) else "batch too large even alone"
            self._count_publish_loss(kind, n, why)
            return
        except BusError as exc:
            self._count_publish_loss(kind, n, str(exc))
            return
        self.published[kind] += 1
        self.published_events[kind] += n

    def _count_publish_loss(self, kind: str, n: int, why: str) -> None:
        self.losses[f"publish.{kind}"] += n
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning("lost %d %s events: %s (counted in status lost.publish.%s)", n, kind, why, kind)

    # -- status --------------------------------------------------------------------------------
    def status_event(self, final: bool = False) -> ev.StatusEvent:
        lost = dict(self.losses)
        queues = {k: {"size": q.qsize(), "capacity": q.maxsize} for k, q in self._queues.items()}
        # A publisher that spools (netevents.agent.spool.ReliablePublisher) accounts for its own losses.
        if hasattr(self.publisher, "losses"):
            lost.update(self.publisher.losses())
            queues.update(self.publisher.queues())
        return ev.StatusEvent(
            version=__version__,
            uptime=round(time.monotonic() - self.started, 3),
            sources=dict(self.sources),
            published=dict(self.published),
            events=dict(self.published_events),
            lost=lost,
            queues=queues,
            final=final,
            addresses=self.own_addresses,
            netns=self.own_netns,
        )

    async def _publish_status(self, final: bool = False) -> None:
        # The status batch reports the counts including its own publication.
        self.published["status"] += 1
        self.published_events["status"] += 1
        self.losses.setdefault("publish.status", 0)
        batch = self._make_batch("status", [self.status_event(final)], None, None, None)
        try:
            async with self._publish_lock:
                await self.publisher.publish(batch)
        except (BusError, SchemaError, OversizeError) as exc:
            self.published["status"] -= 1
            self.published_events["status"] -= 1
            self._count_publish_loss("status", 1, str(exc))

    async def _heartbeat(self) -> None:
        now = self._status_now = asyncio.Event()
        while True:
            now.clear()
            await self._publish_status()
            with contextlib.suppress(TimeoutError):  # the interval, or at once on news
                async with asyncio.timeout(self.opt.status_interval):
                    await now.wait()

    # -- collectors ----------------------------------------------------------------------------
    async def _supervise(self, collector: Collector) -> None:
        name = collector.name
        self.state(name, "running")
        try:
            await collector.run(self)
        except CapabilityError as exc:
            self.state(name, "unavailable", str(exc))
            log.warning("%s: unavailable: %s", name, exc)
        except asyncio.CancelledError:
            if self.sources.get(name, {}).get("state") == "running":
                self.state(name, "stopped")
            raise
        except Exception as exc:  # a broken source must not take the agent down
            self.state(name, "failed", f"{type(exc).__name__}: {exc}")
            log.exception("%s: failed; the other sources carry on", name)
        else:
            if self.sources.get(name, {}).get("state") == "running":
                self.state(name, "stopped")

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set (or forever), then drain and publish a final status."""
        stop = stop or asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            for q in ("queue.status", "publish.status"):
                self.losses.setdefault(q, 0)
            collectors = [tg.create_task(self._supervise(c), name=f"collector:{c.name}")
                          for c in self.collectors]
            heartbeat = tg.create_task(self._heartbeat(), name="heartbeat")
            await stop.wait()
            for t in (*collectors, heartbeat):
                t.cancel()
            for t in (*collectors, heartbeat):
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            # Drain: every queued event is batched and published before the final status.
            for q in self._queues.values():
                await q.put(_STOP)
            for t in list(self._batchers.values()):
                await t
            await self._publish_status(final=True)
            with contextlib.suppress(BusError):
                await self.publisher.flush()


def _halves(events: Any, t0, t1, fields: dict | None) -> list[tuple]:
    """Two halves of a batch too large for the bus, each ``(events, t0, t1, fields)``.

    Row batches split their list. Column batches (``frame``) split every column by rows; a
    half's window is the span of its ``ts`` column and its ``first_frame`` moves with its first
    row, so the halves read exactly as two batches the collector could have made."""
    if isinstance(events, list):
        half = len(events) // 2
        return [(events[:half], t0, t1, fields), (events[half:], t0, t1, fields)]
    cols = {k: list(v) for k, v in events.items()}
    n = len(next(iter(cols.values())))
    half = n // 2
    out = []
    for lo, hi in ((0, half), (half, n)):
        part = {k: v[lo:hi] for k, v in cols.items()}
        ts = [x for x in part.get("ts", ()) if isinstance(x, int)]
        f = dict(fields or {})
        if isinstance(f.get("first_frame"), int):
            f["first_frame"] += lo
        out.append((part, min(ts) if ts else t0, max(ts) if ts else t1, f))
    return out

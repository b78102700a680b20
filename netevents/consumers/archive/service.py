"""``netevents archive``: the asyncio shell -- durable JetStream subscription -> core -> files.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from ...codec import Batch
from ...events import ring_key
from ..ringorder import RingOrderHold, gaps_owed
from .core import PcapngArchive
from .files import ArchiveFiles

KINDS = ("frame", "gap", "drop")
DEFAULT_HOLD = 1.0
"""Seconds a frame batch waits for the gap records about it (they travel in another stream)."""
MAX_HELD = 512
"""Frame batches held at most; beyond, the oldest is written early (JetStream's default
max_ack_pending of 1000 per consumer bounds what can be outstanding anyway)."""
CLOSE_BOUND = 2.0
"""Seconds each closing step that waits on the server (subscription, connection) may take."""
GROUP = 64
"""Batches written per group commit (one flush and one sidecar rewrite, then their acks)."""
REORDER = 1.0
"""Seconds of capture time packets wait to be merged with other rings' into time order."""


def _sub_report(sub: Any) -> dict[str, Any]:
    return {"sequence": sub.tracker.report(), "rejected": dict(sub.rejected),
            "queue_dropped": sub.dropped}


async def run_archive(out_dir: str | os.PathLike, url: str | None, *, durable: str = "archive",
                      rotate_bytes: int | None = None, rotate_seconds: float | None = None,
                      stop: asyncio.Event | None = None, progress_every: float = 5.0,
                      hosts: list[str] | None = None, hold: float = DEFAULT_HOLD,
                      max_held: int = MAX_HELD, credentials: Any = None,
                      reorder: float = REORDER) -> dict[str, Any]:
    """Archive frame/gap/drop batches until ``stop`` is set; returns the totals.

    ``credentials`` (a :class:`~netevents.bus.Credentials`) authenticate to the bus.

    One archiver per ``durable`` name: the durable JetStream consumers (``<durable>-frame``, ...)
    remember what was acknowledged, and a batch is acknowledged only after it was written,
    flushed and checkpointed, so a restart (also after kill -9) resumes without a hole.

    Frames and gaps come through different streams, in no particular order between them: a
    frame batch is held until the gap records its ring had made before it (``gaps_before``) have
    arrived, at most ``hold`` seconds (at most ``max_held`` batches), so that their dropcount
    lands on exactly the right frame. Batches of one ring leave in their order. Held batches are
    not acknowledged yet.

    Then packets wait in a bounded reorder window (:class:`TimeOrder`: ``reorder`` seconds of
    capture time behind the newest batch, at most ``2 * reorder`` s of wall time and
    ``max_held`` batches) and the batches written together are merged by timestamp, so a file
    of several rings (the workers of a fanout group, several hosts) is in time order; a packet
    that arrives behind the window is written anyway and counted (``out_of_order``).

    Raises:
        BusError: if the bus cannot be reached.
        OSError: if the output directory cannot be written.
    """
    from ...bus import connect

    stop = stop or asyncio.Event()
    core = PcapngArchive()
    files = ArchiveFiles(out_dir, core, rotate_bytes=rotate_bytes, rotate_seconds=rotate_seconds)
    state, beyond = files.resume_state()
    if state:
        core.restore(state)
        core.advance(beyond)
    # A batch of an agent that does not say what it owes waits the whole bound.
    held = RingOrderHold(hold, max_held=max_held, unannounced_waits=True)
    order = TimeOrder(reorder, max_held=max_held)
    # Stopping is unconditional: every step that waits on the server (subscribing, closing the
    # subscription, draining the connection) runs with a bound, so --duration, SIGTERM and
    # SIGINT end the archive within a few seconds whatever the server does (a full stream,
    # nothing matching the host filters, gone): the file is sealed and only written batches
    # were acknowledged, so the durable resumes exactly there.
    conn = connect(url, name=f"netevents-archive-{durable}", streams=True, credentials=credentials)
    bus = await conn.__aenter__()
    sub = None
    try:
        # A small queue: every batch in it is delivered but not yet acknowledged; keeping it
        # short keeps them far from JetStream's ack wait (no redelivery while we work).
        sub = bus.subscribe(kinds=list(KINDS), hosts=hosts, durable=durable, queue_size=256,
                            manual_ack=True)
        for key, seq in core.written.items():
            host, run, kind = key.rsplit("|", 2)
            sub.tracker.seed(host, run, kind, seq)

        async def commit(batches: list[Batch]) -> None:
            if batches:
                await asyncio.to_thread(files.write_batches, batches, _sub_report(sub))
                for b in batches:
                    await sub.ack(b)

        files.open()
        last_progress = time.monotonic()
        try:
            if not await _unless_stopped(sub.start(), stop):
                return {**files.current(), "paths": [str(p) for p in files.files]}
            while not stop.is_set():
                now = time.monotonic()
                due = min((d for d in (held.deadline(), order.deadline()) if d is not None),
                          default=None)
                wait = 0.5 if due is None else min(0.5, max(0.0, due - now))
                batch = await sub.next(timeout=wait or 0.001)
                ready: list[Batch] = []
                while batch is not None:
                    if batch.kind == "frame":
                        f = batch.fields
                        held.hold(ring_key(batch.host, batch.run, f.get("iface"), f.get("worker")),
                                  gaps_owed(f), time.monotonic(), batch)
                    else:
                        ready.append(batch)      # gaps first: frames due now may need them
                        if batch.kind == "gap":
                            for e in batch.events:
                                held.gap(ring_key(batch.host, batch.run, e.get("iface"),
                                                  e.get("worker")))
                    if len(ready) + len(held) >= max_held + GROUP or stop.is_set():
                        break
                    batch = await sub.next(timeout=0)   # what is already here joins the group
                now = time.monotonic()
                for r in held.release(now):
                    order.add(r.item, now)
                for b in ready:
                    if b.kind == "drop":
                        order.add(b, now)
                ready = [b for b in ready if b.kind != "drop"]   # gaps: written at once
                # The packets of one release go out as one group: merged in time order.
                await commit(ready + order.release(now))
                if files.due():
                    await asyncio.to_thread(files.maybe_rotate, _sub_report(sub))
                if now - last_progress >= progress_every:
                    last_progress = now
                    _progress(files)
            # stopping: what is held is written (its gaps already arrived or never will)
            for r in held.drain():
                order.add(r.item, time.monotonic())
            await commit(order.release(None))
        finally:
            await asyncio.to_thread(lambda: files.close(final=True, sub_report=_sub_report(sub)))
            _progress(files)
    finally:
        if sub is not None:
            await _bounded(sub.close(), CLOSE_BOUND)
        await _bounded(conn.__aexit__(None, None, None), CLOSE_BOUND)
    return {**files.current(), "paths": [str(p) for p in files.files]}


class TimeOrder:
    """Packet batches waiting to be merged with other rings' into time order (sans-IO: the
    caller says what time it is, in seconds).

    A batch leaves once its last packet (``t1``) is ``window`` seconds of capture time behind
    the newest batch seen (no ring can still send packets before it, unless it lags more than
    that), after ``2 * window`` s of wall time whatever the rest does (traffic stopped, or it
    stamps oddly), or when more than ``max_held`` wait (the oldest); with it every batch that
    overlaps what leaves (see :meth:`release`). Batches of one ring (or of one host's drops)
    leave in their order.
    """

    def __init__(self, window: float, max_held: int = MAX_HELD) -> None:
        self.window_ns = int(window * 1e9)
        self.wall = 2 * window
        self.max_held = max_held
        self.top = 0
        self.waiting: list[tuple[float, Batch]] = []

    def __len__(self) -> int:
        return len(self.waiting)

    def add(self, batch: Batch, now: float) -> None:
        self.top = max(self.top, batch.t1)
        self.waiting.append((now, batch))

    def deadline(self) -> float | None:
        return self.waiting[0][0] + self.wall if self.waiting else None

    def release(self, now: float | None) -> list[Batch]:
        """The batches due at ``now`` (all of them with None), in arrival order.

        Due: ``t1`` behind the window, waited out the wall bound, or the oldest over
        ``max_held``. Then, so that nothing left waiting has a packet before one released,
        every batch that starts before the newest packet released goes too (and the earlier
        batches of a ring one of whose batches goes), until that holds.
        """
        if now is None:
            out = [b for _t, b in self.waiting]
            self.waiting = []
            return out
        cut = self.top - self.window_ns
        over = len(self.waiting) - self.max_held
        go = [b.t1 <= cut or now - at >= self.wall or i < over
              for i, (at, b) in enumerate(self.waiting)]
        if not any(go):
            return []
        while True:
            hi = max(b.t1 for (_at, b), g in zip(self.waiting, go, strict=True) if g)
            last: dict[tuple, int] = {}
            for i, ((_at, b), g) in enumerate(zip(self.waiting, go, strict=True)):
                if g or b.t0 < hi:
                    last[_ring(b)] = i
            more = [not g and (b.t0 < hi or last.get(_ring(b), -1) > i)
                    for i, ((_at, b), g) in enumerate(zip(self.waiting, go, strict=True))]
            if not any(more):
                break
            go = [g or m for g, m in zip(go, more, strict=True)]
        out = [b for (_at, b), g in zip(self.waiting, go, strict=True) if g]
        self.waiting = [w for w, g in zip(self.waiting, go, strict=True) if not g]
        return out


def _ring(b: Batch) -> tuple:
    return (b.host, b.run, b.kind, b.fields.get("iface"), b.fields.get("worker"))


async def _unless_stopped(coro: Any, stop: asyncio.Event) -> bool:
    """Run ``coro`` unless ``stop`` is set first (then it is cancelled); True if it finished."""
    task = asyncio.ensure_future(coro)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if task.done():
        task.result()
        return True
    await _bounded(task, CLOSE_BOUND)
    return False


async def _bounded(aw: Any, seconds: float) -> None:
    """Await ``aw`` for at most ``seconds``, then leave it cancelled behind.

    Waited on from the outside (``asyncio.wait``), not by cancelling the waiter: a step that
    swallows its cancellation (nats-py turns one into ConnectionClosedError when the
    connection is closed; ``wait_for`` in Python 3.11 loses one that races a result) cannot
    hold the archive. Its errors are the server's, and stopping goes on without it.
    """
    task = asyncio.ensure_future(aw)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        return
    if not task.cancelled() and task.exception() is not None:
        pass  # closing a connection to a server that is gone: nothing left to do


def _progress(files: ArchiveFiles) -> None:
    c = files.current()
    print(f"netevents archive: {c['files']} files, {c['frames']} frames, "
          f"{c['drop_packets']} dropped packets, dropcount {c['dropcount']} "
          f"-> {files.path.name if files.path else '-'}", file=sys.stderr, flush=True)

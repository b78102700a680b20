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


def _sub_report(sub: Any) -> dict[str, Any]:
    return {"sequence": sub.tracker.report(), "rejected": dict(sub.rejected),
            "queue_dropped": sub.dropped}


async def run_archive(out_dir: str | os.PathLike, url: str | None, *, durable: str = "archive",
                      rotate_bytes: int | None = None, rotate_seconds: float | None = None,
                      stop: asyncio.Event | None = None, progress_every: float = 5.0,
                      hosts: list[str] | None = None, hold: float = DEFAULT_HOLD,
                      max_held: int = MAX_HELD, credentials: Any = None) -> dict[str, Any]:
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
                due = held.deadline()
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
                ready += [r.item for r in held.release(now)]
                for i in range(0, len(ready), GROUP):
                    await commit(ready[i:i + GROUP])
                if files.due():
                    await asyncio.to_thread(files.maybe_rotate, _sub_report(sub))
                if now - last_progress >= progress_every:
                    last_progress = now
                    _progress(files)
            # stopping: what is held is written (its gaps already arrived or never will)
            await commit([r.item for r in held.drain()])
        finally:
            await asyncio.to_thread(lambda: files.close(final=True, sub_report=_sub_report(sub)))
            _progress(files)
    finally:
        if sub is not None:
            await _bounded(sub.close(), CLOSE_BOUND)
        await _bounded(conn.__aexit__(None, None, None), CLOSE_BOUND)
    return {**files.current(), "paths": [str(p) for p in files.files]}


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

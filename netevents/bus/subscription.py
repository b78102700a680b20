"""A subscription: decoded, validated batches from core NATS or a durable JetStream consumer.

The asyncio shell around :class:`~netevents.bus.intake.Intake`: it subscribes, pulls,
queues, acknowledges and redelivers; what to accept and what was missed is the intake's.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from .. import events as ev
from ..codec import Batch
from ..errors import BusError
from ..sequence import SequenceTracker
from ..subjects import filter_subject
from . import history, inbound
from .intake import Intake

if TYPE_CHECKING:
    from .client import Bus

log = logging.getLogger("netevents.bus")


class Subscription:
    """Decoded, validated batches; rejects counted by reason, misses counted by sequence.

    Attributes:
        rejected: ``Counter`` of rejected messages by reason (malformed, version, schema, ...).
        tracker: the :class:`~netevents.sequence.SequenceTracker` (``tracker.report()``).
        dropped: batches dropped because this subscriber's own queue was full.
        last_error: the message of the most recent rejection.
    """

    def __init__(self, bus: Bus, kinds, hosts, site, *, durable: str | None, queue_size: int,
                 pending_limit: int = 200_000, manual_ack: bool = False,
                 queue: str | None = None, since: int | str | None = None,
                 until: int | str | None = None):
        self.bus = bus
        self.queue = queue
        self.intake = Intake(kinds, hosts, shared=bool(queue))
        """What is accepted, rejected and missed (sans-IO; this class only feeds it)."""
        self.kinds = self.intake.kinds
        self.hosts = self.intake.hosts
        self.site = site
        self.durable = durable
        self.dropped = 0
        self._queue: asyncio.Queue[tuple[Batch, Any]] = asyncio.Queue(maxsize=queue_size)
        self._subs: list[Any] = []
        self._routed: list[int] = []
        """Subscription ids whose messages come through :meth:`_on_raw` (:func:`.inbound.routes`)."""
        self._tasks: list[asyncio.Task] = []
        self._started = False
        self._closing = False
        self._pending_ack: Any = None
        self.pending_limit = pending_limit
        self.manual_ack = manual_ack
        self._unacked: dict[int, tuple[Batch, Any]] = {}
        now = time.time_ns()
        self.since = history.parse_time(since, now) if isinstance(since, str) else since
        self.until = history.parse_time(until, now) if isinstance(until, str) else until
        if self.until is not None and self.since is None:
            raise ValueError("until needs since")
        if self.since is not None and (durable or queue):
            raise ValueError("since (a replay) is for plain subscriptions, not durable or queue ones")
        self.cursors: dict[str, history.ReplayCursor] = {}
        """Per kind, the stop rule of its replay consumer (with ``since``)."""
        self.finished = False
        """True once a replay with ``until`` has delivered everything up to it."""
        self.replay_error: str | None = None

    @property
    def rejected(self) -> Counter[str]:
        return self.intake.rejected

    @property
    def last_error(self) -> str | None:
        return self.intake.last_error

    @property
    def tracker(self) -> SequenceTracker:
        return self.intake.tracker

    @property
    def shared_holes(self) -> int:
        """Sequence holes of a queue-group member: batches that went to other members."""
        return self.intake.shared_holes

    @property
    def missed(self) -> int:
        return self.intake.missed

    @property
    def unreceived(self) -> int:
        """Batches the agents' status said were published that this subscription has neither
        received nor counted as missed (the tail after its last batch of a run). While agents
        run, mostly batches still on the way; once the consumer has drained, lost."""
        return self.intake.unreceived

    def accept(self, subject: str, data: bytes) -> Batch | None:
        """Decode one message; return None (and count why) when it is rejected or filtered."""
        return self.intake.accept(subject, data)

    async def start(self) -> Subscription:
        if self._started:
            return self
        self._started = True
        single_host = self.hosts[0] if len(self.hosts) == 1 else None
        for kind in self.kinds:
            subject = filter_subject(kind, self.site, single_host)
            if self.since is not None:
                psub = await history.open_replay(self.bus.js, ev.STREAM_OF[kind], subject, self.since)
                self._subs.append(psub)
                self.cursors[kind] = cursor = history.ReplayCursor(self.until)
                self._tasks.append(asyncio.create_task(self._replay(psub, cursor)))
            elif self.durable is None:
                sub = await self.bus.nc.subscribe(subject, queue=self.queue or "", cb=self._on_msg,
                                                  pending_msgs_limit=self.pending_limit,
                                                  pending_bytes_limit=512 * 1024 * 1024)
                self._subs.append(sub)
                routes = inbound.routes(self.bus.nc)
                sid = getattr(sub, "_id", None)
                if routes is not None and sid is not None:
                    routes[sid] = self._on_raw
                    self._routed.append(sid)
            else:
                with contextlib.suppress(BusError, TimeoutError):
                    # A read-only consumer may not create streams; they must exist then.
                    async with asyncio.timeout(3):
                        await self.bus.ensure_streams()
                name, stream = f"{self.durable}-{kind}", ev.STREAM_OF[kind]
                await self._rewind_unacked(stream, name)
                try:
                    psub = await self.bus.js.pull_subscribe(subject, durable=name, stream=stream)
                except (nats.errors.Error, nats.js.errors.Error) as exc:
                    raise BusError(f"cannot create consumer {stream}/{name}: "
                                   f"{self._refused(stream, name) or exc}") from exc
                self._subs.append(psub)
                self._tasks.append(asyncio.create_task(self._pull(psub)))
        return self

    async def _rewind_unacked(self, stream: str, name: str) -> None:
        """Make a durable consumer resume at its first unacknowledged message, in order.

        Messages delivered to a previous instance that died before acknowledging them (the
        batches in its queue, the one it was writing) would otherwise come back only after
        JetStream's ack wait (30 s), *behind* newer ones -- and a consumer that drops
        out-of-order sequence numbers as duplicates would lose them. So when the consumer has
        unacknowledged messages, it is re-created to start right after its ack floor. One
        process per durable name (what the archive does); a shared durable is not rewound
        under its other members' feet because they would have acknowledged their messages.
        """
        try:
            info = await self.bus.js.consumer_info(stream, name)
        except nats.js.errors.NotFoundError:
            return
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise BusError(f"cannot read consumer {stream}/{name}: "
                           f"{self._refused(stream, name) or exc}") from exc
        if not info.num_ack_pending:
            return
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        cfg = info.config
        try:
            await self.bus.js.delete_consumer(stream, name)
            await self.bus.js.add_consumer(stream, ConsumerConfig(
                durable_name=name, name=name, filter_subject=cfg.filter_subject,
                ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=floor + 1, ack_wait=cfg.ack_wait, max_ack_pending=cfg.max_ack_pending))
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise BusError(f"cannot rewind consumer {stream}/{name}: {exc}") from exc
        log.info("consumer %s/%s: %d unacknowledged messages are delivered again from stream "
                 "sequence %d", stream, name, info.num_ack_pending, floor + 1)

    def _refused(self, stream: str, name: str) -> str | None:
        """The server's permissions violation on this consumer's API, naming user and subject
        (a durable name the user does not own: `netevents auth consumer NAME --durable D`)."""
        needle = f".{stream}.{name}".lower()
        for subject in getattr(self.bus, "violations", {}):
            if subject.startswith("$js.api.consumer.") and needle in subject:
                return f"{self.bus.violation(subject)} (a durable this user does not own?)"
        return None

    async def lag(self) -> dict[str, int]:
        """How far behind this consumer is.

        ``queued``: decoded batches waiting for the consumer; ``pending``: messages the client
        library holds (core) or the server still has for this durable consumer (JetStream);
        ``slow_consumer_drops``: messages the client library discarded because it fell too far
        behind (they also show up as sequence holes in ``missed``).
        """
        pending = 0
        for s in self._subs:
            if self.durable is None and self.since is None:
                pending += getattr(s, "pending_msgs", 0)
            else:
                with contextlib.suppress(Exception):
                    info = await s.consumer_info()
                    pending += info.num_pending + (info.num_ack_pending or 0)
        return {"queued": self._queue.qsize(), "pending": pending,
                "slow_consumer_drops": self.bus.errors["slow_consumer"],
                "unreceived": self.unreceived}

    def _on_raw(self, subject: bytes, data: bytes) -> None:
        """A message of a core subscription, straight from the client's protocol parser
        (:func:`.inbound.routes`): decoded and queued at once."""
        self._put(self.intake.accept(subject.decode(), data))

    async def _on_msg(self, msg: Any) -> None:
        self._put(self.intake.accept(msg.subject, msg.data))

    def _put(self, batch: Batch | None) -> None:
        """Queue an accepted batch (None: rejected or filtered, already counted); what does
        not fit the bounded queue is counted in ``dropped``."""
        if batch is None:
            return
        try:
            self._queue.put_nowait((batch, None))
        except asyncio.QueueFull:
            self.dropped += 1

    async def _pull(self, psub: Any) -> None:
        # The loop ends on ``_closing`` too, not only by cancellation: nats-py turns a
        # cancellation into ConnectionClosedError once the connection is closed, and
        # ``asyncio.wait_for`` (Python 3.11) loses one that races a message, so a cancel alone
        # could leave this loop running and close() waiting for it forever.
        while not self._closing:
            try:
                msgs = await psub.fetch(64, timeout=1.0)
            except TimeoutError:  # nats' and asyncio's
                # nats-py raises a bare asyncio.TimeoutError when its no-wait probe took the
                # whole timeout (a loaded machine): that once ended this loop, and the durable
                # stopped delivering for good.
                continue
            except (nats.errors.Error, nats.js.errors.Error) as exc:
                if self._closing:
                    return
                log.debug("pull failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            for i, msg in enumerate(msgs):
                batch = self.accept(msg.subject, msg.data)
                if batch is None:
                    with contextlib.suppress(Exception):
                        await msg.ack()
                    continue
                try:
                    await self._queue.put((batch, msg))  # back-pressure instead of drops
                except asyncio.CancelledError:
                    for undelivered in msgs[i:]:  # hand them back for immediate redelivery
                        with contextlib.suppress(Exception):
                            await undelivered.nak()
                    raise

    async def _replay(self, psub: Any, cursor: history.ReplayCursor) -> None:
        """Pull a replay consumer until its cursor is done; the last one done ends the stream
        of batches (a ``None`` in the queue). A replay that fails ends it too, and the failure
        is raised to the reader (:meth:`__anext__`): a window is never cut short silently."""
        try:
            while not cursor.done:
                try:
                    msgs = await psub.fetch(64, timeout=0.5)
                except TimeoutError:   # nats' and asyncio's
                    # Nothing came in time: done only if the server says nothing is pending
                    # (a loaded machine may just be slow to deliver).
                    try:
                        info = await psub.consumer_info()
                    except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
                        continue
                    cursor.idle(time.time_ns(), pending=info.num_pending)
                    continue
                except (nats.errors.Error, nats.js.errors.Error) as exc:
                    log.debug("replay pull failed: %s", exc)
                    await asyncio.sleep(0.5)
                    continue
                for msg in msgs:
                    if not cursor.message(history.parse_ack_subject(msg.reply), time.time_ns()):
                        break
                    batch = self.accept(msg.subject, msg.data)
                    if batch is not None:
                        await self._queue.put((batch, None))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported to the reader, not swallowed
            self.replay_error = f"{type(exc).__name__}: {exc}"
            cursor.done = True
        if len(self.cursors) == len(self.kinds) and all(c.done for c in self.cursors.values()):
            await self._queue.put((None, None))  # type: ignore[arg-type]

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Batch:
        if not self._started:
            await self.start()
        if self._pending_ack is not None:
            msg, self._pending_ack = self._pending_ack, None
            with contextlib.suppress(Exception):
                await msg.ack()
        if self.finished:
            raise StopAsyncIteration
        queue = self._queue
        # a batch that is ready is taken as Queue.get would take it, without its coroutine
        # (the hot path of a busy consumer)
        batch, msg = await queue.get() if queue.empty() else queue.get_nowait()
        if batch is None:
            self.finished = True
            await self.close()   # the replay consumers go at once, also for a bare async for
            if self.replay_error:
                raise BusError(f"replay failed: {self.replay_error}")
            raise StopAsyncIteration
        if self.manual_ack:
            if msg is not None:
                self._unacked[id(batch)] = (batch, msg)
        else:
            self._pending_ack = msg
        return batch

    async def ack(self, batch: Batch) -> None:
        """Acknowledge a batch (``manual_ack`` subscriptions); a no-op for anything else."""
        entry = self._unacked.pop(id(batch), None)
        if entry is not None:
            with contextlib.suppress(Exception):
                await entry[1].ack()

    @property
    def unacked(self) -> int:
        """Batches handed out and not yet acknowledged (``manual_ack``)."""
        return len(self._unacked)

    async def next(self, timeout: float | None = None) -> Batch | None:
        """The next batch, or None after ``timeout`` seconds without one (or, for a replay
        with ``until``, once it is over: :attr:`finished`)."""
        try:
            if self._started and self._pending_ack is None and not self._queue.empty():
                return await self.__anext__()  # ready: no timer to arm and cancel (hot path)
            async with asyncio.timeout(timeout):
                return await self.__anext__()
        except (TimeoutError, StopAsyncIteration):
            return None

    async def close(self) -> None:
        self._closing = True
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            # waited on from the outside: a fetch that swallowed its cancellation ends at its
            # next turn of the loop (``_closing``), within the fetch timeout
            await asyncio.wait(self._tasks, timeout=2.0)
        if self._pending_ack is not None:
            with contextlib.suppress(Exception):
                await self._pending_ack.ack()
            self._pending_ack = None
        while not self._queue.empty():  # fetched but never handed out: redeliver at once
            _batch, msg = self._queue.get_nowait()
            if msg is not None:
                with contextlib.suppress(Exception):
                    await msg.nak()
        routes = inbound.routes(self.bus.nc) if self._routed else None
        for sid in self._routed:
            routes.pop(sid, None)
        self._routed.clear()
        for s in self._subs:
            if self.since is not None:
                await history.close_replay(self.bus.js, s)   # no consumer left behind
                continue
            with contextlib.suppress(Exception):
                await s.unsubscribe()
        self._subs.clear()

    async def __aenter__(self) -> Subscription:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


GC_THRESHOLD = 50_000
"""The young-generation threshold of a consumer process (:func:`tune_gc`)."""


def tune_gc() -> None:
    """Collect the young generation every :data:`GC_THRESHOLD` allocations, not every 700.
    The ``netevents`` commands call it at start; a program of its own that consumes a busy
    bus may call it too (the library never changes the interpreter's settings by itself).

    A consumer allocates a few dozen containers per batch (the batch, its fields and events,
    what its state keeps of them) at thousands of batches a second, next to state of 10^5
    and more objects: with CPython's default the cyclic collector ran hundreds of times a
    second and took an eighth of a correlator's time. Almost all of it is freed by reference
    counting anyway. Left alone when the process has set a threshold of its own."""
    t0, t1, t2 = gc.get_threshold()
    if t0 == 700:   # CPython's default
        gc.set_threshold(GC_THRESHOLD, t1, t2)

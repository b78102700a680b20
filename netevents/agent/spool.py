"""The agent's bounded on-disk spool, and the publisher that uses it when the bus is away.

    Spool              append-only segment files of encoded batches; replayed oldest first;
                       bounded in bytes, with a policy (drop_oldest | drop_newest) whose
                       discards are counted in events
    ReliablePublisher  JetStream publishing that waits for the ack (one batch in flight, in
                       order), retries with the same Nats-Msg-Id, and spools when the bus does
                       not answer; replays the spool in order when it is back

Record format (one per batch): ``u32 length | u32 crc32 | msgpack [subject, msg_id, events, data]``.
A record torn by a crash (short, or bad CRC) ends the segment: it is counted at
``spool.corrupt`` and skipped, never replayed half.

Order is kept by construction: while anything is spooled, every new batch is appended behind
it, and the switch to spooling moves the in-memory queue to disk in one step (no await in
between), so batches reach the bus in the order they were made. A replay that repeats a batch
the bus already stored (a crash between its ack and the cursor update) is dropped by JetStream's
duplicate window or, after it, by the consumers' sequence tracking.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import zlib
from collections import Counter, deque
from pathlib import Path
from typing import Any

import msgpack

from netevents.bus.client import MsgIdKey
from netevents.codec import Batch, encode_batch
from netevents.errors import BusError, ConfigError
from netevents.subjects import event_subject

log = logging.getLogger("netevents.agent.spool")

_HEADER = struct.Struct("<II")
POLICIES = ("drop_oldest", "drop_newest")


class Spool:
    """Segments ``NNNNNNNN.spool`` in ``directory``; a ``cursor`` file remembers the replay point.

    Raises (constructor):
        ConfigError: if the directory cannot be created or written, or the policy is unknown.
    """

    def __init__(self, directory: str | os.PathLike, max_bytes: int = 256 << 20,
                 policy: str = "drop_oldest", segment_bytes: int | None = None) -> None:
        if policy not in POLICIES:
            raise ConfigError(f"spool policy {policy!r} is not one of {', '.join(POLICIES)}")
        self.dir = Path(directory)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / ".probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"spool directory {self.dir} is not writable: {exc.strerror}") from None
        self.max_bytes = max_bytes
        self.policy = policy
        self.segment_bytes = segment_bytes or max(64 << 10, max_bytes // 8)
        self.lost: Counter[str] = Counter({"spool.discarded": 0, "spool.corrupt": 0})
        self.segments: deque[int] = deque(sorted(int(p.stem) for p in self.dir.glob("*.spool")))
        self._writer: Any = None
        self._writer_seg: int | None = None
        self.read_seg, self.read_off = self._load_cursor()
        self.records = self._count_records()

    # -- bookkeeping ---------------------------------------------------------------------------
    def _path(self, seg: int) -> Path:
        return self.dir / f"{seg:08d}.spool"

    def _load_cursor(self) -> tuple[int | None, int]:
        try:
            seg, off = (self.dir / "cursor").read_text().split()
            if int(seg) in self.segments:
                return int(seg), int(off)
        except (OSError, ValueError):
            pass
        return (self.segments[0] if self.segments else None), 0

    def _save_cursor(self) -> None:
        tmp = self.dir / "cursor.tmp"
        tmp.write_text(f"{self.read_seg if self.read_seg is not None else 0} {self.read_off}\n")
        os.replace(tmp, self.dir / "cursor")

    def _count_records(self) -> int:
        n = 0
        for seg in self.segments:
            start = self.read_off if seg == self.read_seg else 0
            n += sum(1 for _ in self._records(seg, start))
        return n

    @property
    def bytes(self) -> int:
        total = 0
        for seg in self.segments:
            with contextlib.suppress(OSError):
                total += self._path(seg).stat().st_size
        return total

    def __len__(self) -> int:
        return self.records

    # -- writing -------------------------------------------------------------------------------
    def append(self, subject: str, msg_id: str, events: int, data: bytes) -> bool:
        """Append one batch. False (and counted) if the policy discards it instead."""
        payload = msgpack.packb([subject, msg_id, events, data], use_bin_type=True)
        record = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        while self.bytes + len(record) > self.max_bytes:
            if self.policy == "drop_newest" or len(self.segments) <= 1:
                self.lost["spool.discarded"] += events
                return False
            self._discard_oldest()
        if self._writer is None or self._writer.tell() + len(record) > self.segment_bytes:
            self._rotate()
        self._writer.write(record)
        self._writer.flush()  # in the page cache: survives the agent's death, not the host's
        self.records += 1
        return True

    def _rotate(self) -> None:
        if self._writer is not None:
            self._writer.close()
        seg = (self.segments[-1] + 1) if self.segments else 1
        self._writer = open(self._path(seg), "ab")
        self._writer_seg = seg
        self.segments.append(seg)
        if self.read_seg is None:
            self.read_seg, self.read_off = seg, 0

    def _discard_oldest(self) -> None:
        seg = self.segments[0]
        start = self.read_off if seg == self.read_seg else 0
        dropped = 0
        for rec, _next in self._records(seg, start):
            dropped += rec[2]
            self.records -= 1
        self.lost["spool.discarded"] += dropped
        self._remove(seg)
        log.warning("spool full (%d bytes): discarded %d events of the oldest segment",
                    self.max_bytes, dropped)

    def _remove(self, seg: int) -> None:
        if seg == self._writer_seg and self._writer is not None:
            self._writer.close()
            self._writer, self._writer_seg = None, None
        self.segments.remove(seg)
        with contextlib.suppress(OSError):
            self._path(seg).unlink()
        if seg == self.read_seg:
            self.read_seg = self.segments[0] if self.segments else None
            self.read_off = 0
            self._save_cursor()

    # -- reading -------------------------------------------------------------------------------
    def _records(self, seg: int, off: int, count_torn: bool = False):
        """Yield ``([subject, msg_id, events, data], next_offset)`` from ``off``; stops at a torn
        record (counted at ``spool.corrupt`` when ``count_torn``: only the replay counts it)."""
        try:
            with open(self._path(seg), "rb") as f:
                f.seek(off)
                while True:
                    head = f.read(_HEADER.size)
                    if not head:
                        return
                    if len(head) < _HEADER.size:
                        if count_torn:
                            self._torn(seg)
                        return
                    length, crc = _HEADER.unpack(head)
                    payload = f.read(length)
                    if len(payload) < length or zlib.crc32(payload) != crc:
                        if count_torn:
                            self._torn(seg)
                        return
                    off += _HEADER.size + length
                    yield msgpack.unpackb(payload, raw=False), off
        except FileNotFoundError:
            return

    def _torn(self, seg: int) -> None:
        if seg != self._writer_seg:
            self.lost["spool.corrupt"] += 1

    def peek(self) -> tuple[str, str, int, bytes] | None:
        """The oldest spooled batch (subject, msg_id, events, data), or None."""
        while self.read_seg is not None:
            for rec, nxt in self._records(self.read_seg, self.read_off, count_torn=True):
                self._next_off = nxt
                return rec[0], rec[1], rec[2], rec[3]
            if self.read_seg == self._writer_seg:
                return None
            self._remove(self.read_seg)  # fully replayed (or torn at its end)
        return None

    def pop(self) -> None:
        """Mark the batch :meth:`peek` returned as delivered."""
        self.read_off = self._next_off
        self.records -= 1
        self._save_cursor()
        if self.records == 0 and self.read_seg is not None:
            # Everything delivered: start afresh so the spool takes no disk space.
            for seg in list(self.segments):
                self._remove(seg)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer, self._writer_seg = None, None


class ReliablePublisher:
    """Publishes batches with JetStream acks, in order, spooling while the bus is away.

    ``publish`` never waits on the network: it queues (at most ``max_inflight`` batches in
    memory) or, while the bus is away or the queue is full, appends to the spool.

    What can still be lost, and where it is counted: what the spool's policy discards
    (``spool.discarded``, in events) and records torn by a crash (``spool.corrupt``). On a
    SIGKILL, the batches in memory (at most ``max_inflight``) die with the process.
    """

    def __init__(self, bus: Any, spool: Spool, *, max_inflight: int = 64, ack_timeout: float = 2.0,
                 retries: int = 2) -> None:
        self.bus = bus
        self.spool = spool
        self.max_inflight = max_inflight
        self.ack_timeout = ack_timeout
        self.retries = retries
        self._queue: deque[tuple[str, str, int, bytes]] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.spooled = 0
        self.replayed = 0
        self._task: asyncio.Task | None = None
        self._warned = False
        self._msg_id = MsgIdKey()
        """The per-run secret of the batches' ``Nats-Msg-Id``s; never leaves this process."""

    @property
    def degraded(self) -> bool:
        return len(self.spool) > 0

    def losses(self) -> dict[str, int]:
        return dict(self.spool.lost)

    def queues(self) -> dict[str, dict[str, int]]:
        return {"publish": {"size": len(self._queue), "capacity": self.max_inflight},
                "spool": {"size": self.spool.bytes, "capacity": self.spool.max_bytes,
                          "batches": len(self.spool)}}

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._sender(), name="publisher")

    async def publish(self, batch: Batch) -> None:
        # As buffers (the frame columns not copied until the publish command joins them)
        # when the bus takes them; bytes before they go to the spool.
        data = encode_batch(batch, max_bytes=self.bus.max_payload,
                            parts=getattr(self.bus, "accepts_parts", False))
        # The keyed id: only this run can make it (so no other host can have JetStream drop
        # it as a duplicate), and the spooled record keeps it for every retry and replay.
        item = (event_subject(batch.kind, batch.site, batch.host), self._msg_id(batch),
                len(batch), data)
        self.start()
        if self.degraded or len(self._queue) >= self.max_inflight:
            self._to_spool(item)
        else:
            self._queue.append(item)
        self._idle.clear()
        self._wake.set()

    def _to_spool(self, item: tuple[str, str, int, bytes] | None = None) -> None:
        # Synchronous on purpose: everything queued goes to disk ahead of this item, with no
        # await in between, so order is kept.
        while self._queue:
            self._spool_one(self._queue.popleft())
        if item is not None:
            self._spool_one(item)

    def _spool_one(self, item: tuple[str, str, int, bytes]) -> None:
        if not isinstance(item[3], bytes):
            item = (*item[:3], bytes(item[3]))  # EncodedParts
        if self.spool.append(*item):
            self.spooled += 1

    async def _send(self, subject: str, msg_id: str, data: bytes) -> bool:
        if not getattr(self.bus, "connected", True):
            return False  # disconnected: spool now rather than wait out ack timeouts
        for attempt in range(self.retries + 1):
            try:
                await self.bus.publish_raw(subject, data, msg_id, ack=True, timeout=self.ack_timeout)
                return True
            except BusError as exc:
                if attempt == self.retries:
                    if not self._warned:
                        self._warned = True
                        log.warning("bus not acknowledging (%s); spooling to %s", exc, self.spool.dir)
                    return False
        return False

    async def _sender(self) -> None:
        backoff = 0.1
        while True:
            if self.degraded:
                rec = self.spool.peek()
                if rec is None:  # the rest was torn by a crash (counted): nothing to replay
                    self.spool.records = 0
                    continue
                subject, msg_id, _events, data = rec
                if await self._send(subject, msg_id, data):
                    self.spool.pop()
                    self.replayed += 1
                    backoff = 0.1
                    if not self.degraded:
                        log.info("bus back: spool replayed (%d batches)", self.replayed)
                        self._warned = False
                else:
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                continue
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            subject, msg_id, events, data = self._queue[0]
            if await self._send(subject, msg_id, data):
                if self._queue and self._queue[0][1] == msg_id:
                    self._queue.popleft()
            elif self._queue and self._queue[0][1] == msg_id:
                self._to_spool()  # the failed batch is at the head: it goes first
            data = None  # an EncodedParts lends the capture's buffers while it is referenced

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything is on the bus, or ``timeout``; what is left stays spooled."""
        self.start()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._queue or self.degraded:
                    self._wake.set()
                    await asyncio.sleep(0.02)
        self._to_spool()

    async def close(self, timeout: float = 5.0) -> None:
        await self.flush(timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        # Anything the cancelled sender was holding is still at the queue's head: keep it.
        self._to_spool()
        self.spool.close()

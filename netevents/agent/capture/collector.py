"""The capture collector: one TPACKET_V3 ring (one fanout member) -> frame and gap events.

A thin asyncio shell around :class:`~netevents.agent.capture.ring.CaptureRing` (I/O),
:func:`~netevents.agent.capture.ring.walk_block` and :class:`~netevents.agent.capture.gaps.GapAccountant`
(sans-IO). The ring's fd is watched with ``loop.add_reader``; each wake-up drains every block the
kernel has handed over: walk it, place any gap before it, read ``PACKET_STATISTICS`` (once per
block, while still holding it), release it. Frames go out column-wise, one batch per
``max_batch`` frames, or, at the end of a drain, once the batch's first frames have waited
``batch_wait`` (a timer sends a batch that no later drain completes). On stop the socket is detached first, the last partial block is left
to retire, everything is drained and a final statistics read closes the accounting exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from netevents.errors import CapabilityError
from netevents.heap import keep_heap

from . import hwtstamp
from .cwalk import SOURCE_NAME, FrameWalker, open_walker
from .gaps import GapAccountant, describe
from .ring import (
    BLOCK_STATUS_OFF,
    TP_STATUS_LOSING,
    TP_STATUS_USER,
    CaptureRing,
    RingConfig,
)

log = logging.getLogger("netevents.agent.capture")


@dataclass(slots=True)
class CaptureOptions:
    ring: RingConfig
    worker: int = 0
    hwtstamp: bool = True
    """Try to enable hardware receive stamps (SIOCSHWTSTAMP) and record what was applied."""
    max_batch: int = 32768
    block_delay: float = 0.0
    """Seconds to pause after each block: a deliberately slow consumer (tests, benchmarks)."""
    walker: str = "auto"
    """Block walker: ``auto`` (C if it builds, else Python), ``c`` or ``python`` (cwalk.py)."""
    batch_wait: float = 0.2
    """Seconds a frame batch may wait for the next drains to fill it (at most; a fuller batch
    goes at once). Each batch costs the agent a fixed amount of work (encode, publish, the
    JetStream ack): at 100k frames/s a batch per 50 ms block retirement cost as much CPU as
    the frames themselves (bench/capture.py). 0: one batch per drain."""


class RingCapture:
    """Collector for one ring. Raises CapabilityError (from run) if the ring cannot be set up."""

    name = "capture"

    def __init__(self, opts: CaptureOptions) -> None:
        self.opts = opts
        self.ring: CaptureRing | None = None
        self.accountant = GapAccountant(opts.ring.iface, opts.worker, opts.ring.block_nr)
        self.frames = 0
        self.hwtstamp: dict = {"filter": None, "phc_index": None}
        self.finished = asyncio.Event()
        self.invariant_error: str | None = None
        self._released_any = False
        self.stop_seconds = 0.0
        # Frames per batch: max_batch, and few enough that a batch stays far below the bus's
        # 8 MiB message limit whatever the snap length (the runner splits one that is not).
        self.batch_frames = max(1, min(opts.max_batch, (4 << 20) // (opts.ring.snaplen + 96)))
        self.walker: FrameWalker | None = None
        self._batch_first = 0
        """Frame number (GapAccountant) of the first frame of the batch being built."""
        self._held_since = 0.0
        self._flush_timer: asyncio.TimerHandle | None = None

    @property
    def loss_place(self) -> str:
        return f"capture.ring.{self.opts.ring.iface}.w{self.opts.worker}"

    async def run(self, sink) -> None:
        opts = self.opts
        cfg = opts.ring
        sink.declare_loss(self.loss_place)
        keep_heap()
        # Built (once per host, cached) in a thread, before the ring exists: a first compile
        # takes a moment.
        self.walker, why, fallback = await asyncio.to_thread(open_walker, opts.walker)
        if opts.hwtstamp:
            self.hwtstamp, line = hwtstamp.enable_for_capture(cfg.iface, cfg.netns)
            if line:  # one line per interface, however many workers
                log.log(logging.WARNING if opts.worker == 0 else logging.DEBUG, "%s", line)
        ring = self.ring = CaptureRing(cfg).open()
        if why:  # a fallback is one line per interface, however many workers
            log.log(logging.WARNING if fallback and opts.worker == 0 else logging.DEBUG,
                    "%s: %s", cfg.iface, why)
            sink.state(SOURCE_NAME, "unavailable", why)
        else:
            sink.state(SOURCE_NAME, "running")
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        loop.add_reader(ring.fileno(), wake.set)
        try:
            while True:
                await wake.wait()
                wake.clear()
                await self._drain(sink)
        finally:
            loop.remove_reader(ring.fileno())
            await self._finish(sink)

    async def _finish(self, sink) -> None:
        ring = self.ring
        assert ring is not None
        started = time.monotonic()
        try:
            ring.detach()  # the drop-all filter: no new frames counted after this
            # The block timer retires the last partial block (it may take two timer periods);
            # drain and read until every frame the kernel counted has been walked.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + max(1.0, 4 * self.opts.ring.retire_tov_ms / 1000)
            acc = self.accountant
            while True:
                await self._drain(sink, pace=False)
                st = ring.read_stats()
                acc.on_stats(st.packets, st.drops, st.freezes, None)
                if self.frames + acc.drops >= acc.packets or loop.time() > deadline:
                    break
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(0.01)
            for gap in self.accountant.finish():
                self._emit_gap(sink, gap)
            self.invariant_error = self.accountant.check(self.frames)
            log.debug("%s: %d frames, tp_packets %d, tp_drops %d in %d freezes; late drops %d, "
                      "ambiguous reads %d", cfg_name(self), self.frames, acc.packets, acc.drops,
                      acc.freezes, acc.late_drops, acc.ambiguous_reads)
            if self.invariant_error:
                log.warning("%s: accounting does not close: %s", cfg_name(self), self.invariant_error)
        finally:
            if self._flush_timer is not None:
                self._flush_timer.cancel()
                self._flush_timer = None
            ring.close()
            self.stop_seconds = time.monotonic() - started
            self.finished.set()

    def _emit_gap(self, sink, gap) -> None:
        sink.lost(self.loss_place, gap.lost)
        sink.emit("gap", gap, t0=gap.after_ts or gap.before_ts, t1=gap.before_ts or gap.after_ts)
        log.debug("%s", describe(gap))

    async def _drain(self, sink, pace: bool = True) -> None:
        ring = self.ring
        assert ring is not None and ring.mm is not None
        walker = self.walker
        assert walker is not None
        acc = self.accountant
        mm = ring.mm
        loop = asyncio.get_running_loop()
        completed = False
        try:
            while (off := ring.ready_block()) is not None:
                start = len(walker)
                info = walker.walk(mm, off)
                first, gaps = acc.on_block(info.seq, info.walked, info.first_ts, info.last_ts,
                                           bool(info.status & TP_STATUS_LOSING))
                if start == 0:
                    self._batch_first = first
                    self._held_since = loop.time()
                for gap in gaps:
                    self._emit_gap(sink, gap)
                # Two reads per block, one holding it and one just after releasing it, each with
                # the newest block a freeze can have reached by then (gaps.py explains why).
                prev_off = ((ring.next_block - 1) % ring.block_nr) * ring.block_size
                st = ring.read_stats()
                frontier = info.seq if (not self._released_any or _user(mm, prev_off)) else info.seq - 1
                acc.set_frontier_floor(info.seq)
                acc.on_stats(st.packets, st.drops, st.freezes, frontier)
                ring.release_block(off)
                self._released_any = True
                st = ring.read_stats()
                acc.set_frontier_floor(info.seq)
                acc.on_stats(st.packets, st.drops, st.freezes,
                             info.seq + 1 if _user(mm, off) else info.seq)
                self.frames += info.walked
                if len(walker) >= self.batch_frames:
                    self._emit_frames(sink, walker)
                if pace:
                    # Let the batcher publish between blocks: a full ring is ~50k frames of work.
                    await asyncio.sleep(self.opts.block_delay)
            completed = True
        finally:
            # also when cancelled mid-drain, and on stop (pace off): every walked frame is
            # published; otherwise a young batch waits for the next drains (or its timer)
            if len(walker):
                wait = self._held_since + self.opts.batch_wait - loop.time()
                if not (completed and pace) or wait <= 0:
                    self._emit_frames(sink, walker)
                elif self._flush_timer is None:
                    self._flush_timer = loop.call_later(wait, self._flush_held, sink)

    def _flush_held(self, sink) -> None:
        self._flush_timer = None
        if self.walker is not None and len(self.walker):
            self._emit_frames(sink, self.walker)

    def _emit_frames(self, sink, walker: FrameWalker) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        first_frame = self._batch_first
        cols, t0, t1 = walker.take(
            self.opts.worker if self.opts.ring.fanout_group is not None else None)
        acc = self.accountant
        sink.emit_batch("frame", cols, t0=t0, t1=t1, iface=self.opts.ring.iface,
                        worker=self.opts.worker, first_frame=first_frame, hwtstamp=self.hwtstamp,
                        snaplen=self.opts.ring.snaplen,
                        ring={"packets": acc.packets, "drops": acc.drops,
                              "freezes": acc.freezes},
                        gaps_before={"records": acc.records_reported, "lost": acc.lost_reported})


def _user(mm, block_off: int) -> bool:
    o = block_off + BLOCK_STATUS_OFF
    return bool(int.from_bytes(mm[o:o + 4], "little") & TP_STATUS_USER)


def cfg_name(c: RingCapture) -> str:
    return f"{c.opts.ring.iface} worker {c.opts.worker}"


__all__ = ["CaptureOptions", "RingCapture", "CapabilityError"]

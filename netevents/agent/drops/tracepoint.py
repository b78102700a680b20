"""``skb:kfree_skb`` through a private tracefs instance: reason, location and protocol of drops.

    KfreeSkbParser     sans-IO: trace_pipe bytes -> aggregator keys (keeps the partial tail)
    reason_table()     reason number -> name, from the event's own ``format`` file
    KfreeSkbInstance   a private tracefs instance (netevents/agent/kernel/tracefs.py) with kfree_skb
                       enabled and the excluded reasons filtered in the kernel
    TracepointDrops    the collector: ``loop.add_reader`` on the instance's per-CPU
                       trace_pipe_raw (rawtrace.py, the default) or its text trace_pipe, read
                       every ``tick``; what is due published then (aggregate.py: a new
                       signature at once, a busy one at most once per ``interval``); ring
                       overruns -> own loss

The global trace buffer is never touched: other tools (perf, trace-cmd, a second agent) keep
theirs. The instance's ring overwrites its oldest events when the reader falls behind; the
per-CPU ``stats`` files count them (``overrun:``) and we report the increase as
``tracepoint.ring_overrun``, so drops seen plus drops lost is what the kernel freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from netevents.errors import ConfigError

from ..kernel import tracefs as kernel_tracefs
from ..kernel.kallsyms import Kallsyms, normalize_location
from ..kernel.tracefs import TraceInstance, boottime_offset_ns
from .aggregate import DropAggregator

log = logging.getLogger("netevents.agent.drops")

EVENT = "events/skb/kfree_skb"

# The text trace_pipe line (include/trace/events/skb.h, TRACE_EVENT(kfree_skb)):
#   <comm>-<pid> [cpu] flags <secs>.<usecs>: kfree_skb: skbaddr=%p rx_sk=%p protocol=%u
#       location=%pS reason: %s
# Older kernels print no rx_sk and no reason; both are optional here.
_MARK = ": kfree_skb: "
_PROTO = "protocol="
_LOC = " location="
_REASON = " reason: "


class KfreeSkbParser:
    """Sans-IO parser of the instance's text ``trace_pipe``.

    :meth:`feed` takes bytes exactly as read (any split, also mid-line and mid-UTF-8) and adds
    every complete record to the aggregator; the partial last line waits for the next read.
    Lines that are not kfree_skb records are counted in ``bad_lines`` (never raised); the
    kernel's inline ``[LOST n EVENTS]`` markers are summed in ``lost_marked`` (the same loss the
    per-CPU stats report, so the collector does not add them again).
    """

    def __init__(self, aggregator: DropAggregator, *, clock_offset_ns: int = 0,
                 exclude: frozenset[str] = frozenset()) -> None:
        self.agg = aggregator
        self.clock_offset_ns = clock_offset_ns
        self.exclude = exclude
        self._tail = b""
        self._keys: dict[str, tuple | None] = {}
        self.records = 0
        self.excluded = 0
        self.bad_lines = 0
        self.lost_marked = 0
        self.last_bad: str | None = None

    def feed(self, data: bytes) -> int:
        """Parse what was read; returns the number of records added. Never raises."""
        if self._tail:
            data = self._tail + data
        cut = data.rfind(b"\n")
        if cut < 0:
            self._tail = data
            return 0
        self._tail = data[cut + 1:]
        return self._lines(data[:cut].decode("utf-8", "replace").split("\n"))

    def finish(self) -> int:
        """Parse a last line that had no newline (at shutdown)."""
        tail, self._tail = self._tail, b""
        if not tail.strip():
            return 0
        return self._lines([tail.decode("utf-8", "replace")])

    # Hot loop: one pass per drop under a storm. Everything after "protocol=" is the same for
    # every drop of one signature, so lines are grouped by that tail first; the tail is parsed
    # once per signature, and timestamps only for the first and last line of each group.
    def _lines(self, lines: list[str]) -> int:
        groups: dict[str, list] = {}
        get = groups.get
        for line in lines:
            i = line.find(_MARK)
            if i < 0:
                self._other(line)
                continue
            p = line.find(_PROTO, i)
            if p < 0:
                self._bad(line)
                continue
            tail = line[p + 9:]
            g = get(tail)
            if g is None:
                groups[tail] = [1, line, line]
            else:
                g[0] += 1
                g[2] = line
        keys = self._keys
        n = 0
        for tail, (count, first, last) in groups.items():
            key = keys.get(tail, False)
            if key is False:
                key = keys[tail] = self._parse_tail(tail)
                if len(keys) > 65536:  # unbounded signatures would be a leak; start over
                    keys.clear()
            if key is None:
                for _ in range(count):
                    self._bad(first)
                continue
            if key[1] in self.exclude:
                self.excluded += count
                continue
            t_first, t_last = self._ts(first), self._ts(last)
            self.agg.add_key(key, t_first, count, t_last)
            n += count
        self.records += n
        return n

    def _ts(self, line: str) -> int | None:
        i = line.find(_MARK)
        j = line.rfind(" ", 0, i)
        try:
            return round(float(line[j + 1:i]) * 1e6) * 1000 + self.clock_offset_ns
        except ValueError:
            return None

    @staticmethod
    def _parse_tail(tail: str) -> tuple | None:
        """``2048 location=sym+0x1/0x2 [mod] reason: NAME`` -> aggregator key, or None."""
        proto_s, sep, rest = tail.partition(_LOC)
        if not sep:
            return None
        try:
            proto = int(proto_s)
        except ValueError:
            return None
        loc_s, sep, reason = rest.partition(_REASON)
        reason = reason.strip() if sep else "NOT_SPECIFIED"
        location, pc = normalize_location(loc_s)
        # KEY_FIELDS: location, reason, iface, ifindex, proto, netns, origin, hw_trap, hw_group, pc
        return (location, reason or "NOT_SPECIFIED", None, None, proto, None, "sw", None, None, pc)

    def _other(self, line: str) -> None:
        if not line.strip() or line.lstrip().startswith("#"):  # blank, or the `trace` header
            return
        # "CPU:1 [LOST 123 EVENTS]": the ring overwrote events before we read them.
        m = re.search(r"\[LOST (\d+) EVENTS\]", line)
        if m:
            self.lost_marked += int(m.group(1))
            return
        self._bad(line)

    def _bad(self, line: str) -> None:
        self.bad_lines += 1
        self.last_bad = line[:200]


def reason_table(format_text: str) -> dict[int, str]:
    """skb_drop_reason number -> name from the event's ``format`` (its ``__print_symbolic``)."""
    return {int(n): name for n, name in re.findall(r'\{\s*(\d+),\s*"(\w+)"\s*\}', format_text)}


class KfreeSkbInstance(TraceInstance):
    """The private instance with ``skb:kfree_skb``: the event's reason table, and
    ``exclude_reasons`` written as the event's filter so the kernel discards them.

    Raises (from :meth:`create`):
        CapabilityError: as :class:`TraceInstance`.
        ConfigError: an excluded reason this kernel does not know.
    """

    EVENTS = (EVENT,)

    def __init__(self, path: Path, events: tuple[str, ...],
                 exclude_reasons: frozenset[str] = frozenset()) -> None:
        super().__init__(path, events)
        self.exclude_reasons = exclude_reasons
        self.reasons: dict[int, str] = {}
        self.filter: str | None = None

    def prepare(self) -> None:
        self.reasons = reason_table((self.path / EVENT / "format").read_text())
        exclude = self.exclude_reasons
        if not (exclude and self.reasons):
            return
        by_name = {v: k for k, v in self.reasons.items()}
        unknown = sorted(r for r in exclude if r not in by_name)
        if unknown:
            raise ConfigError(f"drops.exclude_reasons: unknown drop reason(s) {unknown}; "
                              f"this kernel knows e.g. {sorted(by_name)[:5]}")
        # The kernel discards excluded records before they reach the ring: no parse cost.
        expr = " && ".join(f"reason != {by_name[r]}" for r in sorted(exclude))
        try:
            self.write(f"{EVENT}/filter", expr)
            self.filter = expr
        except OSError as exc:
            log.warning("tracepoint filter %r refused (%s); filtering in the agent", expr, exc)


class TracepointDrops:
    """Collector: aggregated kfree_skb drops; a signature that keeps dropping is published at
    most once per ``interval`` seconds, a new one within ``tick`` (DropAggregator.due).

    ``reader``: ``raw`` walks the binary per-CPU ring pages (``trace_pipe_raw``, see
    rawtrace.py; the kernel does no text formatting, locations come from /proc/kallsyms) —
    the default; ``text`` parses ``trace_pipe``. ``raw`` falls back to ``text`` when kallsyms
    addresses are hidden or the event format is unexpected.
    Other options: ``interval`` (s), ``tick`` (s), ``buffer_kb`` (per CPU),
    ``exclude_reasons`` (names, filtered in the kernel), ``read_budget`` (bytes per wakeup).
    """

    name = "drops.tracepoint"
    source = "tracepoint"

    def __init__(self, *, interval: float = 1.0, buffer_kb: int = 4096,
                 exclude_reasons: frozenset[str] = frozenset(), read_budget: int = 4 << 20,
                 reader: str = "raw", tracefs: Path | None = None, tick: float = 0.05) -> None:
        if interval <= 0:
            raise ConfigError("[drops] interval must be > 0")
        if tick <= 0:
            raise ConfigError("[drops] tick must be > 0")
        if buffer_kb < 4:
            raise ConfigError("[drops] buffer_kb must be >= 4")
        if reader not in ("raw", "text"):
            raise ConfigError(f"[drops] reader must be 'raw' or 'text', not {reader!r}")
        self.interval = interval
        self.buffer_kb = buffer_kb
        self.exclude_reasons = frozenset(exclude_reasons)
        self.read_budget = read_budget
        self.reader = reader
        self.tracefs = tracefs
        # The ring is read every tick (the raw pipes wake a poller only when half full).
        self.tick = min(tick, interval)
        self.agg = DropAggregator(self.source, tick=self.tick, interval=interval)
        self.parser = KfreeSkbParser(self.agg, clock_offset_ns=boottime_offset_ns())
        self.raw: Any = None
        """The RawPageParser when reading raw pages."""
        self.instance: KfreeSkbInstance | None = None
        self.ready = asyncio.Event()
        """Set once the event is enabled and read (tests and benchmarks wait on it)."""
        self.bytes_read = 0
        self._raw_fds: dict[int, int] = {}
        self._page_size = 4096
        self._window_start = time.time_ns()
        self._accounted_at = time.monotonic()
        self._bad_reported = 0

    # -- reading (add_reader callbacks) ---------------------------------------------------------
    # Each wakeup reads until the pipe is empty or the budget is spent, so the loop gets control
    # back between wakeups and a storm cannot starve publishing.
    def _drain(self) -> None:
        inst = self.instance
        if inst is None or inst.pipe_fd is None:
            return
        budget = self.read_budget
        while budget > 0:
            data = inst.read(min(budget, 1 << 20))
            if not data:
                return
            self.bytes_read += len(data)
            budget -= len(data)
            self.parser.feed(data)

    def _drain_raw(self, fd: int, budget: int | None = None) -> None:
        budget = self.read_budget if budget is None else budget
        size = self._page_size
        feed = self.raw.feed_page
        while budget > 0:
            try:
                page = os.read(fd, size)
            except (BlockingIOError, InterruptedError):
                return
            if not page:
                return
            self.bytes_read += len(page)
            budget -= len(page)
            feed(page)

    def _drain_any(self) -> None:
        if self._raw_fds:
            for fd in self._raw_fds.values():
                self._drain_raw(fd)
        else:
            self._drain()

    def _drain_all(self) -> None:
        if self._raw_fds:
            for fd in self._raw_fds.values():
                self._drain_raw(fd, budget=1 << 62)
            return
        inst = self.instance
        while inst is not None and inst.pipe_fd is not None:
            data = inst.read(1 << 20)
            if not data:
                return
            self.bytes_read += len(data)
            self.parser.feed(data)

    def _open_raw(self) -> bool:
        """Set up the raw reader; False (with one log line) if it cannot work here."""
        from .rawtrace import KfreeSkbLayout, RawPageParser

        assert self.instance is not None
        try:
            layout = KfreeSkbLayout.from_format((self.instance.path / EVENT / "format").read_text())
        except (OSError, ValueError) as exc:
            log.info("drops: raw pages unusable (%s); reading trace_pipe text", exc)
            return False
        ks = Kallsyms.load()
        if not len(ks):
            log.info("drops: /proc/kallsyms addresses hidden; reading trace_pipe text")
            return False
        cache: dict[int, str] = {}

        def resolve(pc: int) -> str:
            loc = cache.get(pc)
            if loc is None:
                loc = cache[pc] = ks.resolve(pc)
            return loc

        exclude = self.exclude_reasons if self.instance.filter is None else frozenset()
        self.raw = RawPageParser(self.agg, layout, self.instance.reasons, resolve,
                                 clock_offset_ns=self.parser.clock_offset_ns, exclude=exclude)
        with contextlib.suppress(OSError, ValueError):
            kb = int((self.instance.path / "buffer_subbuf_size_kb").read_text().split()[0])
            self._page_size = kb * 1024
        self._raw_fds = self.instance.open_raw_pipes()
        return True

    # -- accounting and publishing ---------------------------------------------------------------
    def _flush(self, sink: Any, final: bool = False) -> None:
        now = time.time_ns()
        mono = time.monotonic()
        if not final and mono - self._accounted_at < self.agg.interval:
            self._publish_due(sink, now, mono)  # the stats files: once per interval
            return
        self._accounted_at = mono
        if self.instance is not None:
            sink.lost("tracepoint.ring_overrun", self.instance.overrun_delta())
        bad_now = self.parser.bad_lines + (self.raw.bad_pages if self.raw else 0)
        bad = bad_now - self._bad_reported
        if bad:
            self._bad_reported = bad_now
            sink.lost("tracepoint.parse_error", bad)
            log.warning("tracepoint: %d trace record(s)/page(s) not understood, e.g. %r",
                        bad, self.parser.last_bad)
        if final:
            events = self.agg.flush()
            if events:
                sink.emit_batch("drop", events, t0=self._window_start, t1=now, mode="alert")
            return
        self._publish_due(sink, now, mono)

    def _publish_due(self, sink: Any, now: int, mono: float) -> None:
        events = self.agg.due(mono)
        if events:
            # One batch per tick with anything due, published at once (not held for the
            # runner's batching).
            sink.emit_batch("drop", events, t0=self._window_start, t1=now, mode="alert")
            self._window_start = now

    async def run(self, sink: Any) -> None:
        sink.declare_loss("tracepoint.ring_overrun")
        sink.declare_loss("tracepoint.parse_error")
        loop = asyncio.get_running_loop()
        self.instance = KfreeSkbInstance.create(buffer_kb=self.buffer_kb,
                                                exclude_reasons=self.exclude_reasons,
                                                tracefs=self.tracefs)
        if self.exclude_reasons and self.instance.filter is None:
            self.parser.exclude = self.exclude_reasons  # the kernel would not filter for us
        readers: list[int] = []
        try:
            if self.reader == "raw" and self._open_raw():
                for fd in self._raw_fds.values():
                    loop.add_reader(fd, self._drain_raw, fd)
                    readers.append(fd)
            else:
                fd = self.instance.open_pipe()
                loop.add_reader(fd, self._drain)
                readers.append(fd)
            self.ready.set()
            if kernel_tracefs.mounted_note:
                sink.state(self.name, "running", kernel_tracefs.mounted_note)
            log.info("drops: kfree_skb via %s (%s)", self.instance.path,
                     "raw pages" if self._raw_fds else "trace_pipe")
            while True:
                await asyncio.sleep(self.tick)
                self._drain_any()  # also covers a wakeup the poll did not deliver
                self._flush(sink)
        finally:
            for fd in readers:
                loop.remove_reader(fd)
            # Stop new records, read what the ring still holds, then account and remove.
            self.instance.disable()
            with contextlib.suppress(OSError):
                self._drain_all()
            self.parser.finish()
            self._flush(sink, final=True)
            self._raw_fds = {}
            self.instance.remove()

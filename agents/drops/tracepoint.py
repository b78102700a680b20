"""``skb:kfree_skb`` through a private tracefs instance: reason, location and protocol of drops.

    KfreeSkbParser     sans-IO: trace_pipe bytes -> aggregator keys (keeps the partial tail)
    reason_table()     reason number -> name, from the event's own ``format`` file
    TraceInstance      one private instance ``instances/netevents-<pid>-<random>``: create,
                       filter, enable, read overruns, remove (also at exit and on SIGTERM)
    TracepointDrops    the collector: ``loop.add_reader`` on the instance's per-CPU
                       trace_pipe_raw (rawtrace.py, the default) or its text trace_pipe; one
                       aggregated window per ``interval``; ring overruns -> own loss

The global trace buffer is never touched: other tools (perf, trace-cmd, a second agent) keep
theirs. The instance's ring overwrites its oldest events when the reader falls behind; the
per-CPU ``stats`` files count them (``overrun:``) and we report the increase as
``tracepoint.ring_overrun``, so drops seen plus drops lost is what the kernel freed.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import logging
import os
import re
import secrets
import signal
import threading
import time
from pathlib import Path
from typing import Any

from netevents.errors import CapabilityError, ConfigError

from ..kernel.kallsyms import Kallsyms, normalize_location
from .aggregate import DropAggregator

log = logging.getLogger("netevents.agent.drops")

TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
INSTANCE_PREFIX = "netevents-"
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


def find_tracefs() -> Path:
    """The tracefs mount.

    Raises:
        CapabilityError: tracefs is not mounted or not accessible (needs root / CAP_SYS_ADMIN).
    """
    for cand in TRACEFS_CANDIDATES:
        p = Path(cand)
        try:
            if not (p / "instances").is_dir():
                continue
            writable = os.access(p / "instances", os.W_OK)
        except PermissionError:
            writable = False
        if not writable:
            raise CapabilityError(
                "CAP_SYS_ADMIN",
                f"tracefs at {p} is not accessible: the kfree_skb tracepoint needs root "
                "(CAP_SYS_ADMIN, or CAP_PERFMON with write access to tracefs)")
        return p
    raise CapabilityError(
        "tracefs", "tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing); "
        "the kfree_skb tracepoint source cannot run")


# Live instances of this process, removed at exit and on SIGTERM even if nobody cancels us.
_LIVE: set[TraceInstance] = set()
_LIVE_LOCK = threading.Lock()
_SIGTERM_CHAINED = False


def _remove_all_live() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for inst in live:
        inst.remove()


atexit.register(_remove_all_live)


def _sigterm_safety(signum: int, frame: Any) -> None:
    # Nobody else handles SIGTERM in this process: clean up, then die the default way.
    _remove_all_live()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _install_sigterm_safety() -> None:
    """If SIGTERM would kill us without running ``finally`` blocks, remove instances first.

    A program that handles SIGTERM itself (the agent CLI turns it into a clean shutdown) keeps
    its handler; the collector's ``finally`` then removes the instance.
    """
    global _SIGTERM_CHAINED
    if _SIGTERM_CHAINED or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _sigterm_safety)
        _SIGTERM_CHAINED = True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(tracefs: Path) -> list[str]:
    """Remove ``netevents-<pid>-*`` instances whose process is gone (an agent killed by SIGKILL)."""
    removed = []
    for d in (tracefs / "instances").glob(f"{INSTANCE_PREFIX}*"):
        parts = d.name.split("-")
        if len(parts) >= 3 and parts[1].isdigit() and not _pid_alive(int(parts[1])):
            with contextlib.suppress(OSError):
                (d / EVENT / "enable").write_text("0")
            with contextlib.suppress(OSError):
                d.rmdir()
                removed.append(d.name)
    return removed


class TraceInstance:
    """A private tracefs instance with ``skb:kfree_skb`` (or the ``events`` given) enabled;
    remove() is idempotent.

    Raises (from :meth:`create`):
        CapabilityError: no tracefs, no permission, or no such event.
    """

    def __init__(self, path: Path, events: tuple[str, ...] = (EVENT,)) -> None:
        self.path = path
        self.events = events
        self.pipe_fd: int | None = None
        self.raw_fds: dict[int, int] = {}
        self.reasons: dict[int, str] = {}
        self.filter: str | None = None
        self._overrun_base: dict[int, int] = {}
        self._removed = False

    @classmethod
    def create(cls, *, buffer_kb: int = 4096, exclude_reasons: frozenset[str] = frozenset(),
               tracefs: Path | None = None, events: tuple[str, ...] = (EVENT,)) -> TraceInstance:
        """``events``: paths under the tracefs root (``events/<system>/<name>``) to enable."""
        root = tracefs or find_tracefs()
        for event in events:
            if not (root / event).is_dir():
                name = ":".join(event.split("/")[1:3])
                raise CapabilityError(name, f"tracefs at {root} has no {name} event (kernel too old?)")
        sweep_stale(root)
        name = f"{INSTANCE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        path = root / "instances" / name
        try:
            path.mkdir()
        except PermissionError as exc:
            raise CapabilityError("CAP_SYS_ADMIN",
                                  f"cannot create tracefs instance {path}: {exc.strerror}") from exc
        except OSError as exc:
            raise CapabilityError("tracefs", f"cannot create tracefs instance {path}: {exc}") from exc
        inst = cls(path, events)
        with _LIVE_LOCK:
            _LIVE.add(inst)
        _install_sigterm_safety()
        try:
            inst._configure(buffer_kb, exclude_reasons)
        except BaseException:
            inst.remove()
            raise
        return inst

    def _write(self, rel: str, value: str) -> None:
        with open(self.path / rel, "w") as f:
            f.write(value)

    def _configure(self, buffer_kb: int, exclude: frozenset[str]) -> None:
        self._write("buffer_size_kb", str(buffer_kb))
        # CLOCK_BOOTTIME: converted to epoch time with one offset taken at start.
        with contextlib.suppress(OSError):
            self._write("trace_clock", "boot")
        # Wake the reader on any event, not when the ring is half full (the default 50).
        with contextlib.suppress(OSError):
            self._write("buffer_percent", "0")
        if EVENT in self.events:
            self.reasons = reason_table((self.path / EVENT / "format").read_text())
        if exclude and self.reasons:
            by_name = {v: k for k, v in self.reasons.items()}
            unknown = sorted(r for r in exclude if r not in by_name)
            if unknown:
                raise ConfigError(f"drops.exclude_reasons: unknown drop reason(s) {unknown}; "
                                  f"this kernel knows e.g. {sorted(by_name)[:5]}")
            # The kernel discards excluded records before they reach the ring: no parse cost.
            expr = " && ".join(f"reason != {by_name[r]}" for r in sorted(exclude))
            try:
                self._write(f"{EVENT}/filter", expr)
                self.filter = expr
            except OSError as exc:
                log.warning("tracepoint filter %r refused (%s); filtering in the agent", expr, exc)
        self._overrun_base = self.overruns()
        for event in self.events:
            self._write(f"{event}/enable", "1")

    def open_pipe(self) -> int:
        """The instance's trace_pipe, non-blocking (poll says readable when data waits)."""
        self.pipe_fd = os.open(self.path / "trace_pipe", os.O_RDONLY | os.O_NONBLOCK)
        return self.pipe_fd

    def open_raw_pipes(self) -> dict[int, int]:
        """cpu -> non-blocking fd of ``per_cpu/cpuN/trace_pipe_raw`` (closed by remove())."""
        for cpu_dir in sorted((self.path / "per_cpu").glob("cpu*")):
            fd = os.open(cpu_dir / "trace_pipe_raw", os.O_RDONLY | os.O_NONBLOCK)
            self.raw_fds[int(cpu_dir.name[3:])] = fd
        return self.raw_fds

    def read(self, size: int = 1 << 20) -> bytes | None:
        """Whatever the pipe holds (up to ``size``), or None when it is empty."""
        assert self.pipe_fd is not None
        try:
            return os.read(self.pipe_fd, size)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EINTR):
                return None
            raise

    def overruns(self) -> dict[int, int]:
        """Per-CPU ``overrun`` + ``dropped events`` of this instance's ring (cumulative)."""
        out: dict[int, int] = {}
        for cpu_dir in (self.path / "per_cpu").glob("cpu*"):
            try:
                text = (cpu_dir / "stats").read_text()
            except OSError:
                continue
            n = 0
            for line in text.splitlines():
                name, _, value = line.partition(":")
                if name.strip() in ("overrun", "dropped events"):
                    with contextlib.suppress(ValueError):
                        n += int(value.strip())
            out[int(cpu_dir.name[3:])] = n
        return out

    def overrun_delta(self) -> int:
        """Events the ring lost since the last call."""
        now = self.overruns()
        delta = sum(max(0, v - self._overrun_base.get(cpu, 0)) for cpu, v in now.items())
        self._overrun_base = now
        return delta

    def disable(self) -> None:
        for event in self.events:
            with contextlib.suppress(OSError):
                self._write(f"{event}/enable", "0")

    def remove(self) -> None:
        """Disable the event, close the pipe and remove the instance. Never raises."""
        if self._removed:
            return
        self._removed = True
        self.disable()
        for fd in [self.pipe_fd, *self.raw_fds.values()]:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.pipe_fd = None
        self.raw_fds = {}
        for _ in range(50):
            try:
                self.path.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    log.warning("cannot remove tracefs instance %s: %s", self.path, exc)
                    break
                time.sleep(0.01)  # a reader still has a file open; it is closing
        with _LIVE_LOCK:
            _LIVE.discard(self)


def boottime_offset_ns() -> int:
    """Add to a CLOCK_BOOTTIME reading to get epoch ns."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


class TracepointDrops:
    """Collector: aggregated kfree_skb drops, one window per ``interval`` seconds.

    ``reader``: ``raw`` walks the binary per-CPU ring pages (``trace_pipe_raw``, see
    rawtrace.py; the kernel does no text formatting, locations come from /proc/kallsyms) —
    the default; ``text`` parses ``trace_pipe``. ``raw`` falls back to ``text`` when kallsyms
    addresses are hidden or the event format is unexpected.
    Other options: ``interval`` (s), ``buffer_kb`` (per CPU), ``exclude_reasons`` (names,
    filtered in the kernel), ``read_budget`` (bytes per wakeup).
    """

    name = "drops.tracepoint"
    source = "tracepoint"

    def __init__(self, *, interval: float = 1.0, buffer_kb: int = 4096,
                 exclude_reasons: frozenset[str] = frozenset(), read_budget: int = 4 << 20,
                 reader: str = "raw", tracefs: Path | None = None) -> None:
        if interval <= 0:
            raise ConfigError("[drops] interval must be > 0")
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
        self.agg = DropAggregator(self.source)
        self.parser = KfreeSkbParser(self.agg, clock_offset_ns=boottime_offset_ns())
        self.raw: Any = None
        """The RawPageParser when reading raw pages."""
        self.instance: TraceInstance | None = None
        self.ready = asyncio.Event()
        """Set once the event is enabled and read (tests and benchmarks wait on it)."""
        self.bytes_read = 0
        self._raw_fds: dict[int, int] = {}
        self._page_size = 4096
        self._window_start = time.time_ns()
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
        if self.instance is not None:
            sink.lost("tracepoint.ring_overrun", self.instance.overrun_delta())
        bad_now = self.parser.bad_lines + (self.raw.bad_pages if self.raw else 0)
        bad = bad_now - self._bad_reported
        if bad:
            self._bad_reported = bad_now
            sink.lost("tracepoint.parse_error", bad)
            log.warning("tracepoint: %d trace record(s)/page(s) not understood, e.g. %r",
                        bad, self.parser.last_bad)
        events = self.agg.flush()
        if events:
            # One batch per window, published at once (not held for the runner's batching).
            sink.emit_batch("drop", events, t0=self._window_start, t1=now, mode="alert")
        self._window_start = now

    async def run(self, sink: Any) -> None:
        sink.declare_loss("tracepoint.ring_overrun")
        sink.declare_loss("tracepoint.parse_error")
        loop = asyncio.get_running_loop()
        self.instance = TraceInstance.create(buffer_kb=self.buffer_kb,
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
            log.info("drops: kfree_skb via %s (%s)", self.instance.path,
                     "raw pages" if self._raw_fds else "trace_pipe")
            while True:
                await asyncio.sleep(self.interval)
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

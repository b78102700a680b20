"""Private tracefs instances: a trace ring of our own, never the global one.

    find_tracefs()       the tracefs mount (mounting it at /sys/kernel/tracing when it is not
                         mounted and we may), or a CapabilityError naming what is missing
    TraceInstance        ``instances/netevents-<pid>-<random>`` with the given events enabled:
                         create (buffer size, boot clock, wake on every event), open the text
                         ``trace_pipe`` or the per-CPU ``trace_pipe_raw``, read ring overruns,
                         remove (also at exit and on SIGTERM); ``prepare()`` is the hook a
                         subclass uses to set filters before the events are enabled
    sweep_stale(root)    remove instances left by agents that died without cleaning up
    boottime_offset_ns() CLOCK_BOOTTIME -> epoch ns (the clock instances and BPF programs use)

Other tools (perf, trace-cmd, a second agent) keep their own buffers. An instance's ring
overwrites its oldest events when the reader falls behind; the per-CPU ``stats`` files count
them (``overrun:``), so a source can report what it lost.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import os
import secrets
import signal
import threading
import time
from pathlib import Path
from typing import Any, Self

from netevents.errors import CapabilityError

log = logging.getLogger("netevents.agent.kernel")

TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
INSTANCE_PREFIX = "netevents-"
MOUNT_POINT = Path("/sys/kernel/tracing")

mounted_note: str | None = None
"""Set once this process mounted tracefs itself: the line the sources put in their status."""
_MOUNT_LOCK = threading.Lock()


def _tracepoints(events: tuple[str, ...]) -> str:
    """``events/skb/kfree_skb`` -> ``the kfree_skb tracepoint`` (for messages)."""
    names = "/".join(e.rstrip("/").rsplit("/", 1)[-1] for e in events)
    return f"the {names} tracepoint" if names else "a tracepoint"


def mount_tracefs(target: Path = MOUNT_POINT) -> str:
    """Mount tracefs at ``target`` (mount(2), as ``mount -t tracefs nodev <target>``); returns
    the line that says so.

    A fresh host (or a container with the host's /sys) often has tracefs compiled in but not
    mounted; only the test set-up and some distributions mount it. Needs CAP_SYS_ADMIN.

    Raises:
        OSError: the kernel refused (no CAP_SYS_ADMIN, no tracefs in this kernel, read-only /sys).
    """
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    # int mount(const char *source, const char *target, const char *fstype, unsigned long
    #           flags, const void *data)   (sys/mount.h)
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]
    if libc.mount(b"nodev", os.fsencode(target), b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount -t tracefs nodev {target}: {os.strerror(err)}")
    return f"tracefs was not mounted: the agent mounted it at {target}"


def find_tracefs(events: tuple[str, ...] = ()) -> Path:
    """The tracefs mount (``events`` only name what needs it in the error). When none is
    mounted and we run as root, tracefs is mounted at /sys/kernel/tracing first (logged once,
    and :data:`mounted_note` says so for the sources' status).

    Raises:
        CapabilityError: tracefs is not mounted and cannot be, or not accessible (needs root /
            CAP_SYS_ADMIN).
    """
    global mounted_note
    what = _tracepoints(events)
    found = _mounted_tracefs(what)
    if found is not None:
        return found
    with _MOUNT_LOCK:
        found = _mounted_tracefs(what)  # another thread may have mounted it meanwhile
        if found is not None:
            return found
        if os.geteuid() != 0 or not MOUNT_POINT.is_dir():
            raise CapabilityError(
                "tracefs", f"tracefs is not mounted (mount -t tracefs nodev {MOUNT_POINT}, as "
                f"root); {what} source cannot run")
        try:
            note = mount_tracefs(MOUNT_POINT)
        except OSError as exc:
            raise CapabilityError(
                "tracefs", f"tracefs is not mounted and mounting it failed ({exc.strerror}: "
                f"{exc}); {what} source cannot run") from None
        mounted_note = note
        log.warning("%s", note)
    found = _mounted_tracefs(what)
    if found is None:
        raise CapabilityError("tracefs", f"mounted tracefs at {MOUNT_POINT} but it has no "
                              f"instances directory; {what} source cannot run")
    return found


def _mounted_tracefs(what: str) -> Path | None:
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
                f"tracefs at {p} is not accessible: {what} needs root "
                "(CAP_SYS_ADMIN, or CAP_PERFMON with write access to tracefs)")
        return p
    return None


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
                (d / "events" / "enable").write_text("0")  # every event of that instance
            with contextlib.suppress(OSError):
                d.rmdir()
                removed.append(d.name)
    return removed


class TraceInstance:
    """A private tracefs instance with ``events`` (paths under the tracefs root,
    ``events/<system>/<name>``) enabled; remove() is idempotent.

    A subclass sets ``EVENTS`` (the default events) and overrides :meth:`prepare` to write
    filters; extra keyword arguments of :meth:`create` go to its constructor.

    Raises (from :meth:`create`):
        CapabilityError: no tracefs, no permission, or no such event.
    """

    EVENTS: tuple[str, ...] = ()

    def __init__(self, path: Path, events: tuple[str, ...]) -> None:
        self.path = path
        self.events = events
        self.pipe_fd: int | None = None
        self.raw_fds: dict[int, int] = {}
        self._overrun_base: dict[int, int] = {}
        self._removed = False

    @classmethod
    def create(cls, *, buffer_kb: int = 4096, tracefs: Path | None = None,
               events: tuple[str, ...] | None = None, **options: Any) -> Self:
        events = tuple(events or cls.EVENTS)
        if not events:
            raise ValueError("a trace instance needs at least one event")
        root = tracefs or find_tracefs(events)
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
        inst = cls(path, events, **options)
        with _LIVE_LOCK:
            _LIVE.add(inst)
        _install_sigterm_safety()
        try:
            inst._configure(buffer_kb)
        except BaseException:
            inst.remove()
            raise
        return inst

    def write(self, rel: str, value: str) -> None:
        """Write ``value`` to the instance's file ``rel`` (e.g. ``events/skb/kfree_skb/filter``)."""
        with open(self.path / rel, "w") as f:
            f.write(value)

    def _configure(self, buffer_kb: int) -> None:
        self.write("buffer_size_kb", str(buffer_kb))
        # CLOCK_BOOTTIME: converted to epoch time with one offset taken at start.
        with contextlib.suppress(OSError):
            self.write("trace_clock", "boot")
        # Wake the reader on any event, not when the ring is half full (the default 50).
        with contextlib.suppress(OSError):
            self.write("buffer_percent", "0")
        self.prepare()
        self._overrun_base = self.overruns()
        for event in self.events:
            self.write(f"{event}/enable", "1")

    def prepare(self) -> None:
        """Runs once the ring is set up, before the events are enabled (filters go here)."""

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
                self.write(f"{event}/enable", "0")

    def remove(self) -> None:
        """Disable the events, close the pipes and remove the instance. Never raises."""
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

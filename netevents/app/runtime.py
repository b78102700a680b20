"""Process plumbing every command shares: stop on SIGINT/SIGTERM, stop after a duration."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator


def stop_on_signals(stop: asyncio.Event) -> None:
    """Set ``stop`` on SIGINT and SIGTERM (the command then drains and exits)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


async def stop_after(stop: asyncio.Event, seconds: float | None) -> None:
    """Set ``stop`` after ``seconds`` (never, when None)."""
    if seconds is not None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await stop.wait()
        stop.set()


@contextlib.asynccontextmanager
async def stopping(duration: float | None) -> AsyncIterator[asyncio.Event]:
    """An event set by SIGINT/SIGTERM or after ``duration`` seconds, for a command's main task.

    The command's work runs in the caller's task, not in a TaskGroup: a BusError or OSError must
    reach main() as itself (one clear line), not wrapped in an ExceptionGroup."""
    stop = asyncio.Event()
    stop_on_signals(stop)
    timer = asyncio.create_task(stop_after(stop, duration))
    try:
        yield stop
    finally:
        timer.cancel()


def port_holder(port: int) -> str | None:
    """``"name (pid N)"`` of the process listening on TCP ``port``, when /proc tells."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    cols = line.split()
                    if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(cols[9])
        except OSError:
            continue
    if not inodes:
        return None
    wanted = {f"socket:[{i}]" for i in inodes}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in wanted for fd in fds):
                with open(f"/proc/{pid}/comm") as f:
                    return f"{f.read().strip()} (pid {pid})"
        except OSError:
            continue
    return None

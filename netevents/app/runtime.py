"""Process plumbing every command shares: stop on SIGINT/SIGTERM, stop after a duration."""

from __future__ import annotations

import asyncio
import contextlib
import signal


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

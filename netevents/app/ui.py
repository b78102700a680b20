"""The terminal UI of `up`, `top` and `demo`: a full-screen view redrawn each second, with
single-key switching between its pages, and the progress line of non-interactive runs."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import Any


class Keys:
    """Single keypresses from a terminal, without blocking the loop (cbreak mode, restored)."""

    def __init__(self) -> None:
        self.pressed: asyncio.Queue[str] = asyncio.Queue()
        self._saved: Any = None

    def __enter__(self) -> Keys:
        if sys.stdin.isatty():
            import termios
            import tty

            self._saved = termios.tcgetattr(sys.stdin)
            tty.setcbreak(sys.stdin.fileno())
            asyncio.get_running_loop().add_reader(
                sys.stdin.fileno(), lambda: self.pressed.put_nowait(sys.stdin.read(1)))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None:
            import termios

            asyncio.get_running_loop().remove_reader(sys.stdin.fileno())
            termios.tcsetattr(sys.stdin, termios.TCSADRAIN, self._saved)


async def draw(view: Any, stop: asyncio.Event, start_view: str, interval: float = 1.0) -> None:
    """Redraw ``view.render(page)`` until ``stop`` (or ``q``); the view's KEYS switch pages."""
    keys = getattr(view, "KEYS", None) or {"h": "hosts", "d": "drops", "c": "counters", "p": "peers"}
    current = start_view
    with Keys() as kb:
        while not stop.is_set():
            sys.stdout.write("\x1b[H\x1b[2J" + view.render(current) + "\n")
            sys.stdout.flush()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    key = await kb.pressed.get()
                    if key == "q":
                        stop.set()
                    elif key == "s" and hasattr(view, "cycle_sort"):
                        view.cycle_sort()  # the peers view's order
                    current = keys.get(key, current)


async def progress(view: Any, stop: asyncio.Event, started: float, every: float = 2.0,
                   prefix: str = "netevents up") -> None:
    """One line on stderr every ``every`` seconds: the events seen so far, per kind."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(every):
                await stop.wait()
        counts = ", ".join(f"{k} {v}" for k, v in sorted(view.events.items())) or "nothing yet"
        print(f"{prefix}: {time.monotonic() - started:4.0f}s  events: {counts}",
              file=sys.stderr, flush=True)

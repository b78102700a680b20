"""The consumer API for trio programs, through trio-asyncio.

    import trio, netevents.trio

    async def main():
        async with netevents.trio.open_bus("nats://127.0.0.1:4222") as bus:
            async with bus.subscribe(kinds=["drop"]) as sub:
                async for batch in sub:
                    print(batch.host, list(batch.rows()))

    trio.run(main)

nats-py is an asyncio library; trio-asyncio runs an asyncio loop inside trio so the same
:class:`~netevents.bus.Bus` and :class:`~netevents.bus.Subscription` serve trio code. Requires
the ``trio`` extra (``pip install 'netevents[trio]'``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

try:
    import trio_asyncio
except ImportError as exc:  # pragma: no cover - depends on the extra
    raise ImportError("netevents.trio needs trio-asyncio: pip install 'netevents[trio]'") from exc

from .bus import Bus, Subscription, connect
from .codec import Batch


class TrioSubscription:
    """A :class:`Subscription` seen from trio: ``async for batch in sub``."""

    def __init__(self, sub: Subscription) -> None:
        self._sub = sub

    @property
    def rejected(self):
        return self._sub.rejected

    @property
    def missed(self) -> int:
        return self._sub.missed

    @property
    def tracker(self):
        return self._sub.tracker

    async def next(self, timeout: float | None = None) -> Batch | None:
        return await trio_asyncio.aio_as_trio(self._sub.next)(timeout)

    def __aiter__(self) -> TrioSubscription:
        return self

    async def __anext__(self) -> Batch:
        return await trio_asyncio.aio_as_trio(self._sub.__anext__)()

    async def __aenter__(self) -> TrioSubscription:
        await trio_asyncio.aio_as_trio(self._sub.start)()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await trio_asyncio.aio_as_trio(self._sub.close)()


class TrioBus:
    """A :class:`Bus` seen from trio."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    def subscribe(self, *args: Any, **kwargs: Any) -> TrioSubscription:
        return TrioSubscription(self.bus.subscribe(*args, **kwargs))

    async def publish(self, batch: Batch) -> None:
        await trio_asyncio.aio_as_trio(self.bus.publish)(batch)

    async def flush(self) -> None:
        await trio_asyncio.aio_as_trio(self.bus.flush)()


@contextlib.asynccontextmanager
async def open_bus(url: str | None = None, **kwargs: Any) -> AsyncIterator[TrioBus]:
    """Connect to the bus from trio (opens a trio-asyncio loop for the connection's lifetime).

    Raises:
        BusError: if no server answers at ``url``.
    """
    async with trio_asyncio.open_loop():
        cm = connect(url, **kwargs)
        bus = await trio_asyncio.aio_as_trio(cm.__aenter__)()
        try:
            yield TrioBus(bus)
        finally:
            await trio_asyncio.aio_as_trio(cm.__aexit__)(None, None, None)

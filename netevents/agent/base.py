"""The collector interface: what one kernel source implements, and the sink it writes to.

A collector is small (Telegraf's ``Gather(Accumulator)``): it reads its kernel source and
hands events to a :class:`Sink`; the runner owns batching, sequence numbers, queues, publishing
and the status heartbeat, so a collector needs no locks and no bus code.

    class MySource:
        name = "mysource"
        async def run(self, sink: Sink) -> None:
            sink.declare_loss("mysource.ring_overrun")      # shows 0 in status until it happens
            while True:
                ...                                           # read the kernel (add_reader/thread)
                sink.emit("drop", {...})                      # or emit_batch(...)
                sink.lost("mysource.ring_overrun", n)         # own loss, counted and reported

A collector that cannot run raises :class:`~netevents.errors.CapabilityError`; the runner marks
it unavailable with that reason, prints one line, and the other sources carry on.
"""

from __future__ import annotations

from typing import Any, Protocol


class Sink(Protocol):
    def emit(self, kind: str, event: Any, *, t0: int | None = None, t1: int | None = None) -> bool:
        """Queue one event (a record or a dict) for batching. False if the queue was full
        (the event is then counted as lost at ``queue.<kind>``)."""

    def emit_batch(self, kind: str, events: Any, *, t0: int | None = None, t1: int | None = None,
                   **fields: Any) -> bool:
        """Queue a whole batch (columnar frames, ipstat with ``residual``) with batch fields."""

    def lost(self, place: str, count: int) -> None:
        """Count ``count`` items lost at ``place`` (reported cumulatively in status)."""

    def declare_loss(self, place: str) -> None:
        """Make ``place`` appear in status with 0 before anything is lost there."""

    def state(self, source: str, state: str, reason: str = "") -> None:
        """Report a source as ``running``, ``unavailable`` (with reason) or ``stopped``."""

    def addresses(self, table: dict[str, list[str]], inodes: dict[str, int]) -> None:
        """The host's own addresses per namespace (and each namespace's inode) changed: they
        go out in the next status, published at once."""


class Collector(Protocol):
    name: str

    async def run(self, sink: Sink) -> None:
        """Read the source until cancelled. Raise CapabilityError if it cannot run here."""

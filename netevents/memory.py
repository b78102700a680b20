"""An in-memory bus with the publish side of :class:`netevents.bus.Bus`, for unit tests.

Batches are really encoded and decoded (so the codec is exercised), but nothing leaves the
process. Integration tests use a real nats-server instead.
"""

from __future__ import annotations

from .codec import MAX_BATCH_BYTES, Batch, decode_batch, encode_batch
from .subjects import event_subject


class MemoryBus:
    def __init__(self, max_payload: int = MAX_BATCH_BYTES) -> None:
        self.max_payload = max_payload
        self.messages: list[tuple[str, bytes, str]] = []
        self.fail = False
        """Set to True to make publish raise BusError (an outage)."""

    async def publish(self, batch: Batch) -> None:
        from .errors import BusError

        if self.fail:
            raise BusError("memory bus is down")
        data = encode_batch(batch, max_bytes=self.max_payload)
        self.messages.append((event_subject(batch.kind, batch.site, batch.host), data, batch.msg_id))

    async def flush(self) -> None:
        return None

    def batches(self, kind: str | None = None) -> list[Batch]:
        out = [decode_batch(data) for _s, data, _id in self.messages]
        return [b for b in out if kind is None or b.kind == kind]

"""A server whose max_payload is smaller than the bus's own: batches are split, not refused."""

import asyncio

import pytest

from netevents import connect
from netevents.agent.runner import AgentRunner, RunnerOptions
from netevents.bus import EmbeddedServer
from netevents.bus.client import batch_limit
from netevents.codec import HEADER_ROOM, MAX_BATCH_BYTES, MAX_PAYLOAD, Batch, encode_batch
from netevents.errors import OversizeError

SMALL = 64 * 1024


@pytest.fixture
def small_server(tmp_path):
    server = EmbeddedServer(tmp_path / "nats-store", port=0, max_payload=SMALL)
    server.start_blocking()
    try:
        yield server
    finally:
        server.stop_blocking()


def drops(n: int, size: int = 900) -> list[dict]:
    return [{"count": i + 1, "source": "dwdump", "payload": bytes([i % 256]) * size} for i in range(n)]


def test_the_batch_limit_leaves_the_headers_room_below_the_server_max_payload():
    assert batch_limit(None) == batch_limit(0) == MAX_BATCH_BYTES
    assert batch_limit(MAX_PAYLOAD) == MAX_BATCH_BYTES == MAX_PAYLOAD - HEADER_ROOM
    assert batch_limit(1 << 30) == MAX_BATCH_BYTES        # never more than a reader accepts
    assert batch_limit(SMALL) == SMALL - HEADER_ROOM
    assert 0 < batch_limit(1000) < 1000


@pytest.mark.integration
def test_against_a_small_max_payload_batches_are_split_and_all_arrive(small_server):
    async def main():
        async with connect(small_server.url) as bus:
            assert bus.nc.max_payload == SMALL
            assert bus.max_payload == SMALL - HEADER_ROOM
            # Fits the server's max_payload alone, not with its Nats-Msg-Id: the client refuses
            # it as oversize (the caller splits) instead of the server cutting the connection.
            big = Batch(kind="drop", site="s", host="h", run="r", seq=1, t0=1, t1=2,
                        events=drops(67))
            assert SMALL - HEADER_ROOM < len(encode_batch(big)) < SMALL
            with pytest.raises(OversizeError):
                await bus.publish(big)
            async with bus.subscribe(kinds=["drop"]) as sub:
                await bus.flush()
                stop = asyncio.Event()

                class Burst:
                    name = "burst"

                    async def run(self, sink):
                        for e in drops(300):
                            sink.emit("drop", e)
                        await asyncio.Event().wait()

                runner = AgentRunner(bus, [Burst()], RunnerOptions(host="h", max_events=300))
                asyncio.get_running_loop().call_later(1.0, stop.set)
                await runner.run(stop)
                got = []
                while (b := await sub.next(2)) is not None:
                    got.append(b)
            return dict(bus.errors), runner, sub, got

    errors, runner, sub, got = asyncio.run(main())
    drops_got = [b for b in got if b.kind == "drop"]
    assert len(drops_got) > 1                               # split ...
    assert sum(len(b) for b in drops_got) == 300            # ... and nothing lost
    assert [e["count"] for b in drops_got for e in b.events] == list(range(1, 301))
    assert runner.losses["publish.drop"] == 0 and sub.missed == 0 and not sub.rejected
    assert not errors, errors                    # no "Maximum Payload Violation", no reconnect

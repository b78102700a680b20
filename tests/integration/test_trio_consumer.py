"""A consumer written in trio reads real batches from a real server."""

import asyncio

import pytest

trio = pytest.importorskip("trio")
pytest.importorskip("trio_asyncio")

import netevents.trio  # noqa: E402
from netevents import connect  # noqa: E402
from netevents.codec import Batch  # noqa: E402


def test_trio_program_subscribes_and_sees_misses(nats_url):
    async def consumer():
        async with netevents.trio.open_bus(nats_url) as bus:
            async with bus.subscribe(kinds=["drop"]) as sub:
                got = []
                with trio.fail_after(20):
                    while len(got) < 2:
                        await bus.publish(Batch(kind="drop", site="s", host="trio-h", run="r",
                                                seq=1 if not got else 4, t0=1, t1=2,
                                                events=[{"count": 2, "source": "counter"}]))
                        await bus.flush()
                        b = await sub.next(1)
                        if b is not None:
                            got.append(b)
                return got, sub.missed

    got, missed = trio.run(consumer)
    assert [b.seq for b in got] == [1, 4]
    assert missed == 2
    assert got[0].events == [{"count": 2, "source": "counter"}]

    async def check_asyncio_side_still_works():
        async with connect(nats_url) as bus:
            await bus.flush()

    asyncio.run(check_asyncio_side_still_works())

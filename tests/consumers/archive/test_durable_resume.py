"""Durable subscriptions resume at the first unacknowledged batch, in order (the archive relies
on it): without the rewind, unacknowledged batches come back only after JetStream's ack wait,
behind newer ones, and a sequence tracker drops them as duplicates."""

from __future__ import annotations

import asyncio

import pytest

from netevents.bus import connect
from tests.framegen import gap_batch

pytestmark = pytest.mark.integration


def test_manual_ack_durable_resumes_in_order(nats_url):
    async def main():
        async with connect(nats_url, streams=True) as bus:
            for seq in range(1, 11):
                await bus.publish(gap_batch("h1", "r1", seq, [(seq, 1)]), ack=True)
            sub = bus.subscribe(kinds=["gap"], durable="t-resume", manual_ack=True, queue_size=4)
            async with sub:
                got = [await sub.next(timeout=5) for _ in range(5)]
                assert [b.seq for b in got] == [1, 2, 3, 4, 5]
                await sub.ack(got[0])
                await sub.ack(got[1])
                assert sub.unacked == 3
                await bus.flush()
            # a new subscriber with the same durable name (the restarted archiver)
            sub = bus.subscribe(kinds=["gap"], durable="t-resume", manual_ack=True)
            async with sub:
                seqs = []
                while len(seqs) < 8:
                    b = await sub.next(timeout=5)
                    assert b is not None, f"only {seqs} came back"
                    seqs.append(b.seq)
                    await sub.ack(b)
                assert seqs == list(range(3, 11))
                assert await sub.next(timeout=0.3) is None

    asyncio.run(main())

"""Fleet consumers on a real nats-server: a queue group splits one stream between two members;
`run_correlate` publishes incident batches that other subscribers decode."""

from __future__ import annotations

import asyncio
import time

from netevents.bus import connect
from netevents.codec import Batch
from netevents.consumers.correlate import run_correlate

NS = 1_000_000_000


def drop_batch(host: str, seq: int, ts: int, reason: str = "TCP_CSUM") -> Batch:
    ev = {"count": 3, "source": "counter", "reason": reason, "location": "tcp_v4_rcv+0x10",
          "first_ts": ts, "last_ts": ts}
    return Batch(kind="drop", site="local", host=host, run=f"run-{host}", seq=seq, t0=ts,
                 t1=ts + NS, events=[ev])


def test_two_queue_group_members_split_one_stream(nats_url):
    async def main():
        async with connect(nats_url) as bus:
            a = bus.subscribe(["drop"], queue="correlators")
            b = bus.subscribe(["drop"], queue="correlators")
            await a.start()
            await b.start()
            await bus.flush()
            now = time.time_ns()
            sent = {(h, s) for h in ("h1", "h2", "h3") for s in range(1, 101)}
            for h, s in sorted(sent):
                await bus.publish(drop_batch(h, s, now))
            await bus.flush()
            got: dict[str, set] = {"a": set(), "b": set()}
            for name, sub in (("a", a), ("b", b)):
                while (batch := await sub.next(timeout=1.0)) is not None:
                    got[name].add((batch.host, batch.seq))
            await a.close()
            await b.close()
            return got, a, b

    got, a, b = asyncio.run(main())
    assert got["a"] and got["b"], "both members got a share"
    assert not (got["a"] & got["b"]), "no batch went to both"
    assert got["a"] | got["b"] == {(h, s) for h in ("h1", "h2", "h3") for s in range(1, 101)}
    # holes of a member are the other member's share, not losses
    assert a.missed == 0 and b.missed == 0
    assert a.shared_holes + b.shared_holes > 0


def test_correlate_publishes_incident_batches(nats_url):
    async def main():
        stop = asyncio.Event()
        ready = asyncio.Event()
        async with connect(nats_url, streams=True) as bus:
            watch = bus.subscribe(["incident"])
            await watch.start()
            task = asyncio.create_task(run_correlate(nats_url, stop=stop, ready=ready,
                                                     token="correlator-test", tick_interval=0.1))
            await ready.wait()
            await asyncio.sleep(0.2)
            now = time.time_ns()
            await bus.publish(drop_batch("h1", 1, now))
            await bus.publish(drop_batch("h2", 1, now + NS))
            await bus.flush()
            batch = await watch.next(timeout=10)
            stop.set()
            corr = await task
            await watch.close()
            return batch, corr

    batch, corr = asyncio.run(main())
    assert batch is not None, "no incident batch published"
    assert batch.kind == "incident" and batch.host == "correlator-test" and batch.seq == 1
    inc = batch.events[0]
    assert inc["type"] == "drop_storm" and inc["hosts"] == ["h1", "h2"]
    assert inc["missing_input"] == {"h1/drop": 0, "h2/drop": 0}
    assert corr.counts["incident.drop_storm"] == 1

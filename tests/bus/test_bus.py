"""The bus against a real nats-server: publish, subscribe, misses, bad input, streams."""

import asyncio
import os

import msgpack

from netevents import connect
from netevents.codec import Batch


def batch(host="web-1", seq=1, kind="drop", run="run1", **over):
    fields = dict(kind=kind, site="dc1", host=host, run=run, seq=seq, t0=1, t1=2,
                  events=[{"count": seq, "source": "counter", "reason": "QDISC_DROP"}])
    fields.update(over)
    return Batch(**fields)


def test_subscriber_reports_exactly_how_many_batches_it_missed(nats_url):
    async def main():
        async with connect(nats_url, streams=True) as bus:
            async with bus.subscribe(kinds=["drop", "gap"]) as sub:
                for seq in (1, 2, 5, 6, 9):          # holes: 3-4, 7-8 -> 4 missed
                    await bus.publish(batch("web-1", seq))
                for seq in (1, 3):                   # hole: 2 -> 1 missed
                    await bus.publish(batch("web-2", seq))
                await bus.publish(batch("web-2", 1, kind="gap", run="run2",
                                        events=[{"iface": "eth0", "lost": 3, "cause": "ring_full"}]))
                got = [await sub.next(5) for _ in range(8)]
                assert None not in got
                return sub, got

    sub, got = asyncio.run(main())
    assert [b.missed for b in got if b.host == "web-1"] == [0, 0, 2, 0, 2]
    rep = sub.tracker.report()
    assert rep["web-1"]["drop"]["missed"] == 4
    assert rep["web-2"]["drop"]["missed"] == 1
    assert rep["web-2"]["gap"]["missed"] == 0
    assert sub.missed == 5


def test_bad_messages_are_rejected_one_by_one_and_the_consumer_goes_on(nats_url):
    good = batch().header() | {"events": [{"count": 1, "source": "counter"}]}

    def pack(**over):
        return msgpack.packb(good | over, use_bin_type=True)

    bad = [
        # 0xc1 is never valid msgpack (random bytes may begin a well-formed map, and then
        # be rejected as "schema")
        ("netevents.v1.drop.dc1.web-1", b"\xc1" + os.urandom(299)),
        ("netevents.v1.drop.dc1.web-1", pack()[:-4]),                  # truncated
        ("netevents.v1.drop.dc1.web-1", pack(v=9)),                    # wrong version
        ("netevents.v1.drop.dc1.web-1", pack(host="a.b")),             # host with a dot
        ("netevents.v1.drop.dc1.web-1", pack(host="*")),               # wildcard host
        ("netevents.v1.drop.dc1.web-1", pack(seq="x")),                # wrong type
        ("netevents.v1.drop.dc1.web-1", pack(host="web-2")),           # speaks for another host
        ("netevents.v1.drop.dc1.web-1", b"\xdd" + b"\xff" * 4),        # huge array length
    ]

    async def main():
        async with connect(nats_url) as bus:
            async with bus.subscribe(kinds=["drop"]) as sub:
                for subject, data in bad:
                    await bus.publish_raw(subject, data)
                await bus.publish(batch(seq=1))
                first = await sub.next(5)
                # 64 MiB cannot cross a server with an 8 MiB max_payload; the subscriber's own
                # check refuses it before parsing, exactly as it would on a bigger server.
                assert sub.accept("netevents.v1.drop.dc1.web-1", b"\0" * (64 << 20)) is None
                await bus.publish(batch(seq=2))
                second = await sub.next(5)
                return sub, first, second

    sub, first, second = asyncio.run(main())
    assert (first.seq, second.seq) == (1, 2)
    assert sub.rejected == {"malformed": 3, "version": 1, "schema": 3, "subject": 1, "oversize": 1}
    assert "oversize" in sub.last_error or "over the" in sub.last_error


def test_host_globs_filter_and_durable_consumers_resume(nats_url):
    async def main():
        async with connect(nats_url, streams=True) as bus:
            for seq in range(1, 4):
                await bus.publish(batch("web-1", seq), ack=True)
            await bus.publish(batch("db-1", 1), ack=True)
            async with bus.subscribe(kinds=["drop"], hosts=["web-*"], durable="t1") as sub:
                first = [await sub.next(5) for _ in range(2)]
            # A restarted durable consumer resumes after what it acknowledged.
            async with bus.subscribe(kinds=["drop"], hosts=["web-*"], durable="t1") as sub:
                rest = await sub.next(5)
                nothing = await sub.next(0.5)
            return first, rest, nothing

    first, rest, nothing = asyncio.run(main())
    assert [b.seq for b in first] == [1, 2]
    assert rest.seq == 3 and rest.host == "web-1"
    assert nothing is None


def test_a_durable_keeps_delivering_after_a_fetch_times_out_as_asyncio_does(nats_url, monkeypatch):
    """nats-py's fetch raises a bare asyncio.TimeoutError (not its own) when its no-wait probe
    takes the whole timeout, as happens on a loaded machine: the pull loop must take it as "no
    messages yet", not end (the durable would stop delivering for good)."""
    from nats.js.client import JetStreamContext

    fetch = JetStreamContext.PullSubscription.fetch
    raised = []

    async def slow_first(self, *args, **kwargs):
        if not raised:
            raised.append(1)
            raise asyncio.TimeoutError
        return await fetch(self, *args, **kwargs)

    monkeypatch.setattr(JetStreamContext.PullSubscription, "fetch", slow_first)

    async def main():
        async with connect(nats_url, streams=True) as bus:
            async with bus.subscribe(kinds=["drop"], hosts=["late-1"], durable="late") as sub:
                await bus.publish(batch("late-1", 1), ack=True)
                return await sub.next(10), raised

    got, raised_ = asyncio.run(main())
    assert raised_ == [1]
    assert got is not None and (got.host, got.seq) == ("late-1", 1)


def test_streams_are_created_idempotently_by_racing_processes(nats_url):
    async def main():
        async with connect(nats_url) as a, connect(nats_url) as b:
            await asyncio.gather(a.ensure_streams(), b.ensure_streams(), a.ensure_streams())
            names = [s.config.name async for s in _streams(a)]
            await a.publish(batch(seq=1), ack=True)
            info = await a.js.stream_info("NETEVENTS_EVENTS")
            await a.publish(batch(seq=1), ack=True)  # a retried publish: same Nats-Msg-Id
            info2 = await a.js.stream_info("NETEVENTS_EVENTS")
            return names, info.state.messages, info2.state.messages

    async def _streams(bus):
        for s in await bus.js.streams_info():
            yield s

    names, before, after = asyncio.run(main())
    assert sorted(names) == ["NETEVENTS_EVENTS", "NETEVENTS_FRAMES", "NETEVENTS_STATS"]
    assert before == after == 1  # JetStream dropped the duplicate


def test_a_consumer_that_falls_behind_is_told_how_far(nats_url):
    async def main():
        async with connect(nats_url) as bus:
            sub = bus.subscribe(kinds=["drop"], queue_size=10, pending_limit=50)
            async with sub:
                for seq in range(1, 501):
                    await bus.publish(batch(seq=seq))
                await bus.flush()
                await asyncio.sleep(0.3)
                lag = await sub.lag()
                got = []
                while (b := await sub.next(0.5)) is not None:
                    got.append(b)
                return sub, lag, got

    sub, lag, got = asyncio.run(main())
    assert lag["queued"] == 10                                 # its own queue is full
    assert sub.dropped + lag["slow_consumer_drops"] > 0        # and it was told it lost some
    rep = sub.tracker.report()["web-1"]["drop"]
    # Everything the subscription saw was either handed over or counted as dropped ...
    assert len(got) + sub.dropped == rep["received"]
    # ... and every batch it never saw is a hole (or the unseen tail) that the client library
    # counted as a slow-consumer drop.
    last_seen = rep["received"] + rep["missed"]
    assert rep["missed"] + (500 - last_seen) <= lag["slow_consumer_drops"]
    assert rep["missed"] + (500 - last_seen) + rep["received"] == 500

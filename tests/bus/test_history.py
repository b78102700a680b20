"""History: the sans-IO parts (times, the stop rule, what a stream no longer holds) and the
replay against a real nats-server (ephemeral consumers, none left behind, the seam to live)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest

from netevents import connect
from netevents.bus.history import (
    NS,
    AckMeta,
    ReplayCursor,
    Window,
    held_from,
    missing_from,
    parse_ack_subject,
    parse_duration,
    parse_time,
)
from netevents.codec import Batch
from netevents.errors import ConfigError

NOW = 1_700_000_000 * NS


def test_durations():
    assert parse_duration("15m") == 900
    assert parse_duration("2h") == 7200
    assert parse_duration("1h30m") == 5400
    assert parse_duration("500ms") == 0.5
    assert parse_duration("7d") == 7 * 86400
    for bad in ("", "15", "m", "15x", "1h 3", "-5m"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_times():
    assert parse_time("15m", NOW) == NOW - 900 * NS
    assert parse_time("now", NOW) == NOW
    assert parse_time("2023-11-14T22:13:20Z", NOW) == NOW
    assert parse_time("2023-11-14T23:13:20+01:00", NOW) == NOW
    local = dt.datetime(2024, 5, 1, 14, 0).astimezone()
    assert parse_time("2024-05-01T14:00", NOW) == int(local.timestamp()) * NS
    assert parse_time("2024-05-01 14:00:00.5Z", NOW) % NS == NS // 2
    today = dt.datetime.fromtimestamp(NOW / NS).date()
    nine = dt.datetime.combine(today, dt.time(9, 30, 5)).astimezone()
    assert parse_time("9:30:05", NOW) == int(nine.timestamp()) * NS
    assert parse_time("09:30", NOW) == int(nine.timestamp() - 5) * NS
    with pytest.raises(ValueError, match="not a time"):
        parse_time("yesterday", NOW)


def test_durations_shown_as_typed():
    from netevents.bus.history import format_duration
    assert [format_duration(s) for s in (14 * 86400, 5400, 0.5, 0, 61)] == \
        ["14d", "1h30m", "500ms", "0s", "1m1s"]


def test_window_rules():
    assert Window.parse(None, None, NOW) is None
    w = Window.parse("1h", "30m", NOW)
    assert (w.since_ns, w.until_ns) == (NOW - 3600 * NS, NOW - 1800 * NS)
    assert w.contains(NOW - 2000 * NS) and not w.contains(NOW - 100 * NS)
    with pytest.raises(ConfigError, match="--until needs --since"):
        Window.parse(None, "5m", NOW)
    with pytest.raises(ConfigError, match="not after"):
        Window.parse("5m", "10m", NOW)
    with pytest.raises(ConfigError, match="--since: not a time"):
        Window.parse("soon", None, NOW)


def test_ack_subject():
    m = parse_ack_subject("$JS.ACK.NETEVENTS_EVENTS.abc.1.42.7.1700000000123456789.3")
    assert m == AckMeta("NETEVENTS_EVENTS", 42, 1700000000123456789, 3)
    m2 = parse_ack_subject("$JS.ACK.dom.acchash.S.c.1.5.5.99.0.rand")
    assert m2 == AckMeta("S", 5, 99, 0)
    assert parse_ack_subject("_INBOX.x") is None and parse_ack_subject(None) is None


def test_stop_rule():
    c = ReplayCursor(until_ns=100)
    assert c.message(AckMeta("S", 1, 50, 2), now_ns=200)
    assert c.message(AckMeta("S", 2, 60, 1), now_ns=200)
    assert not c.message(AckMeta("S", 3, 150, 0), now_ns=200)   # after until: not delivered
    assert c.done and c.delivered == 2
    c = ReplayCursor(until_ns=100)   # caught up and the clock is past until
    assert c.message(AckMeta("S", 1, 50, 0), now_ns=200) and c.done
    c = ReplayCursor(until_ns=300)   # caught up but until is still ahead: live until then
    assert c.message(AckMeta("S", 1, 50, 0), now_ns=200) and not c.done
    c.idle(now_ns=250)
    assert not c.done
    c.idle(now_ns=301, pending=4)     # slow delivery, not the end
    assert not c.done
    c.idle(now_ns=301)
    assert c.done
    live = ReplayCursor(None)
    live.idle(10**30)
    assert not live.done and live.message(AckMeta("S", 1, 10**30, 0), 10**30)


def test_what_a_stream_no_longer_holds():
    w = Window(NOW - 3600 * NS, NOW)
    assert held_from(w, "S", NOW - 7200 * NS, 1, 10) is None      # holds all of it
    assert held_from(w, "S", NOW - 1800 * NS, 1, 10) is None      # nothing was ever removed
    text = held_from(w, "S", NOW - 1800 * NS, 500, 10, 1800.0)
    assert "no longer holds" in text and "1800s of the window" in text and "499 older" in text
    assert "holds nothing" in held_from(Window(NOW - 3600 * NS, NOW - 3000 * NS), "S", NOW, 9, 1)
    assert "is empty" in held_from(w, "S", None, 20, 0)


def _drop(host, seq, run="r1"):
    return Batch(kind="drop", site="dc1", host=host, run=run, seq=seq, t0=1, t1=2,
                 events=[{"count": seq, "source": "counter", "reason": "QDISC_DROP"}])


async def _consumers(bus, stream="NETEVENTS_EVENTS"):
    info = await bus.js.stream_info(stream)
    return info.state.consumer_count


def test_replay_then_stop_at_until_and_no_consumer_left(nats_url):
    async def main():
        async with connect(nats_url, streams=True) as bus:
            for seq in (1, 2, 3):
                await bus.publish(_drop("web-1", seq), ack=True)
            await asyncio.sleep(0.05)
            mid = time.time_ns()
            await asyncio.sleep(0.05)
            for seq in (4, 5):
                await bus.publish(_drop("web-1", seq), ack=True)
            await asyncio.sleep(0.05)
            end = time.time_ns()
            await bus.publish(_drop("web-1", 6), ack=True)       # after until
            got_all = [b.seq async for b in bus.subscribe(["drop"], since="1m", until=end)]
            sub = bus.subscribe(["drop"], since=mid, until=end)
            async with sub:
                got_mid = [(await sub.next(5)).seq]
                during = await _consumers(bus)
                got_mid += [b.seq async for b in sub]
            assert sub.finished and sub.missed == 0
            return got_all, got_mid, during, await _consumers(bus)

    got_all, got_mid, during, after = asyncio.run(main())
    assert got_all == [1, 2, 3, 4, 5]
    assert got_mid == [4, 5]
    assert during == 1 and after == 0


def test_replay_goes_on_live_without_loss_or_duplicates(nats_url):
    async def main():
        async with connect(nats_url, streams=True) as bus:
            for seq in range(1, 21):
                await bus.publish(_drop("web-2", seq), ack=True)
            sub = bus.subscribe(["drop"], since="1m")
            async with sub:
                seen = []
                publisher = asyncio.create_task(_publish_more(bus))
                while len(seen) < 40:
                    b = await sub.next(5)
                    assert b is not None
                    seen.append(b.seq)
                await publisher
                assert await sub.next(0.7) is None and not sub.finished
            return seen, sub.missed, await _consumers(bus)

    async def _publish_more(bus):
        for seq in range(21, 41):
            await bus.publish(_drop("web-2", seq))
            await asyncio.sleep(0.005)

    seen, missed, left = asyncio.run(main())
    assert seen == list(range(1, 41)) and missed == 0 and left == 0


def test_missing_part_of_a_window_is_named(nats_url):
    async def main():
        async with connect(nats_url, streams=True) as bus:
            for seq in (1, 2, 3):
                await bus.publish(_drop("web-3", seq), ack=True)
            await bus.js.purge_stream("NETEVENTS_EVENTS", keep=1)
            w = Window(time.time_ns() - 3600 * NS, time.time_ns())
            return await missing_from(bus.nc, w, ["NETEVENTS_EVENTS", "NETEVENTS_STATS"])

    out = asyncio.run(main())
    assert len(out) == 1 and "NETEVENTS_EVENTS no longer holds" in out[0] and "2 older" in out[0]

"""The on-disk spool and the ordered, acked publisher (sans bus: a fake one that fails on cue)."""

import asyncio

import pytest

from netevents.agent.spool import ReliablePublisher, Spool
from netevents.codec import Batch, decode_batch
from netevents.errors import BusError, ConfigError


def rec(i, events=1):
    return ("netevents.v1.drop.s.h", f"h:r:drop:{i}", events, f"data-{i}".encode())


def drain(spool):
    out = []
    while (r := spool.peek()) is not None:
        out.append(r[1])
        spool.pop()
    return out


def test_order_survives_a_restart_and_replayed_records_are_not_replayed_again(tmp_path):
    s = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=200)
    for i in range(20):
        assert s.append(*rec(i))
    assert len(s) == 20 and len(s.segments) > 1
    for _ in range(5):
        s.peek()
        s.pop()
    s.close()
    again = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=200)
    assert len(again) == 15
    assert drain(again) == [f"h:r:drop:{i}" for i in range(5, 20)]
    assert len(again) == 0 and not list(tmp_path.glob("*.spool"))


def test_a_record_torn_by_a_crash_is_counted_and_skipped(tmp_path):
    s = Spool(tmp_path, segment_bytes=150)
    for i in range(6):
        s.append(*rec(i))
    s.close()
    first = sorted(tmp_path.glob("*.spool"))[0]
    data = first.read_bytes()
    first.write_bytes(data[:-5])  # the last record of the first segment is torn
    again = Spool(tmp_path, segment_bytes=150)
    got = drain(again)
    assert again.lost["spool.corrupt"] == 1
    assert len(got) == 5 and got == sorted(got, key=lambda m: int(m.split(":")[3]))


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
def test_the_bound_holds_and_the_policy_counts_what_it_discards(tmp_path, policy):
    s = Spool(tmp_path, max_bytes=2000, policy=policy, segment_bytes=400)
    kept = sum(s.append(*rec(i, events=10)) for i in range(100))
    assert s.bytes <= 2000
    remaining = drain(s)
    assert s.lost["spool.discarded"] == 10 * (100 - len(remaining))
    if policy == "drop_newest":
        assert remaining == [f"h:r:drop:{i}" for i in range(kept)]
    else:
        assert remaining[-1] == "h:r:drop:99"


def test_bad_configuration_is_named(tmp_path):
    with pytest.raises(ConfigError, match="not one of"):
        Spool(tmp_path, policy="keep_all")
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="not writable"):
        Spool(tmp_path / "file" / "spool")


class FlakyBus:
    max_payload = 1 << 20

    def __init__(self):
        self.up = True
        self.stored = []

    async def publish_raw(self, subject, data, msg_id=None, *, ack=False, timeout=5.0):
        await asyncio.sleep(0)
        if not self.up:
            raise BusError("no responders")
        self.stored.append(msg_id)


def batch(seq):
    return Batch(kind="drop", site="s", host="h", run="r", seq=seq, t0=1, t1=2,
                 events=[{"count": 1, "source": "counter"}])


def test_outage_spools_in_order_and_replays_everything_exactly_once(tmp_path):
    async def main():
        bus = FlakyBus()
        pub = ReliablePublisher(bus, Spool(tmp_path), max_inflight=4, ack_timeout=0.01, retries=1)
        for seq in range(1, 11):
            await pub.publish(batch(seq))
        await pub.flush()
        bus.up = False
        for seq in range(11, 41):             # more than max_inflight while the bus is away
            await pub.publish(batch(seq))
            await asyncio.sleep(0.001)
        assert pub.degraded and len(pub.spool) > 0
        bus.up = True
        await pub.flush(timeout=5)
        await pub.close()
        return bus, pub

    bus, pub = asyncio.run(main())
    seqs = [int(m.split(":")[3]) for m in bus.stored]
    assert sorted(set(seqs)) == list(range(1, 41))      # nothing lost
    assert seqs == sorted(seqs)                         # in order (a retried head may repeat)
    assert pub.losses() == {"spool.discarded": 0, "spool.corrupt": 0}
    assert pub.spooled > 0 and pub.replayed == pub.spooled


def test_close_keeps_what_could_not_be_sent_for_the_next_run(tmp_path):
    async def main():
        bus = FlakyBus()
        bus.up = False
        pub = ReliablePublisher(bus, Spool(tmp_path), ack_timeout=0.01, retries=0)
        for seq in range(1, 6):
            await pub.publish(batch(seq))
        await pub.close(timeout=0.2)

    asyncio.run(main())
    left = Spool(tmp_path)
    got = []
    while (r := left.peek()) is not None:
        got.append(decode_batch(r[3]).seq)
        left.pop()
    assert got == [1, 2, 3, 4, 5]

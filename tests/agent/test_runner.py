"""The runner: batching by size and time, bounded queues that count, sources that fail alone."""

import asyncio
import time

from netevents.agent.runner import AgentRunner, RunnerOptions
from netevents.errors import CapabilityError
from netevents.memory import MemoryBus


class Burst:
    name = "burst"

    def __init__(self, n, spacing=0.0):
        self.n, self.spacing = n, spacing
        self.emitted_at = []

    async def run(self, sink):
        for i in range(self.n):
            sink.emit("drop", {"count": i + 1, "source": "counter"})
            self.emitted_at.append(time.monotonic())
            if self.spacing:
                await asyncio.sleep(self.spacing)
        await asyncio.Event().wait()


class Missing:
    name = "needs-tracefs"

    async def run(self, sink):
        raise CapabilityError("tracefs", "tracefs is not mounted at /sys/kernel/tracing")


class Broken:
    name = "broken"

    async def run(self, sink):
        sink.declare_loss("broken.ring")
        raise RuntimeError("boom")


def run(collectors, seconds, bus=None, **opts):
    bus = bus or MemoryBus()

    async def main():
        stop = asyncio.Event()
        runner = AgentRunner(bus, collectors, RunnerOptions(host="h", **opts))
        asyncio.get_running_loop().call_later(seconds, stop.set)
        await runner.run(stop)
        return runner

    return asyncio.run(main()), bus


def test_batches_split_by_size_and_nothing_is_lost():
    runner, bus = run([Burst(2500)], 0.6, max_events=1000)
    drops = bus.batches("drop")
    assert [len(b) for b in drops] == [1000, 1000, 500]
    assert [b.seq for b in drops] == [1, 2, 3]
    assert sum(e["count"] for b in drops for e in b.events) == sum(range(1, 2501))
    assert runner.losses["queue.drop"] == 0


def test_a_batch_never_waits_more_than_250_ms():
    received = []

    class TimedBus(MemoryBus):
        async def publish(self, batch):
            received.append((time.monotonic(), batch))
            await super().publish(batch)

    src = Burst(12, spacing=0.1)
    run([src], 1.6, bus=TimedBus(), max_wait=0.25)
    drops = [(t, b) for t, b in received if b.kind == "drop"]
    assert sum(len(b) for _, b in drops) == 12
    assert len(drops) >= 4  # 1.2 s of events cannot fit in fewer 250 ms windows
    i = 0
    for t, b in drops:
        first_emitted = src.emitted_at[i]
        assert t - first_emitted < 0.25 + 0.15, f"batch published {t - first_emitted:.3f}s after its first event"
        i += len(b)


def test_full_queue_counts_what_it_refused():
    runner, bus = run([Burst(5000)], 0.5, queue_size=100, max_events=1000)
    delivered = sum(len(b) for b in bus.batches("drop"))
    assert delivered + runner.losses["queue.drop"] == 5000
    assert runner.losses["queue.drop"] > 0
    final = bus.batches("status")[-1].events[0]
    assert final["final"] is True and final["lost"]["queue.drop"] == runner.losses["queue.drop"]


def test_missing_capability_and_crashing_source_do_not_stop_the_others():
    runner, bus = run([Missing(), Broken(), Burst(3)], 0.4)
    final = bus.batches("status")[-1].events[0]
    assert final["sources"]["needs-tracefs"] == {
        "state": "unavailable", "reason": "tracefs is not mounted at /sys/kernel/tracing"}
    assert final["sources"]["broken"]["state"] == "failed"
    assert final["lost"]["broken.ring"] == 0
    assert sum(len(b) for b in bus.batches("drop")) == 3


def test_publish_failures_are_counted_as_lost_events():
    bus = MemoryBus()
    bus.fail = True
    runner, _ = run([Burst(10)], 0.4, bus=bus)
    assert runner.losses["publish.drop"] == 10


def test_whole_batches_keep_their_fields():
    class Frames:
        name = "frames"

        async def run(self, sink):
            sink.emit_batch("frame", {"ts": [1, 2], "len": [60, 60]}, t0=1, t1=2, iface="eth0",
                            worker=1, first_frame=10)
            await asyncio.Event().wait()

    _, bus = run([Frames()], 0.3)
    (b,) = bus.batches("frame")
    assert b.fields["iface"] == "eth0" and b.fields["first_frame"] == 10 and len(b) == 2
    assert (b.t0, b.t1) == (1, 2)


def test_an_oversize_frame_batch_is_split_by_rows_never_lost():
    """A column batch too large for the bus goes out as halves (recursively), each with its own
    window and first_frame; nothing is counted lost."""
    import msgpack

    from netevents.codec import PackedColumns
    from tests.framegen import frame_batch

    whole = frame_batch("h", "r", 1, 100, 1000)
    # as the C walker hands it over: the columns' msgpack encoding
    packed = PackedColumns(msgpack.packb(whole.events, use_bin_type=True), 1000)

    class Frames:
        name = "capture"

        async def run(self, sink):
            sink.emit_batch("frame", packed, t0=whole.t0, t1=whole.t1, iface="eth0", worker=0,
                            first_frame=100)
            await asyncio.Event().wait()

    runner, bus = run([Frames()], 0.5, bus=MemoryBus(max_payload=20_000))
    frames = bus.batches("frame")
    assert len(frames) > 1 and sum(len(b) for b in frames) == 1000
    assert [b.seq for b in frames] == list(range(1, len(frames) + 1))
    firsts = [b.fields["first_frame"] for b in frames]
    assert firsts[0] == 100 and all(firsts[i + 1] == firsts[i] + len(frames[i])
                                    for i in range(len(frames) - 1))
    rows = [r for b in frames for r in b.rows()]
    assert [r["ts"] for r in rows] == whole.events["ts"]
    assert all(b.t0 == b.events["ts"][0] and b.t1 == b.events["ts"][-1] for b in frames)
    assert runner.losses["publish.frame"] == 0


def test_an_event_that_cannot_be_encoded_is_lost_alone_and_counted():
    # A name read from the kernel as os.fsdecode reads it: an undecodable byte becomes a lone
    # surrogate, which msgpack's str cannot hold. The batch is split until that event is alone.
    class Odd:
        name = "odd"

        async def run(self, sink):
            for i in range(10):
                event = {"count": i + 1, "source": "counter"}
                if i == 6:
                    event["iface"] = b"eth\xff".decode(errors="surrogateescape")
                sink.emit("drop", event)
            await asyncio.sleep(0.3)  # a later batch of the same kind still goes out
            sink.emit("drop", {"count": 100, "source": "counter"})
            await asyncio.Event().wait()

    runner, bus = run([Odd()], 0.6)
    counts = sorted(e["count"] for b in bus.batches("drop") for e in b.events)
    assert counts == [1, 2, 3, 4, 5, 6, 8, 9, 10, 100]
    assert runner.losses["publish.drop"] == 1
    final = bus.batches("status")[-1].events[0]
    assert final["lost"]["publish.drop"] == 1


def test_a_reason_quoting_an_undecodable_name_still_goes_out_in_the_status():
    class Fails:
        name = "fails"

        async def run(self, sink):
            name = b"/sys/class/net/eth\xff".decode(errors="surrogateescape")
            raise CapabilityError("tracefs", f"cannot read {name}")

    runner, bus = run([Fails(), Burst(3)], 0.4)
    final = bus.batches("status")[-1].events[0]
    assert final["sources"]["fails"] == {"state": "unavailable",
                                         "reason": "cannot read /sys/class/net/eth\\udcff"}
    assert final["final"] is True and runner.losses["publish.status"] == 0

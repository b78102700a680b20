"""100k malformed and hostile messages at a consumer on a real server: none crashes it, every
one is counted as rejected, and the valid batches interleaved with them all arrive."""

import asyncio
import random

import msgpack

from netevents import connect
from netevents.codec import Batch, encode_batch

N_BAD = 100_000
GOOD_EVERY = 100
SUBJECT = "netevents.v1.drop.dc1.fuzz-host"


WRONG = {
    "seq": [0, -1, "x", None, [], 1.5, True],
    "t0": [-1, "x", None, [], 2.0],
    "run": ["", -1, None, [], "x" * 65],
    "events": [{}, "x", -1, None, b"\x00", [[]]],
}


def hostile(rng: random.Random, i: int) -> bytes:
    good = {"v": 1, "kind": "drop", "site": "dc1", "host": "fuzz-host", "run": "r", "seq": i + 1,
            "t0": 1, "t1": 2, "events": [{"count": 1, "source": "counter"}]}
    pick = i % 12
    if pick == 0:
        return rng.randbytes(rng.randint(0, 200))
    if pick == 1:
        return msgpack.packb(good)[: rng.randint(0, 40)]                       # truncated
    if pick == 2:
        return msgpack.packb({**good, "v": rng.choice([0, 2, "1", None, 1.0, True, 2**64 - 1])})
    if pick == 3:
        key = rng.choice(list(WRONG))
        return msgpack.packb({**good, key: rng.choice(WRONG[key])})
    if pick == 4:
        return b"\xdd\xff\xff\xff\xff" + rng.randbytes(8)                     # 4G-element array
    if pick == 5:
        return b"\xdf\xff\xff\xff\xff"                                         # 4G-entry map
    if pick == 6:
        return b"\x91" * rng.randint(1000, 5000)                               # deep nesting
    if pick == 7:
        return msgpack.packb({**good, "host": rng.choice(["a.b", "*", ">", "fuzz-host.x", " ", ""])})
    if pick == 8:
        return msgpack.packb({**good, "host": "other-host"})                  # speaks for another
    if pick == 9:
        return msgpack.packb({**good, "kind": rng.choice(["gap", "control", "", 7])})
    if pick == 10:
        return msgpack.packb({**good, "events": [{"count": "1", "source": "counter"}] * 3})
    return msgpack.packb({**good, "events": [rng.choice([1, "x", [], None])]})


def test_hundred_thousand_hostile_messages(nats_url):
    rng = random.Random(1234)

    async def main():
        async with connect(nats_url) as bus:
            async with bus.subscribe(kinds=["drop"], queue_size=5000) as sub:
                seq = 0
                for i in range(N_BAD):
                    await bus.publish_raw(SUBJECT, hostile(rng, i))
                    if i % GOOD_EVERY == 0:
                        seq += 1
                        await bus.publish_raw(SUBJECT, encode_batch(Batch(
                            kind="drop", site="dc1", host="fuzz-host", run="good", seq=seq,
                            t0=1, t1=2, events=[{"count": seq, "source": "counter"}])))
                    if i % 2000 == 0:
                        await bus.flush()
                await bus.flush()
                delivered = []
                while len(delivered) < seq:
                    b = await sub.next(20)
                    assert b is not None, f"only {len(delivered)} of {seq} valid batches arrived"
                    delivered.append(b)
                for _ in range(200):  # let the rejects still in flight be counted
                    if sum(sub.rejected.values()) >= N_BAD:
                        break
                    await asyncio.sleep(0.05)
                return sub, delivered, seq

    sub, delivered, seq = asyncio.run(main())
    assert [b.seq for b in delivered] == list(range(1, seq + 1))
    assert [b.events[0]["count"] for b in delivered] == list(range(1, seq + 1))
    assert sum(sub.rejected.values()) == N_BAD, dict(sub.rejected)
    assert set(sub.rejected) <= {"malformed", "version", "schema", "subject", "oversize"}
    assert sub.missed == 0 and sub.dropped == 0

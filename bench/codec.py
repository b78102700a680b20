"""Codec and bus throughput, with raw nats-py as the anchor measured in the same run.

    python bench/codec.py [--batches N] [--events-per-batch K]

1. events/s encoded and decoded (with full validation against the v1 contract) on one core,
   for drop-like batches (list of maps) and frame-like batches (column-wise, 96-byte heads);
   encoding also without the C encoder (netevents._cvalid.encode: msgspec alone), with the ratio;
   next to the anchor: ``msgpack.packb`` / ``msgpack.unpackb`` of the same document (no
   validation at all), with the ratio. With the C validator (netevents._cvalid) decoded events
   are made on first access (netevents.lazy), so "decode+validate" makes none of them; "+ make
   every value" also reads every column / every row, what a consumer reading it all pays;
2. the same payloads end to end through the embedded nats-server: netevents (encode, publish
   with Nats-Msg-Id, subscribe, decode, validate, sequence-check) against raw nats-py publishing
   and receiving the same pre-encoded bytes. Prints events/s of each and the ratio.

This machine's speed drifts by up to 2x within a run, so every step is timed in rounds: in
part 1 the steps take turns and each one's best round counts (:data:`ROUNDS`); in part 2 each
round times netevents then raw nats-py back to back, and the median of the rounds' ratios
counts (:data:`E2E_ROUNDS`; a best-of rate per side paired a lucky raw round with an unlucky
netevents one: the same code measured 0.33 and 0.61 in two runs a minute apart).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgpack  # noqa: E402

from netevents import connect, lazy  # noqa: E402
from netevents.bus import EmbeddedServer  # noqa: E402
from netevents.codec import Batch, decode_batch, encode_batch  # noqa: E402

FLUSH_EVERY = 20
E2E_ROUNDS = 5


def drop_events(k: int) -> list[dict]:
    return [{"count": i % 97 + 1, "source": "tracepoint", "reason": "NETFILTER_DROP",
             "location": "nft_do_chain+0x3a1", "pc": 0xffffffffa0123456 + i, "iface": "eth0",
             "ifindex": 2, "proto": 0x0800, "netns": 4026531840, "first_ts": 1_763_900_000_000_000_000 + i,
             "last_ts": 1_763_900_000_000_500_000 + i,
             "flow": {"src": "10.0.0.1", "dst": "10.0.0.2", "sport": 40000 + i % 1000, "dport": 7777, "l4": 17}}
            for i in range(k)]


def frame_columns(k: int) -> dict[str, list]:
    head = os.urandom(96)
    return {
        "ts": [1_763_900_000_000_000_000 + i * 1000 for i in range(k)], "ts_src": [1] * k,
        "caplen": [96] * k, "len": [1514] * k, "dir": [0] * k, "queue": [i % 4 for i in range(k)],
        "rxhash": [i * 2654435761 % 2**32 for i in range(k)], "vlan": [None] * k,
        "ethertype": [0x0800] * k, "src": [b"\x0a\x00\x00\x01"] * k, "dst": [b"\x0a\x00\x00\x02"] * k,
        "l4": [6] * k, "sport": [40000] * k, "dport": [443] * k, "ip_id": [i & 0xffff for i in range(k)],
        "tcp_seq": [i * 1448 for i in range(k)], "head": [head] * k,
    }


def make_batch(kind: str, seq: int, events) -> Batch:
    return Batch(kind=kind, site="bench", host="bench-1", run="r0", seq=seq, t0=1, t1=2,
                 events=events, fields={"iface": "eth0", "worker": 0} if kind == "frame" else {})


def read_all(b: Batch) -> None:
    """Make every value of a decoded batch (every column, every row)."""
    if isinstance(b.events, Mapping):
        for _col in b.events.values():
            pass
    else:
        for _row in b.events:
            pass


ROUNDS = 5
"""Every step is timed in this many rounds, the steps taking turns, and its best round counts:
this machine's speed drifts within a run, and steps timed one after the other would each get
a different machine."""


def codec_rates(kind: str, events, k: int, repeat: int) -> tuple[float, ...]:
    """(encode, encode without the C encoder, decode+validate, decode+validate+make every
    value, decode+validate without the C validator, anchor packb, anchor unpackb) events/s and
    the batch size."""
    b = make_batch(kind, 1, events)
    data = encode_batch(b)
    doc = msgpack.unpackb(data)

    def without_c(step):  # the same step without the C extension, in this run
        def run():
            eager, lazy.ENABLED = lazy.ENABLED, False
            try:
                step()
            finally:
                lazy.ENABLED = eager
        return run

    steps = [lambda: encode_batch(b), without_c(lambda: encode_batch(b)),
             lambda: decode_batch(data), lambda: read_all(decode_batch(data)),
             without_c(lambda: decode_batch(data)),
             lambda: msgpack.packb(doc, use_bin_type=True), lambda: msgpack.unpackb(data)]
    best = [0.0] * len(steps)
    per_round = max(1, repeat // ROUNDS)
    for _ in range(ROUNDS):
        for i, step in enumerate(steps):
            t = time.perf_counter()
            for _ in range(per_round):
                step()
            best[i] = max(best[i], k * per_round / (time.perf_counter() - t))
    return (*best, len(data))


async def end_to_end(url: str, kind: str, events, k: int, n: int) -> tuple[float, float]:
    subject = f"netevents.v1.{kind}.bench.bench-1"
    # netevents: encode + publish with Nats-Msg-Id, subscribe + decode + validate + seq tracking.
    # The consumer takes each batch as it comes (as the anchor's callback does, and as a real
    # consumer does), so neither side is charged for holding every batch of the run at once.
    async with connect(url) as bus:
        async with bus.subscribe(kinds=[kind], queue_size=n + 10) as sub:
            got = 0

            async def consume() -> None:
                nonlocal got
                while got < n:
                    b = await sub.next(30)
                    if b is None:
                        raise RuntimeError(f"netevents path stalled at {got}/{n}: missed "
                                           f"{sub.missed}, bus errors {dict(bus.errors)}")
                    got += 1

            t = time.perf_counter()
            reader = asyncio.create_task(consume())
            for seq in range(1, n + 1):
                await bus.publish(make_batch(kind, seq, events))
                if seq % FLUSH_EVERY == 0:  # back-pressure, as the agent's publisher has
                    await bus.flush()
            await reader
            ours = k * n / (time.perf_counter() - t)
            assert sub.missed == 0 and not sub.rejected
    # anchor: raw nats-py, the same bytes (already encoded), no decoding.
    payloads = [encode_batch(make_batch(kind, seq, events)) for seq in range(1, n + 1)]
    async with connect(url) as bus:
        nc = bus.nc
        done = asyncio.Event()
        count = 0

        async def cb(msg):
            nonlocal count
            count += 1
            if count == n:
                done.set()

        raw_sub = await nc.subscribe(subject + ".raw", cb=cb, pending_msgs_limit=n + 10,
                                     pending_bytes_limit=1 << 30)
        t = time.perf_counter()
        for i, data in enumerate(payloads, 1):
            await nc.publish(subject + ".raw", data)
            if i % FLUSH_EVERY == 0:
                await nc.flush()
        await asyncio.wait_for(done.wait(), 60)
        raw = k * n / (time.perf_counter() - t)
        await raw_sub.unsubscribe()
    return ours, raw


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=2000)
    ap.add_argument("--events-per-batch", type=int, default=500)
    args = ap.parse_args()
    k, n = args.events_per_batch, args.batches
    cases = {"drop": drop_events(k), "frame": frame_columns(k)}
    print(f"codec, one core, {k} events per batch (C validator: "
          f"{'on, events made lazily' if lazy.ENABLED else 'not built: eager decoding'})")
    for kind, events in cases.items():
        enc, enc_msgspec, dec, dec_all, dec_eager, a_enc, a_dec, size = codec_rates(
            kind, events, k, repeat=max(20, 200_000 // k))
        print(f"  {kind:<6} encode {enc:>12,.0f} events/s   decode+validate {dec:>12,.0f} events/s   "
              f"({size / k:.0f} bytes/event)")
        print(f"  {'':<6} encode without the C encoder (msgspec) {enc_msgspec:>12,.0f} events/s   "
              f"ratio {enc / enc_msgspec:.2f}")
        print(f"  {'':<6} decode+validate + make every value {dec_all:>12,.0f} events/s   "
              f"eager (no C validator) {dec_eager:>12,.0f} events/s   ratio {dec / dec_eager:.2f}")
        print(f"  {'':<6} anchor msgpack.packb {a_enc:>12,.0f}   msgpack.unpackb (no validation) "
              f"{a_dec:>12,.0f}   ratio encode {enc / a_enc:.2f}, decode {dec / a_dec:.2f}")
    async with EmbeddedServer(port=0) as server:
        print(f"end to end through nats-server ({server.url}), {n} batches x {k} events, "
              f"{E2E_ROUNDS} rounds, each netevents then raw nats-py: the best rates, and the "
              f"ratio of each round's pair (its median counts)")
        for kind, events in cases.items():
            ours = raw = 0.0
            ratios = []
            for _ in range(E2E_ROUNDS):
                o, r = await end_to_end(server.url, kind, events, k, n)
                ours, raw = max(ours, o), max(raw, r)
                ratios.append(o / r)
            print(f"  {kind:<6} netevents {ours:>12,.0f} events/s   raw nats-py {raw:>12,.0f} events/s   "
                  f"ratio {statistics.median(ratios):.2f} (rounds "
                  f"{' '.join(f'{x:.2f}' for x in ratios)})")


if __name__ == "__main__":
    asyncio.run(main())

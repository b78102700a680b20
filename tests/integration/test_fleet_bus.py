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


def _udp_frames(host: str, seq: int, rows: list[tuple]) -> Batch:
    """rows: (ts, dir, src bytes, dst bytes, ip_id) as one column-wise frame batch."""
    import struct

    cols: dict[str, list] = {k: [] for k in ("ts", "ts_src", "dir", "src", "dst", "l4", "sport",
                                             "dport", "ip_id", "head")}
    for ts, d, src, dst, ip_id in rows:
        udp = struct.pack("!HHHH", 4000, 5000, 28, 0) + b"p" * 20
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 48, ip_id, 0, 64, 17, 0, src, dst)
        for k, v in (("ts", ts), ("ts_src", 1), ("dir", d), ("src", src), ("dst", dst), ("l4", 17),
                     ("sport", 4000), ("dport", 5000), ("ip_id", ip_id),
                     ("head", b"\x02" * 12 + b"\x08\x00" + ip + udp)):
            cols[k].append(v)
    return Batch(kind="frame", site="local", host=host, run=f"run-{host}", seq=seq,
                 t0=rows[0][0], t1=rows[-1][0], events=cols,
                 fields={"iface": "eth0", "worker": 0, "first_frame": 0})


def test_partitioned_correlators_split_the_paths_between_them(nats_url):
    """Two `--partition` members on one real stream: every path is judged by exactly one of
    them, and together they find every frame withheld."""
    hosts = [f"p{i}" for i in range(8)]
    addr = {h: bytes([10, 9, 0, i + 1]) for i, h in enumerate(hosts)}

    async def main():
        stop = asyncio.Event()
        members = []
        async with connect(nats_url, streams=True) as bus:
            for k in range(2):
                ready = asyncio.Event()
                members.append(asyncio.create_task(run_correlate(
                    nats_url, stop=stop, ready=ready, grace=0.5, tick_interval=0.1,
                    partition=(k, 2), token=None)))
                await ready.wait()
            await asyncio.sleep(0.2)
            now = time.time_ns() - 5 * NS
            seqs: dict[str, int] = {}
            for sec in range(3):
                t = now + sec * NS
                for i, h in enumerate(hosts):
                    nxt = hosts[(i + 1) % len(hosts)]
                    ids = [sec * 20 + k for k in range(20)]
                    for host, d, keep in ((h, 4, lambda ip: True), (nxt, 0, lambda ip: ip % 10)):
                        seqs[host] = seqs.get(host, 0) + 1
                        rows = [(t + k * 1000 + (500 if d == 0 else 0), d, addr[h], addr[nxt], ip)
                                for k, ip in enumerate(ids) if keep(ip)]
                        await bus.publish(_udp_frames(host, seqs[host], rows))
            # every receiver's capture moves on past the grace period
            for h in hosts:
                seqs[h] += 1
                await bus.publish(_udp_frames(h, seqs[h], [(now + 4 * NS, 0, addr[h], addr[h], 9)]))
            await bus.flush()
            await asyncio.sleep(1.5)
            stop.set()
            return [await m for m in members]

    corrs = asyncio.run(main())
    judged = [{k: (p.delivered, p.lost) for k, p in c.pairs.items()} for c in corrs]
    assert all(judged) and not set(judged[0]) & set(judged[1]), judged
    assert len(judged[0]) + len(judged[1]) == len(hosts)
    lost = sum(v[1] for j in judged for v in j.values())
    assert lost == len(hosts) * 6  # ip ids 0, 10, ..., 50 of each path never arrived
    assert sum(v[0] for j in judged for v in j.values()) == len(hosts) * 54

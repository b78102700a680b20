"""Fleet simulation: >= 1000 simulated agents against a real nats-server, with the correlator
and a FleetView aggregator consuming.

    python bench/fleet.py [--agents 1000] [--duration 60] [--procs 2] [--frames 8] [--rate 1]
                          [--correlators N] [--no-view] [--tick 0.005]

Layout (the choice the brief asks to state): ``--procs`` publisher processes, each with ONE
NATS connection carrying its share of the agents (1000 agents = 2 processes x 500), so the
machine's 2 cores are not spent on 1000 interpreters; one scheduler per process publishes each
agent's window when it is due (a task and a timer per agent cost the consumers' cores a third of
the publishers' CPU more), waking at most every ``--tick`` (5 ms) for all the windows due by then
(a wakeup for each of the 1500 windows a second a process has at rate 3 cost a quarter more
when the machine had room; when it has none, the wakeups bunch up by themselves).
Every agent has its own
host token and run id and publishes real v1 batches through netevents.codec every 1/rate s:
``drop`` (3 events), ``ipstat`` (4 peers), ``frame`` (column-wise, ``--frames`` rows leaving
it toward the next agent, and the same frames arriving at that agent with 1% missing: the
correlator really matches them), ``gap`` every 10th window, ``status`` every 5 s. Core NATS
publishes (what agents without JetStream acks do); the consumers are core subscriptions.

Consumer processes: the Correlator (every input kind it uses; ``--correlators N`` runs N of them
as ``--partition K/N`` members, each reading the whole stream and judging its share of the
paths) and a FleetView (every kind; ``--no-view`` leaves it out).
Each reports batches and events received, its missed batches (sequence holes, per the
tracker), the largest lag it saw (Subscription.lag()), slow-consumer drops and its peak RSS.
The publishers report exactly what they sent, so "missed" is checked against the count: a
consumer's own account of what it missed is its sequence holes plus the tail after its last batch
of each run, which the runs' status batches (``published`` per kind; every simulated agent ends
with a final status like a real one) make known.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import multiprocessing as mp
import os
import resource
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netevents.codec import Batch  # noqa: E402 - from this checkout (the path above)

NS = 1_000_000_000


_PAYLOAD = 48
_UDP_LEN = 8 + _PAYLOAD


def _head_parts(src: bytes, dst: bytes) -> tuple[bytes, bytes]:
    """What a frame head of ``src -> dst`` has before and after its IP ID (:func:`_head`)."""
    pre = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + struct.pack("!BBH", 0x45, 0, 20 + _UDP_LEN)
    post = struct.pack("!HBBH4s4s", 0, 64, 17, 0, src, dst) + struct.pack("!HHHH", 4000, 5000,
                                                                          _UDP_LEN, 0)
    return pre, post


def _head(parts: tuple[bytes, bytes], ip_id: int, n: int) -> bytes:
    """An Ethernet/IPv4/UDP head (90 bytes) whose payload names frame ``n``: made of the
    agent's constant parts (the simulator's CPU is taken from the consumers' cores)."""
    return b"".join((parts[0], ip_id.to_bytes(2, "big"), parts[1],
                     b"bench %012d" % n)).ljust(14 + 20 + _UDP_LEN, b".")


def _frames(rows: list[tuple]) -> dict[str, list]:
    """Frame columns of (ts, dir, src, dst, ip_id, head) rows (the simulator's own CPU is taken
    from the consumers' cores, so it is built column by column, not value by value)."""
    n = len(rows)
    ts, d, src, dst, ip_id, head = ([list(c) for c in zip(*rows, strict=True)] if rows
                                   else [[] for _ in range(6)])
    return {"ts": ts, "ts_src": [1] * n, "caplen": [96] * n, "len": [110] * n, "dir": d,
            "src": src, "dst": dst, "l4": [17] * n, "sport": [4000] * n, "dport": [5000] * n,
            "ip_id": ip_id, "tcp_seq": [None] * n, "head": head}


class _Agent:
    """One simulated agent: its host, run and sequences, and the batches of each window.

    Built once per agent; what every window publishes the same is made here (the simulator's
    CPU is taken from the consumers' cores)."""

    def __init__(self, i: int, total_agents: int, rate: float, n_frames: int) -> None:
        self.i = i
        self.host = f"sim-{i:05d}"
        self.run = os.urandom(6).hex()
        self.seq: dict[str, int] = {}
        self.me = bytes([10, 100 + i // 65536, (i // 256) % 256, i % 256])
        j = (i + 1) % total_agents
        self.nxt = bytes([10, 100 + j // 65536, (j // 256) % 256, j % 256])
        self.rhost = f"sim-{j:05d}"  # where this agent's frames arrive (the next agent)
        self.parts = _head_parts(self.me, self.nxt)
        self.locations = [f"site_{k}+0x{(i % 7) * 16:x}" for k in range(3)]
        self.peers = [f"10.200.{(i + k) % 256}.{k}" for k in range(4)]
        self.period = 1.0 / rate
        self.status_every = max(1, int(5 * rate))
        self.n_frames = n_frames
        self.w = 0
        self.frame_no = 0
        self.events = 0

    def _batch(self, kind: str, events, now: int, host: str | None = None,
               run: str | None = None, t0: int | None = None, **fields) -> Batch:
        """The next batch of ``kind`` from ``host``'s run (this agent's own by default), over
        the second before ``now`` unless ``t0`` says otherwise."""
        host = host or self.host
        key = f"{host}/{kind}"
        seq = self.seq[key] = self.seq.get(key, 0) + 1
        b = Batch(kind=kind, site="bench", host=host, run=run or self.run, seq=seq,
                  t0=now - NS if t0 is None else t0, t1=now, events=events, fields=fields)
        self.events += len(b)
        return b

    def _status(self, host: str, run: str, counts: dict, uptime: float,
                final: bool = False) -> Batch:
        now = time.time_ns()
        seq = self.seq.get(f"{host}/status", 0) + 1  # the one _batch gives it
        return self._batch("status", [{"version": "bench", "uptime": uptime, "final": final,
                                       "published": {**counts, "status": seq},
                                       "lost": {"queue.drop": 0, "publish.frame": 0}}],
                           now, host=host, run=run, t0=now)

    def _own_status(self, final: bool = False):
        counts = {k.split("/")[1]: n for k, n in self.seq.items()
                  if k.startswith(self.host + "/") and not k.endswith("/status")}
        return self._status(self.host, self.run, counts, self.w * self.period, final)

    def window(self) -> list:
        """The batches of the next window: drop, ipstat, frame (leaving, and arriving at the
        next agent with every 100th frame of the stream missing), gap every 10th window,
        status every 5 s."""
        self.w = w = self.w + 1
        now = time.time_ns()
        i, locations, peers = self.i, self.locations, self.peers
        out = [self._batch("drop", [{"count": 1 + (w + k) % 5, "source": "tracepoint",
                                     "reason": ("NETFILTER_DROP", "TCP_CSUM", "QDISC_DROP")[k],
                                     "location": locations[k], "first_ts": now - NS // 2,
                                     "last_ts": now} for k in range(3)], now, mode="alert"),
               self._batch("ipstat", [{"peer": peers[k], "retrans_segs": (w * k) % 3,
                                       "segs_out": 100, "sockets": 2} for k in range(4)], now)]
        if self.n_frames:
            me, nxt, parts = self.me, self.nxt, self.parts
            first = self.frame_no + 1
            self.frame_no += self.n_frames
            rows = [(now, 4, me, nxt, n & 0xFFFF, _head(parts, n & 0xFFFF, n))
                    for n in range(first, self.frame_no + 1)]
            out.append(self._batch("frame", _frames(rows), now, iface="eth0", worker=0,
                                   first_frame=self.frame_no))
            # the same frames arriving at the next agent; every 100th of the stream never arrives
            arrived = [(ts + 50_000, 0, s, d, ip, h) for k, (ts, _d, s, d, ip, h) in enumerate(rows)
                       if (first + k + i) % 100]
            out.append(self._batch("frame", _frames(arrived), now, host=self.rhost,
                                   run=self.run + "-rx", iface="eth0", worker=0,
                                   first_frame=self.frame_no))
        if w % 10 == 0:
            out.append(self._batch("gap", [{"iface": "eth0", "lost": 1, "cause": "ring_full",
                                            "after_ts": now - NS // 2,
                                            "before_ts": now - NS // 2 + 1000}], now))
        if w % self.status_every == 1:
            out.append(self._own_status())
        return out

    def final(self) -> list:
        """Like a real agent at its stop: a final status with what each run published, so a
        consumer can tell the batches it lost after the last one it got (the tail)."""
        out = [self._own_status(final=True)]
        if self.n_frames:
            out.append(self._status(self.rhost, self.run + "-rx",
                                    {"frame": self.seq.get(f"{self.rhost}/frame", 0)},
                                    self.w * self.period))
        return out


def publisher(index: int, url: str, agents: range, total_agents: int, duration: float, rate: float,
              n_frames: int, tick: float, out: mp.Queue) -> None:
    """One publisher process: its agents' windows on one connection, each agent every
    ``1/rate`` s from its own offset (spread over the period). One scheduler wakes for the
    agents that are due, instead of a task and a timer per agent, and at most every ``tick``
    seconds: a window leaves up to ``tick`` after its time, and the next one is still due one
    period after its time (the schedule does not drift). The same batches, for less of the CPU
    the consumers share."""
    from netevents.bus import connect

    async def main() -> None:
        batches = 0
        sims = [_Agent(i, total_agents, rate, n_frames) for i in agents]
        async with connect(url, name=f"bench-pub-{index}") as bus:
            out.put(("ready", index))
            loop = asyncio.get_running_loop()
            start = loop.time()
            stop_at = start + duration
            due = [(start + (a.i % 997) / 997 * a.period, k) for k, a in enumerate(sims)]
            heapq.heapify(due)
            while due:
                delay = due[0][0] - loop.time()
                if delay > 0:
                    await asyncio.sleep(max(delay, tick))
                now = loop.time()
                while due and due[0][0] <= now:
                    at, k = heapq.heappop(due)
                    sim = sims[k]
                    if at < stop_at:
                        batch_list = sim.window()
                        heapq.heappush(due, (at + sim.period, k))
                    else:
                        batch_list = sim.final()
                    for b in batch_list:
                        await bus.publish(b)
                    batches += len(batch_list)
            await bus.flush(timeout=30)
        sent = {"batches": batches, "events": sum(a.events for a in sims)}
        out.put(("published", index, sent, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                 sum(_cpu_s())))

    asyncio.run(main())


def _cpu_s() -> tuple[float, float]:
    """CPU seconds this process has used (user, system): what a consumer costs, whatever
    else the machine's cores are busy with."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime


def _server_cpu_s(server) -> float | None:
    """CPU seconds the embedded nats-server has used (user + system, from /proc by its pid);
    None for a server this bench did not start."""
    if server is None or server.proc is None:
        return None
    try:
        fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def consumer(name: str, url: str, duration: float, out: mp.Queue,
             partition: tuple[int, int] = (0, 1)) -> None:
    from netevents.bus import connect, tune_gc
    from netevents.consumers.correlate import INPUT_KINDS, Correlator
    from netevents.consumers.view import FleetView

    tune_gc()  # as the netevents commands do

    async def main() -> None:
        corr = Correlator(grace=2.0, partition=partition) if name.startswith("correlator") else None
        view = FleetView() if name == "view" else None
        stats = {"batches": 0, "events": 0, "max_queued": 0, "max_pending": 0, "incidents": 0,
                 "max_behind_s": 0.0}
        async with connect(url, name=f"bench-{name}") as bus:
            sub = bus.subscribe(INPUT_KINDS if corr else None, site="bench")
            async with sub:
                await bus.flush()
                out.put(("ready", name))
                loop = asyncio.get_running_loop()
                end = loop.time() + duration + 600  # stopped by the idle rule below
                idle_since = None
                next_lag = loop.time()
                started = None
                last_rx = None
                while loop.time() < end:
                    batch = await sub.next(timeout=0.5)
                    now = loop.time()
                    if batch is None:
                        idle_since = idle_since or now
                        if started is not None and now - idle_since > 5.0:
                            break
                    else:
                        idle_since = None
                        started = started or now
                        last_rx = now
                        stats["batches"] += 1
                        stats["events"] += len(batch)
                        # event-time lag: how old the batch is when this consumer gets to it
                        # (a backlog held by the server or the socket is not in Subscription.lag())
                        if stats["batches"] % 64 == 0:
                            stats["max_behind_s"] = max(stats["max_behind_s"],
                                                        time.time() - batch.t1 / NS)
                        if corr is not None:
                            stats["incidents"] += len(corr.feed(batch))
                        else:
                            view.feed(batch)
                    if now >= next_lag:
                        next_lag = now + 1.0
                        lag = await sub.lag()
                        stats["max_queued"] = max(stats["max_queued"], lag["queued"])
                        stats["max_pending"] = max(stats["max_pending"], lag["pending"])
                        if corr is not None:
                            stats["incidents"] += len(corr.tick(time.time_ns()))
                if corr is not None:
                    stats["incidents"] += len(corr.tick(time.time_ns(), flush=True))
                lag = await sub.lag()
                stats.update(bus_errors=dict(bus.errors), missed=sub.missed,
                             unreceived=sub.unreceived, rejected=sum(sub.rejected.values()),
                             dropped=sub.dropped, slow_consumer_drops=lag["slow_consumer_drops"],
                             active_s=(last_rx - started) if started and last_rx else 0.0,
                             maxrss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                             cpu_s=_cpu_s())
                if corr is not None:
                    stats.update(evicted=dict(corr.evicted), counts={k: v for k, v in corr.counts.items() if not k.startswith("incident")},
                                 delivered=sum(p.delivered for p in corr.pairs.values()),
                                 lost=sum(p.lost for p in corr.pairs.values()),
                                 unknown=sum(p.unknown for p in corr.pairs.values()))
        out.put(("consumed", name, stats))

    asyncio.run(main())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of publishing (default 60)")
    ap.add_argument("--procs", type=int, default=2, help="publisher processes (default 2)")
    ap.add_argument("--frames", type=int, default=8, help="frames per agent and window (default 8)")
    ap.add_argument("--rate", type=float, default=1.0, help="windows per agent per second (default 1)")
    ap.add_argument("--correlators", type=int, default=1,
                    help="correlator processes sharing the work as --partition K/N members (default 1)")
    ap.add_argument("--no-view", action="store_true",
                    help="run the correlator(s) without the FleetView consumer (what the "
                         "correlator sustains when it does not share the cores with a view)")
    ap.add_argument("--tick", type=float, default=0.005,
                    help="a publisher process wakes at most this often (seconds) and publishes "
                         "every window due by then (default 0.005; 0: a wakeup per window)")
    ap.add_argument("--url", help="use this server instead of starting one")
    args = ap.parse_args()
    tick = max(0.0, args.tick)

    from netevents.bus import EmbeddedServer

    server = None
    url = args.url
    if url is None:
        server = EmbeddedServer(port=0)
        url = server.start_blocking()
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    procs = []
    try:
        n = max(1, args.correlators)
        names = ["correlator"] if n == 1 else [f"correlator-{k}of{n}" for k in range(n)]
        consumers = names + ([] if args.no_view else ["view"])
        for k, name in enumerate(consumers):
            p = ctx.Process(target=consumer, args=(name, url, args.duration, q, (k % n, n)))
            p.start()
            procs.append(p)
        for _ in consumers:
            q.get(timeout=60)
        share = (args.agents + args.procs - 1) // args.procs
        pubs = []
        for k in range(args.procs):
            r = range(k * share, min(args.agents, (k + 1) * share))
            p = ctx.Process(target=publisher, args=(k, url, r, args.agents, args.duration, args.rate,
                                                    args.frames, tick, q))
            p.start()
            pubs.append(p)
        for _ in pubs:
            q.get(timeout=60)
        t0 = time.monotonic()
        server_cpu0 = _server_cpu_s(server)
        print(f"fleet bench: {args.agents} simulated agents in {args.procs} publisher processes "
              f"(one NATS connection each, agents scheduled in turn, a wakeup every "
              f"{tick * 1e3:g} ms at most), {args.duration:g} s, server {url}",
              flush=True)
        published = {"batches": 0, "events": 0}
        pub_rss = []
        pub_cpu: list[float] = []
        consumed: dict[str, dict] = {}
        while len(consumed) < len(consumers) or len(pub_rss) < len(pubs):
            msg = q.get(timeout=args.duration + 900)
            if msg[0] == "published":
                published["batches"] += msg[2]["batches"]
                published["events"] += msg[2]["events"]
                pub_rss.append(msg[3])
                pub_cpu.append(msg[4])
            elif msg[0] == "consumed":
                consumed[msg[1]] = msg[2]
        wall = time.monotonic() - t0
        server_cpu1 = _server_cpu_s(server)
        for p in procs + pubs:
            p.join(timeout=10)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        if server is not None:
            server.stop_blocking()
    print(f"published: {published['batches']} batches, {published['events']} events "
          f"({published['events'] / args.duration:,.0f} events/s offered); publisher peak RSS "
          f"{max(pub_rss) / 1024:.0f} MiB each at most; publisher CPU {sum(pub_cpu):.1f} s in all "
          f"({sum(pub_cpu) / max(1, published['batches']) * 1e6:.0f} us per batch published)")
    for name, s in consumed.items():
        expected = published["batches"]  # both subscribe to every kind the agents publish
        active = s["active_s"] or wall
        line = (f"{name:>10}: {s['batches']} batches, {s['events']} events, "
                f"{s['events'] / active:,.0f} events/s sustained over {active:.1f} s; "
                f"missed {s['missed']} (sequence holes) + {s['unreceived']} (tail: announced by "
                f"the runs' status, never received) = {s['missed'] + s['unreceived']}, "
                f"rejected {s['rejected']}, "
                f"slow-consumer drops {s['slow_consumer_drops']}, queue drops {s['dropped']}; "
                f"max lag queued {s['max_queued']} pending {s['max_pending']} (Subscription.lag()), "
                f"behind by up to {s['max_behind_s']:.1f} s (event time); "
                f"peak RSS {s['maxrss_kb'] / 1024:.0f} MiB; CPU {sum(s['cpu_s']):.1f} s "
                f"(user {s['cpu_s'][0]:.1f}, system {s['cpu_s'][1]:.1f}; "
                f"{sum(s['cpu_s']) / max(1, s['batches']) * 1e6:.0f} us per batch received)")
        line += (f"; received vs published: {s['batches']} / {expected} (difference "
                 f"{expected - s['batches']}); bus errors {s['bus_errors'] or 'none'}")
        if name.startswith("correlator"):
            line += (f"; frames matched {s['delivered']}, judged lost {s['lost']}, unknown {s['unknown']}, incidents {s['incidents']}, "
                     f"evicted {s['evicted'] or 'nothing'}; {s['counts']}")
        print(line)
    # What each process would need to keep up, from its own CPU per batch: the machine's
    # cores must hold the sum.
    rate = published["batches"] / args.duration
    need = {"publishers": sum(pub_cpu) / args.duration}
    for name, s in consumed.items():
        need[name] = sum(s["cpu_s"]) / max(1, s["batches"]) * rate
    counted = server_cpu0 is not None and server_cpu1 is not None
    if counted:  # all it did for the run's batches (in, and out to each consumer)
        need["nats-server"] = (server_cpu1 - server_cpu0) / args.duration
    print(f"cores needed at {rate:,.0f} batches/s offered: "
          + ", ".join(f"{k} {v:.2f}" for k, v in need.items())
          + f"; {sum(need.values()):.2f} in all"
          + ("" if counted else ", not counting nats-server")
          + f", on {os.cpu_count()} cores")
    if n > 1:
        members = [consumed[m] for m in names]
        print(f"{n} partitioned correlators together: frames matched "
              f"{sum(m['delivered'] for m in members)}, judged lost {sum(m['lost'] for m in members)}, "
              f"unknown {sum(m['unknown'] for m in members)}; missed "
              f"{sum(m['missed'] + m['unreceived'] for m in members)} batches in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of the kfree_skb tracepoint drop source, against its limit, in one run.

1. Throughput. One private tracefs instance is filled with the same burst of drops twice (a C
   sender into an nftables output-hook drop rule inside a private namespace; the event is
   disabled before reading, so nothing else enters). The burst is drained once by
   ``dd iflag=nonblock if=trace_pipe of=/dev/null`` (cat that stops when the pipe is empty: the
   kernel's own text formatting, the limit of any trace_pipe reader) and once by the agent's
   reader (read + KfreeSkbParser + DropAggregator + flush). Prints both rates and the ratio.

2. Latency from drop to event at a subscriber: the agent (AgentRunner + TracepointDrops)
   publishes to a real nats-server; a probe sends one IP packet with an unassigned protocol
   number (253) into a private namespace (dropped as IP_NOPROTO, a reason nothing else on the
   machine produces) at a random moment, and the subscriber notes when the event carrying it
   arrives. Median and p99 per aggregation interval.

Run as root: ``python bench/drops.py [--probes N] [--burst-seconds S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import random
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.drops import DropsCollector  # noqa: E402
from agents.drops.aggregate import DropAggregator  # noqa: E402
from agents.drops.tracepoint import (  # noqa: E402
    KfreeSkbParser,
    TraceInstance,
    TracepointDrops,
    boottime_offset_ns,
)
from agents.runner import AgentRunner, RunnerOptions  # noqa: E402
from netevents.bus import EmbeddedServer, connect  # noqa: E402

FLOOD_C = ROOT / "tests" / "agents" / "drops" / "tools" / "flood.c"
NFT_RULES = """table inet netevents_bench {
  chain output {
    type filter hook output priority 0
    udp dport 5555 counter drop
  }
}
"""


def sh(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


class Namespace:
    def __init__(self) -> None:
        self.name = f"ne-bench-{uuid.uuid4().hex[:6]}"

    def __enter__(self) -> Namespace:
        sh("ip", "netns", "add", self.name)
        sh("ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up")
        sh("ip", "netns", "exec", self.name, "nft", "-f", "-", input=NFT_RULES)
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def fill(inst: TraceInstance, ns: Namespace, flood: Path, seconds: float) -> int:
    """Enable the event, run the flood, disable: the ring holds the burst."""
    (inst.path / "events/skb/kfree_skb/enable").write_text("1")
    out = sh("ip", "netns", "exec", ns.name, str(flood), "127.0.0.1", "5555", str(seconds)).stdout
    inst.disable()
    return int(out)


def bench_throughput(flood: Path, seconds: float) -> None:
    with Namespace() as ns:
        inst = TraceInstance.create(buffer_kb=16384)
        try:
            inst.disable()
            inst.overrun_delta()
            # 1. the limit: dd draining the text pipe into /dev/null
            sent = fill(inst, ns, flood, seconds)
            t = time.perf_counter()
            subprocess.run(["dd", f"if={inst.path / 'trace_pipe'}", "of=/dev/null", "bs=1M",
                            "iflag=nonblock", "status=none"], check=False, capture_output=True)
            t_dd = time.perf_counter() - t
            lost_dd = inst.overrun_delta()
            # 2. the agent's reader on the same instance and the same burst size
            sent2 = fill(inst, ns, flood, seconds)
            agg = DropAggregator("tracepoint")
            parser = KfreeSkbParser(agg, clock_offset_ns=boottime_offset_ns())
            fd = inst.open_pipe()
            t = time.perf_counter()
            while True:
                data = inst.read(1 << 20)
                if not data:
                    break
                parser.feed(data)
            events = agg.flush()
            t_ours = time.perf_counter() - t
            lost_ours = inst.overrun_delta()
            os.close(fd)
            inst.pipe_fd = None
        finally:
            inst.remove()
    got = sum(e["count"] for e in events)
    r_dd = (sent - lost_dd) / t_dd
    r_ours = got / t_ours
    print(f"throughput: burst {sent:,} / {sent2:,} drops (ring overruns {lost_dd} / {lost_ours})")
    print(f"  dd trace_pipe > /dev/null (limit): {r_dd:12,.0f} drops/s  ({t_dd:.3f} s)")
    print(f"  agent reader+parse+aggregate:      {r_ours:12,.0f} drops/s  ({t_ours:.3f} s, "
          f"{got:,} drops -> {len(events)} events)")
    print(f"  ratio agent / limit: {r_ours / r_dd:.2f}")


# -- latency -------------------------------------------------------------------------------------

CLONE_NEWNET = 0x40000000


def raw_socket_in(ns: str) -> socket.socket:
    """An IPPROTO_RAW socket created inside namespace ``ns`` (from a thread that entered it)."""
    box: list = []

    def make() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)
        box.append(socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW))

    t = threading.Thread(target=make)
    t.start()
    t.join()
    return box[0]


def noproto_packet() -> bytes:
    # IPv4, protocol 253 (RFC 3692 experimental): nobody handles it -> IP_NOPROTO drop.
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 253, 0,
                       socket.inet_aton("127.0.0.1"), socket.inet_aton("127.0.0.1")) + b"\0" * 8


async def latency(url: str, ns: Namespace, interval: float, probes: int) -> list[float]:
    sock = raw_socket_in(ns.name)
    pkt = noproto_packet()
    tp = TracepointDrops(interval=interval)
    lat: list[float] = []
    async with connect(url) as pub, connect(url) as subbus:
        sub = subbus.subscribe(["drop"], hosts=["bench"])
        await sub.start()
        runner = AgentRunner(pub, [DropsCollector([tp], None)],
                             RunnerOptions(host="bench", status_interval=60))
        stop = asyncio.Event()
        agent = asyncio.create_task(runner.run(stop))
        await tp.ready.wait()
        for _ in range(probes):
            await asyncio.sleep(random.uniform(0.05, interval + 0.05))
            sent = time.time_ns()
            sock.sendto(pkt, ("127.0.0.1", 0))
            async with asyncio.timeout(interval + 5):
                while True:
                    b = await sub.next(timeout=interval + 5)
                    if b is None:
                        raise RuntimeError("no drop event for a probe")
                    if any(e["reason"] == "IP_NOPROTO" for e in b.rows()):
                        lat.append((time.time_ns() - sent) / 1e6)
                        break
        stop.set()
        await agent
        await sub.close()
    sock.close()
    return lat


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


async def bench_latency(probes: int) -> None:
    with tempfile.TemporaryDirectory() as store, Namespace() as ns:
        server = EmbeddedServer(Path(store), port=0)
        url = await server.start()
        try:
            for interval in (0.1, 1.0):
                lat = await latency(url, ns, interval, probes)
                print(f"latency drop -> subscriber, aggregation interval {interval} s "
                      f"(one batch per window), {len(lat)} probes: median "
                      f"{statistics.median(lat):.1f} ms, p99 {pct(lat, 0.99):.1f} ms, "
                      f"max {max(lat):.1f} ms")
        finally:
            await server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--burst-seconds", type=float, default=0.5)
    ap.add_argument("--probes", type=int, default=30)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/drops.py needs root (tracefs, namespaces)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        flood = Path(tmp) / "flood"
        sh("gcc", "-O2", "-o", str(flood), str(FLOOD_C))
        bench_throughput(flood, args.burst_seconds)
    asyncio.run(bench_latency(args.probes))
    return 0


if __name__ == "__main__":
    sys.exit(main())

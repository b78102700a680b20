"""Benchmark of the kfree_skb tracepoint drop source, against its limit, in one run.

1. Throughput. One private tracefs instance is filled with a burst of drops (a C sender into
   an nftables output-hook drop rule inside a private namespace; the event is disabled before
   reading, so nothing else enters), four times, and drained each time by: ``dd iflag=nonblock
   if=trace_pipe of=/dev/null`` (cat that stops when the pipe is empty: the kernel's text
   formatting, the limit of any trace_pipe reader); the agent's text reader; dd on the per-CPU
   ``trace_pipe_raw``; the agent's raw page reader (each: read + parse + aggregate + flush).
   Prints the rates and the ratios against the limits.

2. Latency from drop to event at a subscriber: the agent (AgentRunner + TracepointDrops)
   publishes to a real nats-server; a probe sends one IP packet with an unassigned protocol
   number (253) into a private namespace (dropped as IP_NOPROTO, a reason nothing else on the
   machine produces) at a random moment, and the subscriber notes when the event carrying it
   arrives. Median and p99 per aggregation interval.

3. eBPF source vs the tracefs source (``--sources``): the same flood (output-hook nft drop in
   a private namespace, ``--flood-seconds`` each) with, in turn, nothing attached, the eBPF
   collector (kfree_skb program, in-kernel aggregation, filter on the namespace) and the
   tracepoint collector (raw page reader), each running its real ``run()`` loop. Prints drops
   counted, events emitted, drops/s, the agent's CPU (user+sys of this process) per million
   drops, the BPF program's own run time per drop (``kernel.bpf_stats_enabled``), and the
   flood's send rate (the dropped traffic's rate) with and without each source attached.

Run as root: ``python bench/drops.py [--probes N] [--burst-seconds S] [--flood-seconds S]
[--only sources]``.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import random
import resource
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

from netevents.agent.drops import DropsCollector  # noqa: E402
from netevents.agent.drops.aggregate import DropAggregator  # noqa: E402
from netevents.agent.drops.tracepoint import KfreeSkbInstance, TracepointDrops  # noqa: E402
from netevents.agent.runner import AgentRunner, RunnerOptions  # noqa: E402
from netevents.bus import EmbeddedServer, connect  # noqa: E402
from netevents.errors import CapabilityError  # noqa: E402

FLOOD_C = ROOT / "tests" / "agent" / "drops" / "tools" / "flood.c"
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


def fill(inst: KfreeSkbInstance, ns: Namespace, flood: Path, seconds: float) -> int:
    """Enable the event, run the flood, disable: the ring holds the burst."""
    (inst.path / "events/skb/kfree_skb/enable").write_text("1")
    out = sh("ip", "netns", "exec", ns.name, str(flood), "127.0.0.1", "5555", str(seconds)).stdout
    inst.disable()
    return int(out)


def _drain_with_dd(paths: list[Path]) -> float:
    t = time.perf_counter()
    for path in paths:
        subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M", "iflag=nonblock",
                        "status=none"], check=False, capture_output=True)
    return time.perf_counter() - t


def _drain_agent(inst: KfreeSkbInstance, reader: str) -> tuple[float, int, int]:
    """The collector's own read path on a filled instance: (seconds, drops, events)."""
    tp = TracepointDrops(reader=reader)
    tp.instance = inst
    if reader == "raw":
        assert tp._open_raw(), "raw reader unavailable"
    else:
        inst.open_pipe()
    t = time.perf_counter()
    tp._drain_all()
    events = tp.agg.flush()
    dt = time.perf_counter() - t
    for fd in [inst.pipe_fd, *inst.raw_fds.values()]:
        if fd is not None:
            os.close(fd)
    inst.pipe_fd, inst.raw_fds = None, {}
    return dt, sum(e["count"] for e in events), len(events)


def bench_throughput(flood: Path, seconds: float) -> None:
    """The same burst size drained four ways from one instance."""
    rows = []
    with Namespace() as ns:
        inst = KfreeSkbInstance.create(buffer_kb=32768)
        try:
            inst.disable()
            inst.overrun_delta()
            cpus = sorted(inst.path.glob("per_cpu/cpu*"))
            for label, how in (
                    ("dd trace_pipe > /dev/null  (limit, text)", "dd-text"),
                    ("agent, trace_pipe text reader", "text"),
                    ("dd trace_pipe_raw > /dev/null (limit, raw)", "dd-raw"),
                    ("agent, raw page reader", "raw")):
                sent = fill(inst, ns, flood, seconds)
                if how == "dd-text":
                    dt, got, nev = _drain_with_dd([inst.path / "trace_pipe"]), None, None
                elif how == "dd-raw":
                    dt, got, nev = _drain_with_dd([c / "trace_pipe_raw" for c in cpus]), None, None
                else:
                    dt, got, nev = _drain_agent(inst, how)
                lost = inst.overrun_delta()
                n = got if got is not None else sent - lost
                rows.append((label, how, n / dt, dt, n, nev, lost))
        finally:
            inst.remove()
    print("throughput: one burst of drops in a private instance, drained:")
    for label, _how, rate, dt, n, nev, lost in rows:
        extra = f", -> {nev} events" if nev is not None else ""
        print(f"  {label:44s} {rate:12,.0f} drops/s  ({n:,} in {dt:.3f} s{extra}; "
              f"ring overrun {lost})")
    rate = {how: r for _l, how, r, *_ in rows}
    print(f"  ratio agent(raw) / dd trace_pipe:  {rate['raw'] / rate['dd-text']:.2f}")
    print(f"  ratio agent(text) / dd trace_pipe: {rate['text'] / rate['dd-text']:.2f}")
    print(f"  ratio agent(raw) / dd trace_pipe_raw: {rate['raw'] / rate['dd-raw']:.2f}")


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


def latency_source(kind: str, ns: Namespace, interval: float):
    """The drop source whose latency is measured: the tracepoint, or the eBPF program (what
    ``source = "auto"`` picks where it loads) filtered in the kernel to the bench's namespace."""
    if kind == "tracepoint":
        return TracepointDrops(interval=interval)
    from netevents.agent.drops.ebpf import EbpfDrops, parse_filter
    from netevents.agent.kernel.netns import resolve

    src = EbpfDrops(interval=interval, filter=parse_filter(f"netns={ns.name}"))
    src.filter.resolve_netns(resolve)
    return src


async def latency(url: str, ns: Namespace, interval: float, probes: int,
                  kind: str = "tracepoint") -> list[float]:
    sock = raw_socket_in(ns.name)
    pkt = noproto_packet()
    tp = latency_source(kind, ns, interval)
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
            for kind, interval in (("tracepoint", 0.1), ("tracepoint", 1.0), ("ebpf", 1.0)):
                try:
                    lat = await latency(url, ns, interval, probes, kind)
                except CapabilityError as exc:
                    print(f"latency drop -> subscriber, {kind}: not measured ({exc})")
                    continue
                print(f"latency drop -> subscriber, {kind}, aggregation interval {interval} s "
                      f"(tick {min(DropAggregator('tracepoint').tick, interval)} s), {len(lat)} probes: median "
                      f"{statistics.median(lat):.1f} ms, p99 {pct(lat, 0.99):.1f} ms, "
                      f"max {max(lat):.1f} ms")
        finally:
            await server.stop()


# -- eBPF vs tracefs --------------------------------------------------------------------------

class CountingSink:
    """The Sink protocol, counting what arrives (the runner's batching is not measured here)."""

    def __init__(self) -> None:
        self.events = 0
        self.drops = 0
        self.lost_counts: dict[str, int] = {}

    def emit(self, kind, event, *, t0=None, t1=None) -> bool:
        self.events += 1
        self.drops += event["count"]
        return True

    def emit_batch(self, kind, events, *, t0=None, t1=None, **fields) -> bool:
        for e in events:
            self.emit(kind, e)
        return True

    def lost(self, place: str, count: int) -> None:
        self.lost_counts[place] = self.lost_counts.get(place, 0) + count

    def declare_loss(self, place: str) -> None:
        self.lost_counts.setdefault(place, 0)

    def state(self, source: str, state: str, reason: str = "") -> None:
        pass


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _bpf_prog_stats() -> tuple[int, int]:
    """(run_time_ns, run_cnt) summed over loaded kfree_skb programs of ours (bpftool)."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True)
    import json
    try:
        progs = json.loads(out.stdout or "[]")
    except ValueError:
        return 0, 0
    mine = [p for p in progs if str(p.get("name", "")).startswith("kfree_skb_")]
    return sum(p.get("run_time_ns", 0) for p in mine), sum(p.get("run_cnt", 0) for p in mine)


async def _flood_with(source, ns: Namespace, flood: Path, seconds: float) -> dict:
    sink = CountingSink()
    task = None
    if source is not None:
        task = asyncio.create_task(source.run(sink))
        async with asyncio.timeout(60):
            await source.ready.wait()
        await asyncio.sleep(0.2)
    stats0 = _bpf_prog_stats()
    cpu0, t0 = _cpu(), time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", ns.name, str(flood), "127.0.0.1", "5555", str(seconds),
        stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    sent = int(out)
    if source is not None:
        await asyncio.sleep(source.interval + 0.3)  # the last window reaches the sink
    wall = time.perf_counter() - t0
    cpu = _cpu() - cpu0
    stats1 = _bpf_prog_stats()
    if task is not None:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
    return {"sent": sent, "rate": sent / seconds, "drops": sink.drops, "events": sink.events,
            "cpu": cpu, "wall": wall, "lost": sink.lost_counts,
            "bpf_ns": stats1[0] - stats0[0], "bpf_runs": stats1[1] - stats0[1]}


async def bench_sources(flood: Path, seconds: float, rounds: int) -> None:
    """Rounds of (bare, ebpf, ebpf + records, tracepoint) floods, interleaved so the machine's
    drift (other work on it) spreads over all of them; medians are printed. One extra eBPF
    flood with ``kernel.bpf_stats_enabled=1`` gives the program's run time per drop (stats
    cost time themselves, so they are off in the timed rounds)."""
    from netevents.agent.drops.ebpf import EbpfDrops, parse_filter
    from netevents.agent.kernel.netns import resolve

    def ebpf(ns: Namespace, every: int = 0) -> EbpfDrops:
        src = EbpfDrops(interval=1.0, filter=parse_filter(f"netns={ns.name}"), sample_every=every)
        src.filter.resolve_netns(resolve)
        return src

    kinds = {
        "bare": ("nothing attached", lambda ns: None),
        "ebpf": ("ebpf (aggregated in the kernel)", ebpf),
        "ebpf_rec": ("ebpf + 1/1000 per-packet records", lambda ns: ebpf(ns, 1000)),
        "tracepoint": ("tracepoint (tracefs, raw reader)",
                       lambda ns: TracepointDrops(interval=1.0, buffer_kb=16384)),
    }
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    with Namespace() as ns:
        for _ in range(rounds):
            for kind, (_label, make) in kinds.items():
                results[kind].append(await _flood_with(make(ns), ns, flood, seconds))
        subprocess.run(["sysctl", "-q", "-w", "kernel.bpf_stats_enabled=1"], check=False)
        try:
            stats = await _flood_with(ebpf(ns), ns, flood, seconds)
        finally:
            subprocess.run(["sysctl", "-q", "-w", "kernel.bpf_stats_enabled=0"], check=False)

    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in results[kind])

    def cpm(kind: str) -> float:  # agent CPU seconds per million drops
        return statistics.median(r["cpu"] / max(r["drops"], 1) * 1e6 for r in results[kind])

    base = med("bare", "rate")
    print(f"sources: {rounds} rounds of a {seconds:.1f} s UDP flood into an output-hook nft "
          f"drop (medians):")
    for kind, (label, _make) in kinds.items():
        line = f"  {label:36s} flood {med(kind, 'rate'):11,.0f} pkt/s ({med(kind, 'rate') / base:6.1%} of bare)"
        if kind != "bare":
            lost: dict[str, int] = {}
            for r in results[kind]:
                for k, v in r["lost"].items():
                    lost[k] = lost.get(k, 0) + v
            lost = {k: v for k, v in lost.items() if v}
            line += (f"; {med(kind, 'drops') / seconds:,.0f} drops/s in "
                     f"{med(kind, 'events'):,.0f} events, agent CPU {cpm(kind):.3f} s per million drops"
                     + (f", lost {lost}" if lost else ""))
        print(line)
    if stats["bpf_runs"]:
        print(f"  BPF program (tp_btf) run time: {stats['bpf_ns'] / stats['bpf_runs']:.0f} ns per "
              f"drop over {stats['bpf_runs']:,} runs (kernel.bpf_stats_enabled)")
    print(f"  ratio agent CPU per million drops, tracepoint / ebpf: {cpm('tracepoint') / cpm('ebpf'):.0f}")
    print(f"  ratio drops/s seen, ebpf / tracepoint: "
          f"{med('ebpf', 'drops') / max(med('tracepoint', 'drops'), 1):.2f}")
    print(f"  dropped traffic's rate with the source attached / bare: ebpf "
          f"{med('ebpf', 'rate') / base:.3f}, tracepoint {med('tracepoint', 'rate') / base:.3f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--burst-seconds", type=float, default=0.5)
    ap.add_argument("--probes", type=int, default=30)
    ap.add_argument("--flood-seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=("throughput", "latency", "sources"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/drops.py needs root (tracefs, namespaces)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        flood = Path(tmp) / "flood"
        sh("gcc", "-O2", "-o", str(flood), str(FLOOD_C))
        if args.only in (None, "throughput"):
            bench_throughput(flood, args.burst_seconds)
        if args.only in (None, "sources"):
            asyncio.run(bench_sources(flood, args.flood_seconds, args.rounds))
    if args.only in (None, "latency"):
        asyncio.run(bench_latency(args.probes))
    return 0


if __name__ == "__main__":
    sys.exit(main())

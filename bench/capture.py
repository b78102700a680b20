"""Capture agent vs tcpdump: CPU-seconds per million frames, and the highest loss-free rate.

    python bench/capture.py [--frames N] [--rounds R] [--rates 50000,...,topspeed] [--walker c|python|both]

Needs root, iproute2, tcpdump and tcpreplay (Debian packages ``tcpdump tcpreplay``).

Set-up: two network namespaces joined by a veth pair (made here, always removed), a real
nats-server on loopback. A pcap of UDP frames over 64 flows (to a MAC that is not the
receiver's, so the stack discards them right after the taps and sends nothing back) is replayed
with ``tcpreplay`` into veth-a; the capture runs on veth-b.

1. CPU: the same replay (``--topspeed``) is captured by ``netevents agent --capture veth-b``
   (one worker, 96-byte summaries published to the nats-server), once per block walker asked
   for (``--walker both``: the C walker and the pure-Python one, netevents/agent/capture/cwalk.py), and
   once by ``tcpdump -s 96 -w /dev/null``, ``--rounds`` times interleaved (the machine's other
   work spreads over both); medians are printed. CPU time (user + system, the whole process
   tree; /proc ticks, hence a million frames per run) is sampled just before and after the
   replay; the anchor is tcpdump's CPU per million frames captured.
   (The kernel's receive work runs in softirq context on the sender's CPU for both and is in
   neither figure.)
2. Loss-free rate: for each walker, for 1 and 2 workers, replays at increasing ``--pps`` rates,
   the last ``topspeed`` (as fast as tcpreplay can: the highest rate the replay reaches); a
   rate is loss-free when the gap records on the bus sum to 0. The rate tcpreplay actually
   achieved is what is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from netevents.bus import EmbeddedServer, connect  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


class Pair:
    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.a, self.b = f"bc-a-{tag}", f"bc-b-{tag}"
        self.made: list[str] = []
        for ns in (self.a, self.b):
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
        sh("ip", "link", "add", f"va{tag}", "netns", self.a, "type", "veth", "peer", "name",
           f"vb{tag}", "netns", self.b)
        sh("ip", "-n", self.a, "link", "set", f"va{tag}", "name", "veth-a")
        sh("ip", "-n", self.b, "link", "set", f"vb{tag}", "name", "veth-b")
        for ns, dev in ((self.a, "veth-a"), (self.b, "veth-b")):
            sh("ip", "-n", ns, "link", "set", dev, "up")

    def close(self) -> None:
        for ns in self.made:
            sh("ip", "netns", "del", ns, check=False)


def write_pcap(path: Path, frames: int, flows: int = 64) -> None:
    """UDP/IPv4 frames, 74 bytes on the wire, to a MAC that is not the receiver's."""
    out = bytearray(struct.pack("=IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    dst_mac, src_mac = bytes.fromhex("020000000099"), bytes.fromhex("020000000001")
    for i in range(frames):
        flow = i % flows
        payload = struct.pack("!I", i) + b"b" * 28
        udp = struct.pack("!HHHH", 20000 + flow, 9999, 8 + len(payload), 0) + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
                         bytes([10, 99, 0, 1]), bytes([10, 99, 0, 2])) + udp
        frame = dst_mac + src_mac + b"\x08\x00" + ip
        out += struct.pack("=IIII", i // 1_000_000, i % 1_000_000, len(frame), len(frame)) + frame
    path.write_bytes(bytes(out))


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (live ones)."""
    total = 0.0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / HZ
            for task in Path(f"/proc/{p}/task").iterdir():
                kids = (task / "children").read_text().split()
                stack.extend(int(k) for k in kids)
        except (OSError, IndexError, ValueError):
            continue
    return total


def replay(pair: Pair, pcap: Path, pps: int | None) -> float:
    """Replay the pcap into veth-a; returns the rate tcpreplay achieved (pps)."""
    rate = ["--topspeed"] if pps is None else [f"--pps={pps}"]
    r = sh("ip", "netns", "exec", pair.a, "tcpreplay", "-q", "-i", "veth-a", *rate, str(pcap))
    m = re.search(r"Rated: [\d.]+ Bps, [\d.]+ Mbps, ([\d.]+) pps", r.stdout + r.stderr)
    return float(m.group(1)) if m else float("nan")


async def agent_run(pair: Pair, url: str, pcap: Path, workers: int, pps: int | None,
                    conf: Path) -> dict:
    """One agent run over one replay: CPU, frames and gap total seen on the bus."""
    host = f"bench{workers}"
    out = {"frames": 0, "lost": 0, "finals": 0}
    async with connect(url) as bus:
        sub = bus.subscribe(["frame", "gap", "status"], hosts=[host])
        await sub.start()
        agent = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "netevents.app", "agent", "--bus", url, "--host", host,
            "--config", str(conf), "--capture", "veth-b", "--workers", str(workers), cwd=ROOT,
            stderr=asyncio.subprocess.DEVNULL)

        async def reader() -> None:
            while out["finals"] < 1 + (workers if workers > 1 else 0):
                batch = await sub.next(timeout=60)
                if batch is None:
                    return
                if batch.kind == "frame":
                    out["frames"] += len(batch)
                elif batch.kind == "gap":
                    out["lost"] += sum(e["lost"] for e in batch.events)
                elif batch.events[0].get("final"):
                    out["finals"] += 1

        task = asyncio.create_task(reader())
        await asyncio.sleep(2.5 if workers > 1 else 1.5)  # start-up, rings open
        cpu0 = tree_cpu(agent.pid)
        t0 = time.monotonic()
        out["rate"] = await asyncio.to_thread(replay, pair, pcap, pps)
        await asyncio.sleep(1.0)  # let the rings drain
        out["cpu"] = tree_cpu(agent.pid) - cpu0
        out["wall"] = time.monotonic() - t0
        agent.terminate()
        await agent.wait()
        await asyncio.wait_for(task, 30)
        await sub.close()
    return out


def tcpdump_run(pair: Pair, pcap: Path) -> dict:
    proc = subprocess.Popen(["ip", "netns", "exec", pair.b, "tcpdump", "-i", "veth-b", "-s", "96",
                             "-w", "/dev/null", "-n"], stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        cpu0 = tree_cpu(proc.pid)
        rate = replay(pair, pcap, None)
        time.sleep(1.0)
        cpu = tree_cpu(proc.pid) - cpu0
    finally:
        proc.terminate()
        err = proc.communicate(timeout=10)[1]
    captured = int(re.search(r"(\d+) packets? captured", err).group(1))
    dropped = int(re.search(r"(\d+) packets? dropped by kernel", err).group(1))
    return {"cpu": cpu, "frames": captured, "lost": dropped, "rate": rate}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3, help="CPU runs of each, interleaved")
    ap.add_argument("--rates", default="50000,100000,200000,300000,topspeed")
    ap.add_argument("--walker", choices=("c", "python", "both"), default="both",
                    help="block walker(s) to measure, side by side with tcpdump")
    args = ap.parse_args()
    walkers = ["c", "python"] if args.walker == "both" else [args.walker]
    for tool in ("tcpdump", "tcpreplay", "ip"):
        if shutil.which(tool) is None:
            print(f"bench/capture.py: needs {tool} (apt-get install tcpdump tcpreplay iproute2)")
            return 2
    if os.geteuid() != 0:
        print("bench/capture.py: needs root (network namespaces)")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="netevents-bench-"))
    pair = Pair()
    server = EmbeddedServer(tmp / "nats", port=0)
    try:
        url = server.start_blocking()
        pcap = tmp / "replay.pcap"
        write_pcap(pcap, args.frames)
        confs = {}
        for walker in walkers:
            confs[walker] = tmp / f"agent-{walker}.toml"
            confs[walker].write_text(f'[capture]\nnetns = "{pair.b}"\nhwtstamp = false\n'
                                     f'walker = "{walker}"\n')
        print(f"capture bench: {args.frames} frames of 74 bytes, 64 flows, tcpreplay into veth; "
              f"nats-server {url}; {os.cpu_count()} cores")

        # per frame captured (a frame the ring dropped costs user space nothing)
        runs: dict[str, list[dict]] = {w: [] for w in [*walkers, "tcpdump"]}
        for _ in range(args.rounds):
            for w in walkers:
                runs[w].append(asyncio.run(agent_run(pair, url, pcap, 1, None, confs[w])))
            runs["tcpdump"].append(tcpdump_run(pair, pcap))
        per_m = {w: statistics.median(r["cpu"] / max(r["frames"], 1) * 1e6 for r in rs)
                 for w, rs in runs.items()}
        for w, rs in runs.items():
            label = (f"netevents agent (1 worker, {w} walker, to NATS):" if w != "tcpdump"
                     else "tcpdump -s 96 -w /dev/null:")
            each = ", ".join(f"{r['cpu'] / max(r['frames'], 1) * 1e6:.3f}" for r in rs)
            print(f"  {label:<48} {per_m[w]:.3f} CPU-s per million frames (median of {each}; "
                  f"{statistics.median(r['frames'] for r in rs):.0f} frames + "
                  f"{statistics.median(r['lost'] for r in rs):.0f} lost at "
                  f"{statistics.median(r['rate'] for r in rs):.0f} pps)")
        for w in walkers:
            print(f"  ratio (netevents {w} walker / tcpdump, CPU per frame, medians): "
                  f"{per_m[w] / per_m['tcpdump']:.2f}")

        for walker, workers in ((w, n) for w in walkers for n in (1, 2)):
            best = None
            for rate in args.rates.split(","):
                pps = None if rate == "topspeed" else int(rate)
                n = min(args.frames, max((pps or 500_000) * 2, 20_000))
                sub_pcap = tmp / f"replay-{n}.pcap"
                if not sub_pcap.exists():
                    write_pcap(sub_pcap, n)
                r = asyncio.run(agent_run(pair, url, sub_pcap, workers, pps, confs[walker]))
                ok = r["lost"] == 0
                print(f"  {walker} walker, {workers} worker(s) at {rate:>8} pps requested, {r['rate']:>9.0f} "
                      f"achieved: {r['frames']} frames, {r['lost']} lost in gaps"
                      f"{'' if ok else '  <- loss'}")
                if ok:
                    best = r["rate"]
                else:
                    break
            print(f"  highest loss-free rate, {walker} walker, {workers} worker(s): "
                  f"{'none' if best is None else f'{best:.0f} pps'}")
    finally:
        server.stop_blocking()
        pair.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

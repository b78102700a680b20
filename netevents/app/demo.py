"""`netevents demo`: a small fleet of namespace hosts with real faults, correlated live.

Topology: a hub namespace with a bridge; N >= 3 host namespaces (host tokens = their names),
each with ``eth0`` (10.231.X.i/24) joined to the bridge by a veth pair. Faults, all real kernel
mechanisms:

    lossy link      tbf (rate-limited, tiny queue) on the hub's port toward host 2: tail drops
                    (QDISC_DROP) of everything sent to host 2 -> path loss h1->h2, h3->h2;
                    ``--loss PCT`` adds random loss on that link: an nftables bridge rule in the
                    hub drops PCT % of what it forwards to host 2 (``numgen random``,
                    NETFILTER_DROP on the path; this kernel has no netem, and netem is not
                    everywhere)
    firewall drop   an nftables input rule in host 3 drops UDP port 7777 (NETFILTER_DROP)
    full rcvbuf     host 1 holds a UDP socket (port 9999) it never reads; host 2 sends to it
                    (UDP RcvbufErrors in host 1's namespace)
    capture gap     host 3's capture is stopped (SIGSTOP) for 2 s while host 1 sends a burst
                    to host 3: its ring overflows, the gap record says so, and the frames
                    missing at host 3 in that time are *unknown*, not lost

Where the agents run: in the ROOT namespace, one agent
process per host with per-namespace options -- ``[capture] netns``, ``[drops] netns`` (counter
drops), ``[ipstats] netns`` -- publishing to the embedded server on 127.0.0.1. A process inside
a namespace could not reach the root namespace's loopback, and giving the bridge an address
the server listens on would put the bus's own traffic on the captured interfaces. Kernel-wide
drop events (tracepoint, or the eBPF source where it exists) come from host 1's agent only:
they see every namespace of the machine; the eBPF source names the namespace, the tracepoint
cannot, and the correlator then calls them machine-wide.

Everything made is removed on exit, also after Ctrl-C / SIGTERM: processes by pid, then the
namespaces (which takes their veths, qdiscs and nftables tables with them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CapabilityError
from .ui import draw

log = logging.getLogger("netevents.demo")


def _run(*cmd: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True, input=input)


@dataclass
class DemoNetwork:
    """The namespaces and links of the demo; :meth:`build` makes them, :meth:`remove` undoes."""

    hosts: int = 3
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:5])
    namespaces: list[str] = field(default_factory=list)
    addrs: dict[str, str] = field(default_factory=dict)
    hub: str = ""
    net: str = ""

    def __post_init__(self) -> None:
        self.hub = f"ne-hub-{self.tag}"
        self.names = [f"ne-h{i + 1}-{self.tag}" for i in range(self.hosts)]
        self.net = f"10.231.{int(self.tag[:2], 16) % 200 + 20}"
        self.addrs = {n: f"{self.net}.{i + 1}" for i, n in enumerate(self.names)}

    def ns(self, name: str, *cmd: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        return _run("ip", "netns", "exec", name, *cmd, check=check, input=input)

    def build(self, tbf_rate: str = "2mbit", loss_pct: float = 0.0) -> None:
        """Raises CapabilityError when something the demo needs is missing (root, ip, tc, nft)."""
        if os.geteuid() != 0:
            raise CapabilityError("root", "the demo creates network namespaces: run it as root")
        for tool in ("ip", "tc", "nft"):
            if shutil.which(tool) is None:
                raise CapabilityError(tool, f"the demo needs the {tool} command (iproute2, nftables)")
        try:
            for name in (self.hub, *self.names):
                _run("ip", "netns", "add", name)
                self.namespaces.append(name)
                self.ns(name, "ip", "link", "set", "lo", "up")
            self.ns(self.hub, "ip", "link", "add", "br0", "type", "bridge")
            self.ns(self.hub, "ip", "link", "set", "br0", "up")
            for i, name in enumerate(self.names, start=1):
                port, tmp = f"p{i}", f"nd{self.tag}{i}"
                _run("ip", "link", "add", tmp, "netns", name, "type", "veth", "peer", "name", port,
                     "netns", self.hub)
                self.ns(name, "ip", "link", "set", tmp, "name", "eth0")
                self.ns(name, "ip", "addr", "add", f"{self.addrs[name]}/24", "dev", "eth0")
                self.ns(name, "ip", "link", "set", "eth0", "up")
                self.ns(self.hub, "ip", "link", "set", port, "master", "br0")
                self.ns(self.hub, "ip", "link", "set", port, "up")
            # lossy link: the hub's port toward host 2 is slow with a short queue (tail drops)
            self.ns(self.hub, "tc", "qdisc", "add", "dev", "p2", "root", "tbf", "rate", tbf_rate,
                    "burst", "4kb", "limit", "12kb")
            if loss_pct > 0:
                # random loss on the same link: PCT % of what the bridge forwards to host 2
                per_mille = min(1000, round(loss_pct * 10))
                self.ns(self.hub, "nft", "-f", "-", input=(
                    "table bridge ne_demo_loss {\n chain forward {\n"
                    "  type filter hook forward priority 0;\n"
                    f'  oifname "p2" numgen random mod 1000 < {per_mille} drop\n }}\n}}\n'))
            # firewall drop on host 3
            self.ns(self.names[2], "nft", "-f", "-", input=(
                "table inet ne_demo {\n chain input {\n  type filter hook input priority 0;\n"
                "  udp dport 7777 drop\n }\n}\n"))
        except subprocess.CalledProcessError as exc:
            self.remove()
            raise CapabilityError("netns", f"building the demo fleet failed: {' '.join(exc.cmd)}: "
                                           f"{(exc.stderr or '').strip()}") from None

    def remove(self) -> None:
        for name in reversed(self.namespaces):
            _run("ip", "netns", "del", name, check=False)
        self.namespaces.clear()


def ebpf_available() -> bool:
    """Does the drops source accept the eBPF event source here (it needs BTF and root)?"""
    from netevents.agent.config import AgentConfig
    from netevents.agent.drops import build

    try:
        build({"sources": ["ebpf", "counter"]}, AgentConfig())
    except Exception:  # noqa: BLE001 -- ConfigError on trees without it, CapabilityError, ...
        return False
    return True


def agent_toml(fleet: DemoNetwork, host: str, url: str, spool: Path, kernel_wide: bool) -> str:
    """The TOML of one host's agent (runs in the root namespace, reads the host's namespace)."""
    sources = ['"counter"']
    extra = ""
    if kernel_wide:
        ebpf = ebpf_available()
        sources = ['"netdm"', *(['"ebpf"'] if ebpf else []), '"tracepoint"', '"counter"']
        # every dropped packet as its own record (the demo's drop rates are small): the
        # correlator then names a lost frame by the drop of that very packet, not by a vote
        extra = "sample_every = 1\n" if ebpf else ""
    return (f'[agent]\nbus = "{url}"\nhost = "{host}"\nsite = "demo"\nstatus_interval = 1.0\n'
            f'spool_dir = "{spool}"\n\n'
            f'[capture]\niface = "eth0"\nnetns = "{host}"\nsnaplen = 128\nhwtstamp = false\n'
            f'block_size = 65536\nblock_nr = 4\nretire_tov_ms = 20\n\n'
            f'[drops]\nsources = [{", ".join(sources)}]\nnetns = "{host}"\ninterval = 1.0\n{extra}\n'
            f'[ipstats]\nnetns = "{host}"\ninterval = 2.0\nlevel = "diagnostics"\n')


class Processes:
    """Child processes of the demo, stopped by pid (SIGTERM, then SIGKILL)."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], log_path: Path) -> subprocess.Popen:
        logf = open(log_path, "wb")  # noqa: SIM115 -- closed with the process
        proc = subprocess.Popen(cmd, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        logf.close()
        self.procs.append((name, proc))
        return proc

    def stop(self, grace: float = 8.0) -> None:
        for _name, p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for _name, p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()


def descendants(pid: int, marker: str) -> list[int]:
    """Pids of ``pid``'s descendant processes whose command line contains ``marker``."""
    parent: dict[int, int] = {}
    cmd: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            cmd[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue

    def under(p: int) -> bool:
        seen = 0
        while p in parent and seen < 64:
            p = parent[p]
            seen += 1
            if p == pid:
                return True
        return False

    return [p for p in parent if marker in cmd.get(p, "") and under(p)]


async def run_demo(args: argparse.Namespace) -> int:
    from ..bus import EmbeddedServer, connect
    from ..consumers.correlate import Correlator, run_correlate
    from ..consumers.view import FleetView, feed_view
    from ..errors import ConfigError
    from ..events import to_wire

    if args.hosts < 3:
        raise ConfigError("--hosts must be at least 3")
    if not 0 <= args.loss <= 100:
        raise ConfigError(f"--loss must be a percentage from 0 to 100, got {args.loss:g}")
    fleet = DemoNetwork(hosts=args.hosts)
    procs = Processes()
    work = Path(tempfile.mkdtemp(prefix="netevents-demo-"))
    server = EmbeddedServer(work / "nats", port=0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    incidents: list[Any] = []
    # Host 1's kernel-wide drop source sees every namespace of this machine: the correlator
    # names only the demo's hosts and its hub, and counts the rest as foreign.
    corr = Correlator(window=10.0, grace=2.0, report_interval=3.0, namespaces={fleet.hub})
    view = FleetView()
    view.correlator = corr
    all_up = asyncio.Event()
    view.on_status = lambda host, st: (all_up.set() if set(fleet.names) <= seen_hosts(view)
                                       else None)
    interactive = args.duration is None and sys.stdout.isatty()
    if interactive:  # the live view owns the terminal: incidents are in its [i] view
        logging.getLogger("netevents").setLevel(logging.WARNING)
    say = (lambda m: None) if interactive else (lambda m: print(f"demo: {m}", file=sys.stderr, flush=True))
    events_log: list[str] = []
    try:
        await asyncio.to_thread(fleet.build, loss_pct=args.loss)
        url = await server.start()
        say(f"fleet {', '.join(fleet.names)} on {fleet.net}.0/24 via {fleet.hub}; bus {url}; logs {work}")
        agents: dict[str, subprocess.Popen] = {}
        for i, host in enumerate(fleet.names):
            cfg_path = work / f"{host}.toml"
            cfg_path.write_text(agent_toml(fleet, host, url, work / f"spool-{host}", kernel_wide=(i == 0)))
            agents[host] = procs.start(host, [sys.executable, "-m", "netevents.app", "agent",
                                              "--config", str(cfg_path)], work / f"agent-{host}.log")
        async with connect(url, name="netevents-demo", streams=True) as bus:
            ready = asyncio.Event()
            corr_ready = asyncio.Event()
            tasks = [asyncio.create_task(feed_view(bus, view, stop, ready=ready)),
                     asyncio.create_task(run_correlate(url, stop=stop, correlator=corr,
                                                       token="correlator-demo", site="demo",
                                                       ready=corr_ready, tick_interval=0.5,
                                                       on_incident=incidents.append))]
            await ready.wait()
            await corr_ready.wait()
            # wait for every host's first status (its sources are running)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(20):
                    await all_up.wait()
            for host, p in agents.items():
                if p.poll() is not None or host not in seen_hosts(view):
                    tail = (work / f"agent-{host}.log").read_text(errors="replace").strip().splitlines()[-1:]
                    log.warning("agent of %s %s: %s", host, "exited" if p.poll() is not None
                                else "sent no status", tail[0] if tail else "(no output)")
            say(f"agents up: {sorted(seen_hosts(view))}")
            await asyncio.sleep(1.5)  # capture rings open
            a = fleet.addrs
            h1, h2, h3 = fleet.names[:3]
            traffic = {
                h1: {"udp_peers": [a[h2], a[h3]], "tcp_to": a[h2], "fw_to": a[h3], "sink": True,
                     "rcvbuf_sink": True, "burst_to": a[h3], "burst": 5000},
                h2: {"udp_peers": [a[h1], a[h3]], "rcvbuf_to": a[h1], "sink": True},
                h3: {"udp_peers": [a[h1], a[h2]], "tcp_to": a[h1], "sink": True},
            }
            for extra in fleet.names[3:]:
                traffic[extra] = {"udp_peers": [a[h1], a[h3]], "sink": True}
            gens = {}
            for host, spec in traffic.items():
                spec.setdefault("rate", 50)
                gens[host] = procs.start(f"traffic-{host}", ["ip", "netns", "exec", host, sys.executable,
                                                           "-m", "netevents.app.demo_traffic", json.dumps(spec)],
                                         work / f"traffic-{host}.log")
            say("traffic and faults running: lossy link hub->" + h2 + ", firewall on " + h3
                + ", full UDP buffer on " + h1)
            tasks.append(asyncio.create_task(_capture_gap(agents[h3], gens[h1], stop, say, events_log,
                                                          delay=6.0)))
            if interactive:
                await draw(view, stop, "paths")
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(args.duration):
                        await stop.wait()
            say("stopping")
            for t in tasks[2:]:
                t.cancel()
            # the last frames still get judged: traffic stops first, then one grace period
            for g in gens.values():
                with contextlib.suppress(ProcessLookupError):
                    g.send_signal(signal.SIGTERM)
            if not interactive:
                await asyncio.sleep(3.0)
            stop.set()
            for t in tasks:
                with contextlib.suppress(BaseException):
                    await t
    finally:
        await asyncio.to_thread(procs.stop)
        await server.stop()
        await asyncio.to_thread(fleet.remove)
        if args.keep_logs:
            print(f"demo: logs and configs kept in {work}", file=sys.stderr, flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    final = corr.tick(time.time_ns() + 10**10, flush=True)
    incidents.extend(final)
    if args.duration is not None or not interactive:
        summary = {"hosts": fleet.names, "addresses": fleet.addrs, "hub": fleet.hub,
                   "paths": corr.path_table(), "drops": corr.drop_table(),
                   "kernel_wide_source": "ebpf" if ebpf_available() else "tracepoint",
                   "events": dict(view.events), "missed_batches": sum(view.missed.values()),
                   "agent_losses": view.agent_losses(), "evicted": dict(corr.evicted),
                   "foreign_namespace_drops": dict(corr.directory.foreign),
                   "correlator": dict(corr.counts),
                   "faults": {"lossy_link": f"{fleet.hub} -> {fleet.names[1]} (tbf)"
                              + (f" + {args.loss:g}% random (nftables bridge)" if args.loss else ""),
                              "firewall": f"{fleet.names[2]} udp dport 7777",
                              "rcvbuf": f"{fleet.names[0]} udp 9999",
                              "capture_gap": events_log}}
        if args.json:
            for inc in incidents:
                print(json.dumps({"incident": to_wire(inc)}, default=str))
            print(json.dumps({"summary": summary}, default=str))
        else:
            print(f"incidents seen: {len(incidents)}")
            for inc in incidents:
                print(f"  [{inc.type}] {inc.summary}")
            print("path table (from -> to: delivered lost unknown, p50/p99 one-way delay, reason):")
            for r in corr.path_table():
                p50 = f"{r['p50_ns'] / 1e6:.3f}" if r["p50_ns"] is not None else "-"
                p99 = f"{r['p99_ns'] / 1e6:.3f}" if r["p99_ns"] is not None else "-"
                print(f"  {r['from']} -> {r['to']}: {r['delivered']} {r['lost']} {r['unknown']}, "
                      f"{p50}/{p99} ms, {r['reason'] or '-'}")
            print("drops by where they were attributed:")
            for d in corr.drop_table():
                print(f"  {d['entity']:<24} {d['reason']:<22} {d['count']:>7}  ({d['how']})")
            if corr.directory.foreign:
                print("drops in namespaces outside the demo, set aside: " + ", ".join(
                    f"{ns} {n}" for ns, n in corr.directory.foreign.most_common()))
    return 0


def seen_hosts(view: Any) -> set[str]:
    """Hosts whose agent sent a status (FleetView keys its agents by (host, run))."""
    return {k[0] if isinstance(k, tuple) else k for k in view.agents}


async def _capture_gap(agent: subprocess.Popen, sender: subprocess.Popen, stop: asyncio.Event,
                       say: Any, events_log: list[str], delay: float) -> None:
    """Blind host 3's capture for 2 s while host 1 bursts at it: a real ring-full gap.

    Host 3, not host 2: everything toward host 2 passes the slow link, which would drop the
    burst before it reached host 2's ring.

    The capture (the agent process, or its capture workers) is stopped with SIGSTOP: the kernel
    keeps filling the ring until it is full and counts the rest in tp_drops, which the capture
    reports as a gap record when it runs again.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await stop.wait()
    if stop.is_set():
        return
    # One ring runs inside the agent process itself; several run in worker processes.
    workers = descendants(agent.pid, "netevents.agent.capture.workers") or [agent.pid]
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(0.3)
        sender.send_signal(signal.SIGUSR1)
        events_log.append(f"SIGSTOP capture worker(s) {workers} at {time.time_ns()}, burst sent")
        say(f"capture gap: host 3's capture stopped 2 s (pids {workers}) while host 1 sends a burst")
        await asyncio.sleep(2.0)
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        events_log.append(f"SIGCONT at {time.time_ns()}")

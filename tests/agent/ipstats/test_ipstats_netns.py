"""ipstats end to end in network namespaces, with a real nats-server and real kernel drops.

Host ``a`` runs the collector (reading a's namespace); host ``b`` (two addresses) receives TCP
flows. An nftables rule in b drops 1 in 10 data segments sent to the lossy address only, so a's
retransmits must land on that peer and not on the clean one.

The collector reads a's namespace from the test process: its netlink sockets and /proc/net
files are opened inside the namespace by a short-lived thread (``sockdiag.in_netns``) and stay
bound to it, while its bus connection stays in the root namespace where nats-server listens on
loopback. (An agent started with ``ip netns exec`` would need the bus reachable from inside
the namespace, and a separate process to manage; this keeps one process and real loopback.)
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import threading
import time
import uuid

import msgpack
import pytest

from netevents.agent.control import ControlServer, control_request
from netevents.agent.ipstats import IpstatsCollector, IpstatsConfig
from netevents.agent.ipstats.mib import MibReader
from netevents.agent.ipstats.sockdiag import DestroyListener
from netevents.agent.kernel.netns import in_netns
from netevents.agent.runner import AgentRunner, RunnerOptions
from netevents.bus import connect
from netevents.subjects import control_subject

pytestmark = pytest.mark.integration

HOST = "ipst-a"
PORT = 5001
LOSSY_RULE = """
table inet {table} {{
  chain input {{
    type filter hook input priority 0; policy accept;
    ip daddr {addr} tcp dport {port} ip length > 200 numgen random mod {n} == 0 counter drop
    ip6 daddr {addr6} tcp dport {port} ip6 length > 200 numgen random mod {n} == 0 counter drop
  }}
}}
"""


LOSSY6 = "fd52:1b5::2"


@pytest.fixture
def hosts(netns_pair):
    """(a, b, lossy address, clean address): b listens on both; the lossy one drops 1 in 10.
    b also has the lossy IPv6 address LOSSY6 (a has fd52:1b5::1)."""
    a, b, prefix = netns_pair
    lossy, clean = f"{prefix}.2", f"{prefix}.3"
    b.run("ip", "addr", "add", f"{clean}/24", "dev", "veth-b")
    a.run("ip", "addr", "add", "fd52:1b5::1/64", "dev", "veth-a", "nodad")
    b.run("ip", "addr", "add", f"{LOSSY6}/64", "dev", "veth-b", "nodad")
    table = f"ipst_{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "exec", b.name, "nft", "-f", "-"], check=True, text=True,
                   input=LOSSY_RULE.format(table=table, addr=lossy, addr6=LOSSY6, port=PORT, n=10))
    try:
        yield a, b, lossy, clean
    finally:  # the table lives in b, which the netns_pair fixture deletes; remove it anyway
        b.run("nft", "delete", "table", "inet", table, check=False)


class Sink:
    """A TCP receiver in namespace ``b``: reads every connection to EOF, then closes it."""

    def __init__(self, netns: str, addrs: tuple[str, ...]) -> None:
        self.listeners = []
        for addr in addrs:
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            ls = in_netns(netns, lambda family=family: socket.socket(family, socket.SOCK_STREAM))
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind((addr, PORT))
            ls.listen(64)
            self.listeners.append(ls)
            threading.Thread(target=self._accept, args=(ls,), daemon=True).start()
        self.received = 0

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                conn, _ = ls.accept()
            except OSError:
                return
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(1 << 16):
                self.received += len(data)

    def close(self) -> None:
        for ls in self.listeners:
            ls.shutdown(socket.SHUT_RDWR)
            ls.close()


def send_flow(netns: str, dst: str, nbytes: int) -> None:
    """Connect from ``netns`` to dst, send nbytes, and wait until the receiver has read them all
    (its FIN after our FIN), so no retransmit can happen after this returns."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = in_netns(netns, lambda: socket.socket(family, socket.SOCK_STREAM))
    with s:
        s.settimeout(20)
        s.connect((dst, PORT))
        chunk = b"x" * 65536
        sent = 0
        while sent < nbytes:
            sent += s.send(chunk[: nbytes - sent])
        s.shutdown(socket.SHUT_WR)
        while s.recv(4096):
            pass


async def run_collector(nats_url: str, collector: IpstatsCollector, body) -> list:
    """Run an agent with ``collector`` and a control server; ``body(bus, sub)`` drives traffic.
    Returns every ipstat batch published (in order)."""
    batches = []
    async with connect(nats_url) as bus:
        sub = bus.subscribe(["ipstat"], hosts=[HOST])
        await sub.start()
        runner = AgentRunner(bus, [collector], RunnerOptions(host=HOST, status_interval=60,
                                                             max_wait=0.05))
        control = ControlServer(bus, "local", HOST)
        control.register_source(collector)
        stop = asyncio.Event()

        async def collect() -> None:
            async for batch in sub:
                batches.append(batch)

        async with control, asyncio.TaskGroup() as tg:
            run = tg.create_task(runner.run(stop))
            reader = tg.create_task(collect())
            try:
                async with asyncio.timeout(20):
                    await collector.ready.wait()
                await body(bus, batches)
            finally:
                stop.set()
                await run
                await bus.flush()
                await asyncio.sleep(0.2)
                reader.cancel()
        await sub.close()
    assert runner.sources["ipstats"]["state"] in ("stopped", "running"), runner.sources
    return batches


async def wait_batches(batches: list, n: int, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while len(batches) < n:
            await asyncio.sleep(0.05)


def peer_events(batches, peer: str) -> list[dict]:
    return [e for b in batches for e in b.events if e["peer"] == peer]


def test_retransmits_land_on_the_lossy_peer_and_add_up_with_the_residual(hosts, nats_url):
    a, b, lossy, clean = hosts
    sink = Sink(b.name, (lossy, clean, LOSSY6))
    mib = MibReader(a.name)
    before = mib.read()
    collector = IpstatsCollector(IpstatsConfig(interval=0.4, netns=a.name))

    async def body(bus, batches):
        # Long-lived sockets that live across windows (dump deltas), lossy and clean peers.
        await asyncio.gather(asyncio.to_thread(send_flow, a.name, lossy, 3_000_000),
                             asyncio.to_thread(send_flow, a.name, clean, 3_000_000),
                             asyncio.to_thread(send_flow, a.name, LOSSY6, 2_000_000))
        n = len(batches)
        await wait_batches(batches, n + 2 + collector.cfg.grace)

    try:
        batches = asyncio.run(run_collector(nats_url, collector, body))
    finally:
        sink.close()
    after = mib.read()
    mib.close()

    host_retrans = after["Tcp"]["RetransSegs"] - before["Tcp"]["RetransSegs"]
    assert host_retrans > 0, "the nftables rule should have forced retransmits"
    assert batches and all(b.fields["level"] == "default" for b in batches)
    # The collector read a's MIB (the root namespace has nothing to do with this flow).
    assert sum(b.fields["mib"]["RetransSegs"] for b in batches) == host_retrans
    lossy_retrans = sum(e["retrans_segs"] for e in peer_events(batches, lossy))
    assert lossy_retrans > 0
    assert sum(e["retrans_segs"] for e in peer_events(batches, LOSSY6)) > 0  # IPv6 as well
    # The clean peer has no red flags, so the default level never publishes it.
    assert peer_events(batches, clean) == []
    # Sum over peers plus the residual is the namespace's TcpRetransSegs delta...
    attributed = sum(e["retrans_segs"] for b in batches for e in b.events)
    residual = sum(b.fields["residual"]["retrans_segs"] for b in batches)
    assert attributed + residual == host_retrans
    # ... and every retransmit was attributed: all came from sockets the collector followed.
    assert residual == 0, [(b.fields, b.events) for b in batches]
    assert all(e["flags"] and "retransmits" in e["flags"] for e in peer_events(batches, lossy)
               if e["retrans_segs"])


def test_socket_opened_and_closed_inside_one_window_still_appears(hosts, nats_url):
    a, b, lossy, _clean = hosts
    sink = Sink(b.name, (lossy,))
    collector = IpstatsCollector(IpstatsConfig(interval=2.5, netns=a.name))

    async def body(bus, batches):
        await wait_batches(batches, 1)  # a window just closed: the next one is 2.5 s long
        await asyncio.to_thread(send_flow, a.name, lossy, 1_500_000)
        await wait_batches(batches, 2)

    try:
        batches = asyncio.run(run_collector(nats_url, collector, body))
    finally:
        sink.close()
    events = peer_events(batches[1:2], lossy)
    assert len(events) == 1, [b.events for b in batches]
    ev = events[0]
    # Never in a dump: opened and closed between two samples, known only from its destroy message.
    assert ev["opened"] == 1 and ev["closed"] == 1 and ev["sockets"] == 0
    assert ev["retrans_segs"] > 0 and "retransmits" in ev["flags"]
    assert batches[1].fields["residual"]["retrans_segs"] == 0


def test_control_request_switches_the_level_of_a_running_collector(hosts, nats_url):
    a, b, lossy, clean = hosts
    sink = Sink(b.name, (lossy, clean))
    collector = IpstatsCollector(IpstatsConfig(interval=0.3, netns=a.name))
    replies = {}

    async def body(bus, batches):
        await wait_batches(batches, 1)
        replies["bad"] = await control_request(bus, HOST, "level", "verbose")
        replies["unknown"] = await control_request(bus, HOST, "frobnicate")
        replies["query"] = await control_request(bus, HOST, "level")
        replies["ok"] = await control_request(bus, HOST, "level", "diagnostics")
        msg = await bus.nc.request(control_subject("local", HOST),
                                   msgpack.packb({"cmd": "level", "value": "diagnostics"}), timeout=5)
        replies["msgpack"] = msgpack.unpackb(msg.data)
        msg = await bus.nc.request(control_subject("local", HOST), b"{not json", timeout=5)
        replies["garbage"] = json.loads(msg.data)
        n = len(batches)
        await asyncio.to_thread(send_flow, a.name, clean, 200_000)
        await wait_batches(batches, n + 2)

    try:
        batches = asyncio.run(run_collector(nats_url, collector, body))
    finally:
        sink.close()
    assert replies["bad"]["ok"] is False and "verbose" in replies["bad"]["error"]
    assert replies["unknown"]["ok"] is False and "frobnicate" in replies["unknown"]["error"]
    assert replies["query"] == {"ok": True, "site": "local", "host": HOST, "cmd": "level",
                                "result": {"source": "ipstats", "level": "default"}}
    assert replies["ok"]["ok"] is True
    assert replies["ok"]["result"] == {"source": "ipstats", "level": "diagnostics", "previous": "default"}
    assert replies["msgpack"]["ok"] is True and replies["msgpack"]["result"]["level"] == "diagnostics"
    assert replies["garbage"]["ok"] is False and "JSON" in replies["garbage"]["error"]
    assert collector.level == "diagnostics"
    assert batches[0].fields["level"] == "default"
    assert batches[-1].fields["level"] == "diagnostics"
    # The diagnostics level publishes the clean peer too, per (local, peer) pair, all fields.
    clean_events = peer_events([b for b in batches if b.fields["level"] == "diagnostics"], clean)
    assert clean_events, [b.events for b in batches]
    assert sum(e["bytes_acked"] for e in clean_events) >= 200_000
    assert all(e["local"] == lossy.rsplit(".", 1)[0] + ".1" for e in clean_events)
    assert all("segs_out" in e and e["level"] == "diagnostics" for e in clean_events)


class RecordingSink:
    def __init__(self) -> None:
        self.losses: dict[str, int] = {}

    def lost(self, place: str, count: int) -> None:
        self.losses[place] = self.losses.get(place, 0) + count


def test_destroy_multicast_overrun_is_counted_as_own_loss(netns_pair):
    a, _b, _prefix = netns_pair
    collector = IpstatsCollector(IpstatsConfig(netns=a.name))
    sink = RecordingSink()
    collector._sink = sink
    # The smallest receive buffer the kernel allows: a burst of closes overruns it.
    collector._destroy = DestroyListener(a.name, rcvbuf=1)
    try:
        ls = in_netns(a.name, lambda: socket.create_server(("127.0.0.1", 0)))
        pairs = []
        for _ in range(100):
            c = in_netns(a.name, lambda: socket.socket())
            c.connect(ls.getsockname())
            pairs.append((c, ls.accept()[0]))
        for c, s in pairs:
            c.close()
            s.close()
        ls.close()
        time.sleep(0.3)  # the kernel sends destroy messages from a workqueue
        collector._drain_destroy()
        got = len(collector._pending)
    finally:
        collector._destroy.close()
    assert sink.losses.get("ipstats.destroy_overrun", 0) >= 1, (got, sink.losses)
    assert 0 < got < 200  # some messages made it, the rest were lost to the overrun

"""Who is hurting whom, end to end at the default level: two namespace hosts, real TCP, real
drops, real agents, a real nats-server, the correlator and `top` in a real terminal.

Host ``vA`` (namespace a) sends TCP to host ``vB`` (namespace b); an nftables rule in b drops
30 % of the TCP a sends (``numgen random mod 10 < 3 drop``). vA's agent runs ipstats (default
level: no ``local`` field), vB's agent runs drops (source auto: eBPF on this kernel). Nothing
else tells the correlator that b's address is vB's: only the agents' status (``addresses``).
The agents run in this process in the root namespace (where nats-server listens on loopback)
and read their namespaces through the sources' ``netns`` options, as the demo's do.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Mapping

import pytest

from netevents.agent.compose import build_collectors, connect_agent, run_agent
from netevents.agent.config import AgentConfig
from netevents.agent.kernel.netns import in_netns
from netevents.bus import connect
from netevents.consumers.correlate import Correlator, run_correlate
from tests.agent.ipstats.test_ipstats_netns import PORT, Sink
from tests.app.test_terminal import Terminal

pytestmark = pytest.mark.integration

RULE = """
table inet {table} {{
  chain input {{
    type filter hook input priority 0; policy accept;
    ip saddr {src} meta l4proto tcp numgen random mod 10 < 3 drop
  }}
}}
"""


def send_flow(netns: str, dst: str, nbytes: int) -> None:
    """Send ``nbytes`` from ``netns`` and wait for the receiver's end of the stream. A flow that
    fails is reset (SO_LINGER 0), not left to retransmit as an orphan after the test's traffic."""
    s = in_netns(netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    try:
        s.settimeout(30)
        s.connect((dst, PORT))
        s.sendall(b"x" * nbytes)
        s.shutdown(socket.SHUT_WR)
        while s.recv(4096):
            pass
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raise
    finally:
        s.close()


def ebpf_usable() -> bool:
    from netevents.app.demo import ebpf_available

    return ebpf_available()


@pytest.fixture
def lossy_pair(netns_pair):
    """(a, b, prefix): b drops 30 % of the TCP a sends; the nft table is removed afterwards."""
    a, b, prefix = netns_pair
    if shutil.which("nft") is None:
        pytest.skip("needs nftables' nft command")
    table = f"ne19_{uuid.uuid4().hex[:6]}"
    b.run("nft", "-f", "-", input=RULE.format(table=table, src=f"{prefix}.1"))
    try:
        yield a, b, prefix
    finally:
        b.run("nft", "delete", "table", "inet", table, check=False)


def test_retransmits_of_a_meet_drops_of_b_in_incidents_that_add_up_and_in_top(
        lossy_pair, nats_url, tmp_path):
    if not ebpf_usable():
        pytest.skip("the eBPF drop source cannot run here (it needs clang, bpftool, BTF, root)")
    a, b, prefix = lossy_pair
    a_addr, b_addr, b_addr2 = f"{prefix}.1", f"{prefix}.2", f"{prefix}.3"
    sink = Sink(b.name, (b_addr,))
    term = Terminal([sys.executable, "-m", "netevents.app", "top", "--view", "peers",
                     "--bus", nats_url])
    recorded: list = []
    incidents: list = []
    flows = {"done": 0, "failed": 0}

    def traffic(seconds: float) -> None:
        """Three senders, flows of 64 KiB each, for ``seconds``; every flow read to its end."""
        def sender() -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                try:
                    send_flow(a.name, b_addr, 64 * 1024)
                    flows["done"] += 1
                except OSError:
                    flows["failed"] += 1
        threads = [threading.Thread(target=sender) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    async def main() -> Correlator:
        cfg_a = AgentConfig(bus=nats_url, host="vA", status_interval=1.0,
                            spool_dir=str(tmp_path / "spool-a"),
                            sources={"ipstats": {"netns": a.name, "interval": 1.0}}).validate()
        cfg_b = AgentConfig(bus=nats_url, host="vB", status_interval=1.0,
                            spool_dir=str(tmp_path / "spool-b"),
                            sources={"drops": {"netns": b.name}}).validate()
        corr = Correlator(window=4, report_interval=2, grace=1)
        stop_agents, stop_corr, stop_rec = asyncio.Event(), asyncio.Event(), asyncio.Event()
        ready_corr = asyncio.Event()
        async with connect(nats_url) as bus, connect_agent(cfg_a, "vA") as bus_a, \
                connect_agent(cfg_b, "vB") as bus_b:
            sub = bus.subscribe(["ipstat", "drop", "status", "incident"])
            await sub.start()

            async def record() -> None:
                while not stop_rec.is_set():
                    batch = await sub.next(timeout=0.2)
                    if batch is not None:
                        recorded.append(batch)

            async with asyncio.TaskGroup() as tg:
                tg.create_task(record())
                tg.create_task(run_correlate(nats_url, correlator=corr, stop=stop_corr,
                                             ready=ready_corr, token="corr-test",
                                             on_incident=incidents.append, tick_interval=0.2))
                await ready_corr.wait()
                agents = [tg.create_task(run_agent(cfg, build_collectors(cfg), bus_, stop_agents))
                          for cfg, bus_ in ((cfg_a, bus_a), (cfg_b, bus_b))]
                try:
                    await until(lambda: corr.directory.host_at(b_addr) == "vB"
                                and corr.directory.host_at(a_addr) == "vA"
                                and _ebpf_running(recorded), 90,
                                lambda: f"hosts and vB's eBPF source: {corr.directory.addr_host}")
                    await asyncio.sleep(1.5)  # ipstats' baseline taken
                    await asyncio.to_thread(traffic, 8.0)
                    # the pair goes quiet: its episodes close once vB's drops are in
                    await until(lambda: not corr.peers.episodes and _closed(incidents), 60,
                                lambda: f"closing: open {list(corr.peers.episodes.values())}, "
                                        f"flows {flows}")
                    # a second address of vB, added while everything runs, is learnt
                    b.run("ip", "addr", "add", f"{b_addr2}/24", "dev", "veth-b")
                    await until(lambda: corr.directory.host_at(b_addr2) == "vB", 10,
                                lambda: f"the new address: {corr.directory.addr_host}")
                    await asyncio.sleep(1.0)
                finally:
                    stop_agents.set()
                    for t in agents:
                        await t
                    await asyncio.sleep(0.5)
                    stop_corr.set()
                    await asyncio.sleep(0.5)
                    stop_rec.set()
            await sub.close()
        return corr

    try:
        corr = asyncio.run(main())
        # -- what was published ------------------------------------------------------------
        statuses = [(bt.host, e) for bt in recorded if bt.kind == "status" for e in bt.events]
        b_inodes = {v for h, e in statuses if h == "vB" for v in (e.get("netns") or {}).values()}
        assert any(b_addr2 in sum((e.get("addresses") or {}).values(), [])
                   for h, e in statuses if h == "vB"), "vB's status lists its new address"
        ip_events = [(bt, e) for bt in recorded if bt.kind == "ipstat" and bt.host == "vA"
                     for e in bt.events if e["peer"] == b_addr]
        assert ip_events and all(e["level"] == "default" and "local" not in e
                                 for _bt, e in ip_events)
        published_retrans = sum(e.get("retrans_segs", 0) for _bt, e in ip_events)
        published_timeouts = sum(e.get("timeouts", 0) for _bt, e in ip_events)
        pair = {(a_addr, b_addr), (b_addr, a_addr)}
        drops = [e for bt in recorded if bt.kind == "drop" and bt.host == "vB" for e in bt.events
                 if e.get("netns") in b_inodes and isinstance(e.get("flow"), Mapping)
                 and (e["flow"].get("src"), e["flow"].get("dst")) in pair]
        assert published_retrans > 0 and drops, (published_retrans, len(drops))

        # -- the published incidents of the pair ---------------------------------------------
        pubs = [e for bt in recorded if bt.kind == "incident" for e in bt.events
                if e["type"] == "peer" and e["details"]["from"] == "vA"
                and e["details"]["peer"] == b_addr]
        episodes: dict[str, list] = {}
        for e in pubs:
            episodes.setdefault(e["details"]["episode"], []).append(e)
        closing = [eps[-1] for eps in episodes.values()]
        assert all(e["details"]["phase"] == "close" for e in closing)
        named = [e for e in pubs if e["hosts"] == ["vA", "vB"] and e["details"]["peer_drops"]]
        assert named, [e["summary"] for e in pubs]
        assert any(d["reason"] == "NETFILTER_DROP" for e in named for d in e["details"]["peer_drops"])
        assert any("vB dropped" in e["summary"] and "NETFILTER_DROP" in e["summary"] for e in named)
        # the sum of the pair's incidents is what vA published, window for window...
        assert sum(e["details"]["retrans_segs"] for e in closing) == published_retrans
        assert sum(e["details"]["new"]["retrans_segs"] for e in pubs) == published_retrans
        assert sum(e["details"].get("timeouts", 0) for e in closing) == published_timeouts
        # ...and the drops vB published on their flows in the episodes' spans
        spans = [(e["first_ts"], e["last_ts"]) for e in closing]
        in_spans = sum(d["count"] for d in drops if any(t0 <= d["last_ts"] <= t1 for t0, t1 in spans))
        assert sum(e["details"]["peer_dropped"] for e in closing) == in_spans
        assert sum(e["details"]["new"]["peer_dropped"] for e in pubs) == in_spans
        # absent at the default level: absent in the incident, never 0
        assert all("segs_out" not in e["details"] for e in pubs)
        print(f"\nflows {flows}; vA published {published_retrans} retransmits, "
              f"{published_timeouts} timeouts toward {b_addr} in {len(ip_events)} windows; vB "
              f"published {sum(d['count'] for d in drops)} drops on their flows ({in_spans} in the "
              f"spans of {len(closing)} episode(s), {len(pubs)} publications); late: "
              f"{sum(bool(e['details'].get('drops_late')) for e in pubs)}")
        for e in closing:
            print("  ", e["summary"])
        # a drop event covers its window (an eBPF row once said it began at boot)
        assert all(0 <= d["last_ts"] - d["first_ts"] <= 5 * 10**9 for d in drops)

        # -- top's peers view, in a real terminal, shows both sides ----------------------------
        dropped_total = sum(d["count"] for d in drops)
        pattern = re.compile(rf"^\s*(\d+)\s+(\d+)\s+\d+\s+\d+\s+vA\s+{re.escape(b_addr)}\s+vB\s+"
                             r"(\d+)\s+(\d+)s\s+.*NETFILTER_DROP", re.M)
        deadline = time.monotonic() + 15
        while True:
            m = pattern.search(term.screen())
            if m and int(m.group(1)) == published_retrans and int(m.group(3)) == dropped_total:
                print("   top:", m.group(0).strip())
                span_s = (max(e["last_ts"] for e in closing) - min(e["first_ts"] for e in closing)) / 1e9
                assert int(m.group(4)) <= span_s + 5, "the window the figures cover"
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"top's peers view never showed {published_retrans} "
                                     f"retransmits next to {dropped_total} drops:\n{term.screen()}")
            time.sleep(0.3)
        term.keys("s")  # the peers view's order: retransmits, then the peer's drops
        term.wait_for("sorted by drops", timeout=10)
        assert corr.directory.bad_input == {}
    finally:
        term.close()
        sink.close()


async def until(cond, timeout: float, what) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what()}")
        await asyncio.sleep(0.1)


def _ebpf_running(recorded: list) -> bool:
    return any(bt.kind == "status" and bt.host == "vB"
               and (e.get("sources") or {}).get("drops.ebpf", {}).get("state") == "running"
               for bt in recorded for e in bt.events)


def _closed(incidents: list) -> bool:
    return any(i.type == "peer" and i.details.get("phase") == "close" for i in incidents)


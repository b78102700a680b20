"""Real drops in network namespaces, through the drops agent, onto a real nats-server.

Host ``b`` is the dropping host: an nftables drop rule (NETFILTER_DROP), a closed port
(NO_SOCKET), a UDP socket with a tiny receive buffer that nobody reads (SOCKET_RCVBUFF) and a
tiny tbf qdisc on its egress (QDISC_DROP). ``a`` sends the traffic. The agent runs with the
kfree_skb tracepoint (kernel-wide: other tests on this machine may add drops, so tracepoint
counts are compared with ``>=`` against the kernel's own counters in ``b``) and with the counter
source inside ``b`` (namespace-private: its counts must equal the kernel's exactly).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from netevents.agent.drops import DropsCollector
from netevents.agent.drops.counters import CounterDrops
from netevents.agent.drops.netdm import NetDmDrops
from netevents.agent.drops.tracepoint import TracepointDrops
from netevents.agent.netstat.parse import parse_snmp
from netevents.agent.runner import AgentRunner, RunnerOptions
from netevents.bus import connect

TRACEFS = Path("/sys/kernel/tracing")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0 or not (TRACEFS / "events/skb/kfree_skb").is_dir(),
                       reason="needs root and tracefs with skb:kfree_skb"),
]

N_NFT, N_CLOSED, N_RCVBUF, N_QDISC = 300, 200, 400, 400


def _snmp(ns) -> dict[str, int]:
    udp = next(s for s in parse_snmp(ns.run("cat", "/proc/net/snmp").stdout) if s.group == "Udp")
    return {f"Udp:{k}": v for k, v in udp.counters.items()}


def _qdisc_drops(ns, dev: str) -> int:
    q = json.loads(ns.run("tc", "-s", "-j", "qdisc", "show", "dev", dev).stdout)
    return sum(x.get("drops", 0) for x in q if x.get("root"))


def _nft_packets(ns) -> int:
    out = json.loads(ns.run("nft", "-j", "list", "table", "inet", "netevents_test").stdout)
    for item in out["nftables"]:
        rule = item.get("rule")
        if rule:
            for e in rule["expr"]:
                if "counter" in e:
                    return e["counter"]["packets"]
    raise AssertionError("no counter in the test rule")


SENDER = textwrap.dedent("""
    import socket, sys
    dst, port, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    sent = 0
    for i in range(n):
        try:
            s.sendto(b"x" * size, (dst, port)); sent += 1
        except OSError:
            pass
    print(sent)
""")

SINK = textwrap.dedent("""
    import socket, sys, time
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)   # the kernel's minimum
    s.bind(("0.0.0.0", int(sys.argv[1])))
    print("ready", flush=True)
    sys.stdin.read()                                        # never reads the socket
""")


@pytest.mark.parametrize("reader", ["raw", "text"])
def test_real_drops_arrive_on_the_bus_with_reasons_and_counts(netns_pair, nats_url, reader):
    a, b, prefix = netns_pair
    b_addr, a_addr = f"{prefix}.2", f"{prefix}.1"
    b.run("nft", "-f", "-", input=textwrap.dedent("""
        table inet netevents_test {
          chain input {
            type filter hook input priority 0
            udp dport 5555 counter drop
          }
        }
    """))
    # Tiny tbf on b's egress: a burst of packets from b overflows it.
    b.run("tc", "qdisc", "add", "dev", "veth-b", "root", "tbf", "rate", "8kbit",
          "burst", "1600", "limit", "3000")
    sink_proc = subprocess.Popen(["ip", "netns", "exec", b.name, "python3", "-c", SINK, "6666"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert sink_proc.stdout.readline().strip() == "ready"
        b_inode = os.stat(f"/run/netns/{b.name}").st_ino
        snmp0, q0 = _snmp(b), _qdisc_drops(b, "veth-b")
        asyncio.run(_scenario(a, b, a_addr, b_addr, b_inode, nats_url, snmp0, q0, reader))
    finally:
        sink_proc.kill()
        sink_proc.wait()


async def _scenario(a, b, a_addr, b_addr, b_inode, nats_url, snmp0, q0, reader):
    tracepoint = TracepointDrops(interval=0.3, reader=reader, buffer_kb=16384)
    counters = CounterDrops(interval=0.3, netns=b.name)
    collector = DropsCollector([NetDmDrops(), tracepoint], counters)
    async with connect(nats_url) as pub_bus, connect(nats_url) as sub_bus:
        sub = sub_bus.subscribe(["drop", "status"], hosts=["host-b"])
        await sub.start()
        runner = AgentRunner(pub_bus, [collector],
                             RunnerOptions(host="host-b", site="lab", status_interval=0.5))
        stop = asyncio.Event()
        agent = asyncio.create_task(runner.run(stop))
        async with asyncio.timeout(10):
            await tracepoint.ready.wait()
        await asyncio.sleep(0.7)  # the counter source takes its baseline

        async def send(ns, dst, port, n, size=64):
            p = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", ns.name, "python3", "-c", SENDER, dst, str(port),
                str(n), str(size), stdout=asyncio.subprocess.PIPE)
            out, _ = await p.communicate()
            return int(out)

        await send(a, b_addr, 5555, N_NFT)           # nft drop rule
        await send(a, b_addr, 7777, N_CLOSED)        # closed port
        await send(a, b_addr, 6666, N_RCVBUF, 1000)  # full receive buffer
        await send(b, a_addr, 9, N_QDISC, 1000)      # tbf overflow on b's egress

        nft = _nft_packets(b)
        snmp1, q1 = _snmp(b), _qdisc_drops(b, "veth-b")
        kernel = {
            "NETFILTER_DROP": nft,
            "NO_SOCKET": snmp1["Udp:NoPorts"] - snmp0["Udp:NoPorts"],
            "SOCKET_RCVBUFF": snmp1["Udp:RcvbufErrors"] - snmp0["Udp:RcvbufErrors"],
            "QDISC_DROP": q1 - q0,
        }
        assert kernel["NETFILTER_DROP"] == N_NFT
        assert kernel["NO_SOCKET"] == N_CLOSED
        assert kernel["SOCKET_RCVBUFF"] > N_RCVBUF // 2, kernel
        assert kernel["QDISC_DROP"] > N_QDISC // 2, kernel

        seen: dict[tuple[str, str], int] = {}
        counter_seen: dict[str, int] = {}
        statuses = []

        def satisfied() -> bool:
            # The tracepoint is kernel-wide: a storm elsewhere on the machine may overrun the
            # ring; what it lost is reported, and counts as accounted for.
            overrun = runner.losses.get("tracepoint.ring_overrun", 0)
            return (all(seen.get(("tracepoint", r), 0) + overrun >= n for r, n in kernel.items())
                    and counter_seen.get("Udp:RcvbufErrors", 0) >= kernel["SOCKET_RCVBUFF"]
                    and counter_seen.get("qdisc:drops", 0) >= kernel["QDISC_DROP"])

        async with asyncio.timeout(15):
            while not satisfied():
                batch = await sub.next(timeout=5)
                assert batch is not None, f"stalled: saw {seen} {counter_seen}, kernel {kernel}"
                assert batch.host == "host-b" and batch.site == "lab"
                if batch.kind == "status":
                    statuses.extend(batch.rows())
                    continue
                for e in batch.rows():
                    seen[(e["source"], e["reason"])] = seen.get((e["source"], e["reason"]), 0) + e["count"]
                    if e["source"] == "counter" and e.get("netns") == b_inode:
                        counter_seen[e["location"]] = counter_seen.get(e["location"], 0) + e["count"]
                    if e["source"] == "tracepoint" and e["reason"] == "NETFILTER_DROP":
                        assert e["location"].startswith("nft_do_chain")
                        assert e["proto"] == 0x0800
        stop.set()
        await agent
        # The counter source sees only b: its counts are the kernel's, exactly.
        assert counter_seen["Udp:RcvbufErrors"] == kernel["SOCKET_RCVBUFF"]
        assert counter_seen["qdisc:drops"] == kernel["QDISC_DROP"]
        # InErrors also counts the receive-buffer drops: the event carries only the rest, so
        # each dropped datagram is counted once
        other = sum((snmp1[f"Udp:{n}"] - snmp0[f"Udp:{n}"]) * (1 if n == "InErrors" else -1)
                    for n in ("InErrors", "RcvbufErrors", "MemErrors", "InCsumErrors"))
        assert counter_seen.get("Udp:InErrors", 0) == other, (counter_seen, other)
        src = statuses[-1]["sources"] if statuses else {}
        assert src.get("drops.tracepoint", {}).get("state") == "running"
        if src.get("drops.netdm", {}).get("state") == "unavailable":
            assert "CONFIG_NET_DROP_MONITOR" in src["drops.netdm"]["reason"]
        lost = statuses[-1]["lost"]
        assert "tracepoint.ring_overrun" in lost
        await sub.close()

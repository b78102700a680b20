"""The eBPF drop source on this machine: load, attach; namespace fleet; ring accounting.

The shipped object is loaded (no clang at run time; test_ebpf_object.py checks the object
against its source). Skips with the reason when root, kernel BTF or libbpf1 are missing. Drops come from real
mechanisms inside namespaces the tests make (an nftables drop rule, a closed UDP port); the
program is kernel-wide, so every assertion on counts filters on the test's own namespaces in
the kernel (``netns=`` filter), which makes the counts exact.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import textwrap
import uuid
from collections import Counter
from pathlib import Path

import pytest

from netevents.agent.drops import build as build_drops
from netevents.agent.drops.ebpf import EbpfDrops, parse_filter
from netevents.agent.kernel.netns import resolve
from netevents.agent.netstat.parse import parse_snmp
from netevents.agent.runner import AgentRunner, RunnerOptions
from netevents.bus import connect
from netevents.errors import CapabilityError


def _has_libbpf() -> bool:
    from netevents.agent.drops.ebpf import libbpf

    try:
        libbpf.load_library()
    except OSError:
        return False
    return True


missing = [what for what, ok in (
    ("root", os.geteuid() == 0),
    ("libbpf.so.1 (Debian package libbpf1)", _has_libbpf()),
    ("kernel BTF at /sys/kernel/btf/vmlinux", Path("/sys/kernel/btf/vmlinux").exists()),
) if not ok]
needs_ebpf = pytest.mark.skipif(bool(missing), reason=f"eBPF source needs {', '.join(missing)}")
pytestmark = [pytest.mark.integration]

NFT_INPUT = textwrap.dedent("""
    table inet netevents_ebpf {
      chain input {
        type filter hook input priority 0
        udp dport 5555 counter drop
      }
    }
""")

SENDER = textwrap.dedent("""
    import socket, sys
    dst, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", int(sys.argv[4])))
    sent = 0
    for i in range(n):
        try:
            s.sendto(b"x" * 32, (dst, port)); sent += 1
        except OSError:
            pass
    print(sent)
""")


PROBES = textwrap.dedent("""
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 40000))
    for _ in range(50):
        s.sendto(b"x" * 32, ("127.0.0.1", 9))
    s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s6.bind(("::1", 40001))
    for _ in range(20):
        s6.sendto(b"x" * 32, ("::1", 9))
    t = socket.socket(); t.bind(("127.0.0.1", 40002))
    try:
        t.connect(("127.0.0.1", 9))
    except OSError:
        pass
""")


def _nft_packets(ns) -> int:
    out = json.loads(ns.run("nft", "-j", "list", "table", "inet", "netevents_ebpf").stdout)
    for item in out["nftables"]:
        for e in (item.get("rule") or {}).get("expr", []):
            if "counter" in e:
                return e["counter"]["packets"]
    raise AssertionError("no counter in the test rule")


def _noports(ns) -> int:
    udp = next(s for s in parse_snmp(ns.run("cat", "/proc/net/snmp").stdout) if s.group == "Udp")
    return udp.counters["NoPorts"]


def _send(ns, dst: str, port: int, n: int, sport: int) -> int:
    return int(ns.run("python3", "-c", SENDER, dst, str(port), str(n), str(sport)).stdout)


@needs_ebpf
@pytest.mark.parametrize("program", ["btf", "raw"])
def test_builds_loads_attaches_and_aggregates(program):
    """Both programs (tp_btf and the raw_tp fallback) load, attach and count a namespace's drops."""
    ns = f"ne-ebpf-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)

        async def main():
            src = EbpfDrops(filter=parse_filter(f"netns={ns}"), program=program,
                            sample_every=1)
            src.filter.resolve_netns(resolve)
            await asyncio.to_thread(src.open)
            try:
                assert src.attached == f"kfree_skb_{program}"
                # Closed ports on lo, inside the namespace only: UDP over IPv4 and IPv6, and
                # TCP SYNs (each dropped as NO_SOCKET).
                p = await asyncio.create_subprocess_exec(
                    "ip", "netns", "exec", ns, "python3", "-c", PROBES,
                    stdout=asyncio.subprocess.PIPE)
                await p.communicate()
                events, map_full, ring_full = await src.collect()
            finally:
                src.close()
            assert (map_full, ring_full) == (0, 0)
            inode = os.stat(f"/run/netns/{ns}").st_ino
            assert all(e["netns"] == inode and e["netns_name"] == ns for e in events)
            by_flow = Counter()
            for e in events:
                if e["reason"] == "NO_SOCKET":
                    f = e["flow"]
                    by_flow[(f["src"], f["l4"], f["sport"], f["dport"])] += e["count"]
            assert by_flow[("127.0.0.1", 17, 40000, 9)] == 50
            assert by_flow[("::1", 17, 40001, 9)] == 20
            assert by_flow[("127.0.0.1", 6, 40002, 9)] >= 1  # SYN retries may add more
            records = [e for e in events if "payload" in e]
            assert len(records) == sum(e["count"] for e in events)  # sample_every = 1
            udp4 = next(r for r in records if r["flow"]["sport"] == 40000)
            assert udp4["payload"][0] == 0x45 and udp4["orig_len"] == 28 + 32
            assert "ip_id" in udp4["flow"] and udp4["location"].split("+")[0]
            udp6 = next(r for r in records if r["flow"]["sport"] == 40001)
            assert udp6["payload"][0] >> 4 == 6 and "ip_id" not in udp6["flow"]
            assert udp6["proto"] == 0x86DD
            syn = next(r for r in records if r["flow"]["l4"] == 6)
            # The TCP sequence number in the record is the one in the packet's bytes.
            assert syn["flow"]["tcp_seq"] == int.from_bytes(syn["payload"][24:28], "big")

        asyncio.run(main())
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


@needs_ebpf
def test_namespace_fleet_drops_arrive_named_with_flow_and_exact_counts(netns_pair, nats_url):
    """One agent in the root namespace; an nft drop in b and closed-port drops in c."""
    a, b, prefix = netns_pair
    c_name = f"ne-c-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", c_name], check=True)
    try:
        from tests.conftest import NetnsHost
        c = NetnsHost(c_name)
        c.run("ip", "link", "set", "lo", "up")
        b.run("nft", "-f", "-", input=NFT_INPUT)
        asyncio.run(_fleet(a, b, c, prefix, nats_url))
    finally:
        subprocess.run(["ip", "netns", "del", c_name], check=False)


async def _fleet(a, b, c, prefix, nats_url):
    n_b, n_c = 400, 150
    b_addr, a_addr = f"{prefix}.2", f"{prefix}.1"
    b_inode = os.stat(f"/run/netns/{b.name}").st_ino
    c_inode = os.stat(f"/run/netns/{c.name}").st_ino
    collector = build_drops({"source": "ebpf", "counter": False, "interval": 0.3,
                             "filter": f"netns={b.name},{c.name} reason=NETFILTER_DROP,NO_SOCKET",
                             "sample_every": 10})
    ebpf = collector.event_sources[0]
    async with connect(nats_url) as pub_bus, connect(nats_url) as sub_bus:
        sub = sub_bus.subscribe(["drop", "status"], hosts=["fleet-root"])
        await sub.start()
        runner = AgentRunner(pub_bus, [collector],
                             RunnerOptions(host="fleet-root", site="lab", status_interval=0.5))
        stop = asyncio.Event()
        agent = asyncio.create_task(runner.run(stop))
        async with asyncio.timeout(30):
            await ebpf.ready.wait()
        noports0 = _noports(c)
        sent_b = await asyncio.to_thread(_send, a, b_addr, 5555, n_b, 41000)
        await asyncio.to_thread(_send, c, "127.0.0.1", 9, n_c, 42000)
        assert sent_b == n_b and _nft_packets(b) == n_b
        kernel_c = _noports(c) - noports0
        assert kernel_c == n_c

        totals: Counter = Counter()
        packets: list[dict] = []
        statuses: list[dict] = []
        async with asyncio.timeout(15):
            while totals[(b_inode, "NETFILTER_DROP")] < n_b or totals[(c_inode, "NO_SOCKET")] < n_c:
                batch = await sub.next(timeout=5)
                assert batch is not None, f"stalled at {dict(totals)}"
                if batch.kind == "status":
                    statuses.extend(batch.rows())
                    continue
                for e in batch.rows():
                    assert e["source"] == "ebpf" and e["netns"] in (b_inode, c_inode), e
                    assert e["reason"] in ("NETFILTER_DROP", "NO_SOCKET"), e
                    totals[(e["netns"], e["reason"])] += e["count"]
                    if e["netns"] == b_inode:
                        assert e["netns_name"] == b.name
                    if e["reason"] == "NETFILTER_DROP":
                        assert e["netns"] == b_inode
                        assert e["location"].startswith("nft_do_chain")
                        f = e["flow"]
                        assert (f["src"], f["dst"], f["l4"], f["sport"], f["dport"]) == (
                            a_addr, b_addr, 17, 41000, 5555)
                        if "payload" in e:
                            packets.append(e)
                    if e["netns"] == c_inode:
                        assert e["netns_name"] == c.name and e["flow"]["dport"] == 9
        await asyncio.sleep(0.7)  # one more window: nothing further may arrive for b or c
        while (batch := await sub.next(timeout=0.5)) is not None:
            if batch.kind == "status":
                statuses.extend(batch.rows())
                continue
            for e in batch.rows():
                totals[(e["netns"], e["reason"])] += e["count"]
        stop.set()
        await agent
        await sub.close()
    # Exact: the kernel filter lets through only these namespaces' drops (b's own noise, such
    # as a stray NO_SOCKET, would show under its own key; none of it is NETFILTER_DROP).
    assert totals[(b_inode, "NETFILTER_DROP")] == n_b and totals[(c_inode, "NO_SOCKET")] == n_c
    assert (c_inode, "NETFILTER_DROP") not in totals
    # 1 in 10 of the passing drops came as per-packet records with the IP header.
    assert packets and all(p["count"] == 1 and p["payload"][0] >> 4 == 4 and "ip_id" in p["flow"]
                           for p in packets)
    lost = statuses[-1]["lost"]
    assert lost["ebpf.ringbuf_full"] == 0 and lost["ebpf.map_full"] == 0
    assert statuses[-1]["sources"]["drops.ebpf"]["state"] == "running"


@needs_ebpf
def test_ring_overflow_is_accounted(netns_pair):
    """A one-page ring and a record per drop: records + ringbuf_full == drops counted."""
    a, b, prefix = netns_pair
    b.run("nft", "-f", "-", input=NFT_INPUT)

    async def main():
        src = EbpfDrops(filter=parse_filter(f"netns={b.name} reason=NETFILTER_DROP"),
                        sample_every=1, ring_kb=4)
        src.filter.resolve_netns(resolve)
        await asyncio.to_thread(src.open)
        try:
            # Nobody consumes the ring while the burst runs: it fills after a few records.
            sent = await asyncio.to_thread(_send, a, f"{prefix}.2", 5555, 2000, 43000)
            events, map_full, ring_full = await src.collect()
        finally:
            src.close()
        return sent, events, map_full, ring_full, src.totals

    sent, events, map_full, ring_full, totals = asyncio.run(main())
    records = [e for e in events if "payload" in e]
    assert sent == 2000 and _nft_packets(b) == 2000
    assert map_full == 0 and ring_full > 0 and records
    assert len(records) + ring_full == totals["counted"] == 2000
    # Records are subtracted from their aggregate: the events still sum to the drops.
    assert sum(e["count"] for e in events) == 2000


@needs_ebpf
def test_attaches_without_any_compiler_on_path(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))           # no clang, no bpftool, no cc
    src = EbpfDrops()
    try:
        src.open()
        assert src.attached == "kfree_skb_btf"
        assert {"NETFILTER_DROP", "NO_SOCKET", "NOT_SPECIFIED"} <= set(src.reasons.values())
    finally:
        src.close()


@needs_ebpf
def test_a_stale_object_is_one_capability_error(monkeypatch, tmp_path):
    from netevents.agent.drops.ebpf import prebuilt

    edited = tmp_path / "kfree_skb.bpf.c"
    edited.write_bytes(prebuilt.SOURCE.read_bytes() + b"\n// edited\n")
    monkeypatch.setattr(prebuilt, "SOURCE", edited)
    with pytest.raises(CapabilityError, match="older than kfree_skb.bpf.c.*rebuild: python -m"):
        EbpfDrops().open()


def test_auto_order_prefers_ebpf_then_netdm_then_tracepoint():
    c = build_drops({})
    assert [s.name for s in c.event_sources] == ["drops.ebpf", "drops.netdm", "drops.tracepoint"]
    assert c.counter_source is not None
    c = build_drops({"source": "tracepoint", "counter": False})
    assert [s.name for s in c.event_sources] == ["drops.tracepoint"] and c.counter_source is None


def test_sample_config_builds_the_ebpf_source():
    import tomllib

    section = tomllib.loads((Path(__file__).parents[4] / "netevents/agent/drops/ebpf/sample.toml").read_text())
    c = build_drops(section["drops"])
    [src] = c.event_sources
    assert isinstance(src, EbpfDrops) and src.sample_every == 0 and src.ring_kb == 256


@needs_ebpf
def test_a_namespace_made_after_start_is_named():
    src = EbpfDrops(filter=parse_filter("reason=NO_SOCKET l4=udp dport=47113"))
    asyncio.run(asyncio.to_thread(src.open))
    ns = f"ne-late-{uuid.uuid4().hex[:6]}"
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "netns", "exec", ns, "python3", "-c", SENDER, "127.0.0.1",
                        "47113", "5", "47114"], check=True, capture_output=True)
        events, _, _ = asyncio.run(src.collect())
        mine = [e for e in events if e["netns"] == os.stat(f"/run/netns/{ns}").st_ino]
        assert sum(e["count"] for e in mine) == 5 and mine[0]["netns_name"] == ns
    finally:
        src.close()
        subprocess.run(["ip", "netns", "del", ns], check=False)


class _Batches:
    """A sink that keeps each published batch (the runner's emit_batch) and the losses."""

    def __init__(self) -> None:
        self.batches: list[list[dict]] = []
        self.losses: Counter = Counter()

    def emit_batch(self, kind, events, *, t0=None, t1=None, **fields) -> bool:
        assert kind == "drop" and t0 <= t1
        self.batches.append(list(events))
        return True

    def lost(self, place, n) -> None:
        self.losses[place] += n


@needs_ebpf
def test_a_lone_drop_goes_out_at_the_next_tick_and_a_storm_stays_bounded_and_exact(netns_pair):
    """Drained every tick: a signature that was quiet is published by the first drain after
    it (not at the end of the 1 s interval); one that keeps dropping is held with a doubling
    hold, so 40 ticks of a storm publish it a handful of times, and the counts add up to the
    nft rule's."""
    _a, b, _prefix = netns_pair
    b.run("nft", "-f", "-", input=NFT_INPUT)
    ex = ["ip", "netns", "exec", b.name]

    async def main():
        src = EbpfDrops(interval=1.0, tick=0.05,
                        filter=parse_filter(f"netns={b.name} reason=NETFILTER_DROP"))
        src.filter.resolve_netns(resolve)
        await asyncio.to_thread(src.open)
        sink = _Batches()
        try:
            one = await asyncio.create_subprocess_exec(
                *ex, "python3", "-c", SENDER, "127.0.0.1", "5555", "1", "41000")
            await one.wait()
            await src._emit(sink)              # the first drain after the lone drop
            lone = [e for batch in sink.batches for e in batch]
            assert [(e["count"], e["flow"]["sport"]) for e in lone] == [(1, 41000)]
            # A storm of one signature over 40 ticks (2 s): one flow, sent continuously.
            storm = await asyncio.create_subprocess_exec(
                *ex, "python3", "-c", SENDER, "127.0.0.1", "5555", "3000000", "41001",
                stdout=asyncio.subprocess.DEVNULL)
            published = 0
            for _ in range(40):
                await asyncio.sleep(0.05)
                before = len(sink.batches)
                await src._emit(sink)
                published += any(e["flow"]["sport"] == 41001 for batch in sink.batches[before:]
                                 for e in batch)
            storm.kill()
            await storm.wait()
            await src._emit(sink, final=True)  # what is still held goes out
        finally:
            src.close()
        assert not sink.losses
        # held with a hold doubling 0.05 -> 1 s: ~6 publications in 2 s, never one a tick
        assert 2 <= published <= 10, published
        return sum(e["count"] for batch in sink.batches for e in batch)

    total = asyncio.run(main())
    assert total == _nft_packets(b) > 1000


"""Golden and unit tests for the sans-IO parts of the drops source (no root needed)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from netevents.agent.drops.aggregate import DropAggregator, DropSample, flow_of
from netevents.agent.drops.tracepoint import KfreeSkbParser, reason_table
from netevents.agent.kernel.kallsyms import Kallsyms, normalize_location

DATA = Path(__file__).parent / "testdata"


def _parse(data: bytes, chunks: list[int]) -> tuple[list[dict], KfreeSkbParser]:
    agg = DropAggregator("tracepoint")
    p = KfreeSkbParser(agg)
    off = 0
    for n in chunks:
        p.feed(data[off:off + n])
        off += n
    p.feed(data[off:])
    p.finish()
    return agg.flush(), p


def _strip(events: list[dict], keep: tuple[str, ...]) -> list[dict]:
    return sorted(({k: e[k] for k in keep if k in e} for e in events),
                  key=lambda e: (e["location"], e["reason"]))


def test_golden_trace_pipe_recorded_on_this_kernel():
    data = (DATA / "kfree_skb_trace_pipe.txt").read_bytes()
    expected = json.loads((DATA / "expected_trace_pipe.json").read_text())
    events, p = _parse(data, [])
    keep = ("count", "location", "reason", "proto", "first_ts", "last_ts")
    assert _strip(events, keep) == _strip(expected, keep)
    assert all(e["source"] == "tracepoint" and e["origin"] == "sw" for e in events)
    assert p.bad_lines == 0 and p.records == 7


@pytest.mark.parametrize("seed", range(20))
def test_records_split_anywhere_are_neither_lost_nor_mangled(seed):
    data = (DATA / "kfree_skb_trace_pipe.txt").read_bytes() + \
        (DATA / "kfree_skb_edge_cases.txt").read_bytes()
    whole, p_whole = _parse(data, [])
    rng = random.Random(seed)
    chunks = [rng.randint(0, 40) for _ in range(len(data) // 10)]
    split, p_split = _parse(data, chunks)
    keep = ("count", "location", "reason", "proto", "first_ts", "last_ts", "pc")
    assert _strip(split, keep) == _strip(whole, keep)
    assert (p_split.records, p_split.bad_lines, p_split.lost_marked) == \
        (p_whole.records, p_whole.bad_lines, p_whole.lost_marked)


def test_byte_at_a_time_and_missing_final_newline():
    data = (DATA / "kfree_skb_trace_pipe.txt").read_bytes().rstrip(b"\n")
    events, p = _parse(data, [1] * len(data))
    assert sum(e["count"] for e in events) == 7
    assert p.bad_lines == 0


def test_edge_cases_golden():
    data = (DATA / "kfree_skb_edge_cases.txt").read_bytes()
    expected = json.loads((DATA / "expected_edge_cases.json").read_text())
    events, p = _parse(data, [])
    keep = ("count", "location", "reason", "proto", "pc")
    assert _strip(events, keep) == _strip(expected["events"], keep)
    assert p.lost_marked == expected["lost_marked"]
    assert p.bad_lines == expected["bad_lines"]


def test_exclude_in_agent_when_kernel_filter_is_unavailable():
    data = (DATA / "kfree_skb_trace_pipe.txt").read_bytes()
    agg = DropAggregator("tracepoint")
    p = KfreeSkbParser(agg, exclude=frozenset({"NO_SOCKET"}))
    p.feed(data)
    events = agg.flush()
    assert [e["reason"] for e in events] == ["NETFILTER_DROP"]
    assert p.excluded == 4


def test_normalize_location():
    assert normalize_location("nft_do_chain+0x3a1/0x6f0") == ("nft_do_chain+0x3a1", None)
    assert normalize_location("nft_do_chain+0x3a1/0x6f0 [nf_tables]") == \
        ("nft_do_chain+0x3a1 [nf_tables]", None)
    assert normalize_location("0xffffffff81000010") == ("0xffffffff81000010", 0xffffffff81000010)


def test_reason_table_from_this_kernels_format_file():
    fmt = Path("/sys/kernel/tracing/events/skb/kfree_skb/format")
    if not fmt.exists():
        pytest.skip("no tracefs (needs root) to read the kfree_skb format")
    table = reason_table(fmt.read_text())
    assert table[2] == "NOT_SPECIFIED"
    assert "NETFILTER_DROP" in table.values() and "SOCKET_RCVBUFF" in table.values()


# -- aggregation ---------------------------------------------------------------------------------

def test_a_storm_becomes_a_few_events():
    agg = DropAggregator("tracepoint")
    key_a = ("nft_do_chain+0x46f", "NETFILTER_DROP", None, None, 2048, None, "sw", None, None, None)
    key_b = ("__udp4_lib_rcv+0x4bc", "NO_SOCKET", None, None, 2048, None, "sw", None, None, None)
    for i in range(1_000_000):
        agg.add_key(key_a if i % 3 else key_b, 1000 + i)
    events = agg.flush()
    assert len(events) == 2
    by = {e["reason"]: e for e in events}
    assert by["NETFILTER_DROP"]["count"] == 666_666
    assert by["NO_SOCKET"]["count"] == 333_334
    assert by["NO_SOCKET"]["first_ts"] == 1000 and by["NO_SOCKET"]["last_ts"] == 1000 + 999_999
    assert agg.flush() == []  # a new window starts empty


KEY_A = ("nft_do_chain+0x46f", "NETFILTER_DROP", None, None, 2048, None, "sw", None, None, None)
KEY_B = ("__udp4_lib_rcv+0x4bc", "NO_SOCKET", None, None, 2048, None, "sw", None, None, None)


def _ticks(agg: DropAggregator, seconds: float, per_tick, tick: float = 0.05) -> list[tuple]:
    """Run ``seconds`` of ticks: ``per_tick(t)`` adds drops, then what is due is taken.
    Returns (t, event) for every event published."""
    out = []
    for i in range(1, int(seconds / tick) + 1):
        t = 100.0 + i * tick + 0.001 * (i % 3)  # ticks come a little late, never early
        per_tick(t)
        out += [(t, e) for e in agg.due(t)]
    return out


def test_a_lone_drop_is_published_at_the_next_tick():
    agg = DropAggregator("tracepoint", tick=0.05, interval=1.0)
    out = _ticks(agg, 3.0, lambda t: agg.add_key(KEY_A, int(t * 1e9)) if abs(t % 0.7) < 0.05 else None)
    sent = [t for t in (100.0 + i * 0.05 + 0.001 * (i % 3) for i in range(1, 61)) if abs(t % 0.7) < 0.05]
    assert [t for t, _e in out] == sent  # each published on the tick it was read in
    assert sum(e["count"] for _t, e in out) == len(sent)


def test_a_storm_is_held_to_one_event_per_interval_and_counts_stay_exact():
    agg = DropAggregator("tracepoint", tick=0.05, interval=1.0)
    n = 0

    def storm(t: float) -> None:
        nonlocal n
        for _ in range(1000):  # 20k drops/s of one signature, 40/s of another
            agg.add_key(KEY_A, int(t * 1e9))
        agg.add_key(KEY_B, int(t * 1e9))
        agg.add_key(KEY_B, int(t * 1e9))
        n += 1002

    out = _ticks(agg, 20.0, storm)
    rest = agg.flush()
    assert sum(e["count"] for _t, e in out) + sum(e["count"] for e in rest) == n
    for reason in ("NETFILTER_DROP", "NO_SOCKET"):
        times = [t for t, e in out if e["reason"] == reason]
        # the hold ramps 0.05, 0.1, 0.2, 0.4, 0.8, then 1 s: 20 s of storm in < 20 + 6 events
        assert len(times) <= 20 + 6, (reason, len(times))
        assert times[0] < 100.06  # the storm's first drop went out at once
        late = [b - a for a, b in zip(times, times[1:], strict=False) if a > 103]
        assert late and all(0.95 <= d <= 1.1 for d in late), late
    # a quiet signature starts again at the short hold
    out = _ticks(agg, 5.0, lambda t: None)
    assert agg.due(200.0) == [] and agg.flush() == []
    agg.add_key(KEY_A, 1)
    assert [e["count"] for e in agg.due(200.05)] == [1]
    agg.add_key(KEY_A, 2)
    assert agg.due(200.06) == []          # held: published 10 ms ago
    assert [e["count"] for e in agg.due(200.1)] == [1]


def test_packet_mode_caps_packets_and_keeps_counts_exact():
    agg = DropAggregator("netdm", packet_mode=True, packet_cap=3)
    pkt = bytes.fromhex("45000030abcd00004011000" "00ad100010ad100029c401e61001c0000")
    for i in range(10):
        agg.add(DropSample(reason="NO_SOCKET", location="x+0x1", proto=0x0800, ts=i,
                           payload=pkt, orig_len=48))
    overflow = agg.take_overflow()
    events = agg.flush()
    packets = [e for e in events if "payload" in e]
    assert len(packets) == 3 and overflow == 7
    assert sum(e["count"] for e in events) == 10
    assert packets[0]["flow"] == {"src": "10.209.0.1", "dst": "10.209.0.2", "l4": 17,
                                  "ip_id": 0xabcd, "sport": 40000, "dport": 7777}


def test_packet_filter_selects_which_packets_are_kept():
    agg = DropAggregator("netdm", packet_filter=lambda s: s.reason == "NETFILTER_DROP")
    agg.add(DropSample(reason="NETFILTER_DROP", payload=b"\x00" * 40))
    agg.add(DropSample(reason="NO_SOCKET", payload=b"\x00" * 40))
    events = agg.flush()
    assert [("payload" in e, e["reason"]) for e in events] == [(False, "NO_SOCKET"),
                                                               (True, "NETFILTER_DROP")]


def test_flow_of_truncated_payload_never_raises():
    for n in range(0, 60):
        flow_of(bytes(range(n)), 0x0800)


# -- kallsyms ------------------------------------------------------------------------------------

def test_kallsyms_unsorted_with_modules():
    lines = [
        "ffffffffc0a00000 t nft_do_chain\t[nf_tables]",
        "ffffffff81a2b000 T __udp4_lib_rcv",
        "ffffffff81000000 T _stext",
        "ffffffff81a2c000 D some_data",
        "garbage",
        "ffffffff81a2d000 t udp_queue_rcv_skb",
    ]
    ks = Kallsyms.from_lines(lines)
    assert len(ks) == 4
    assert ks.resolve(0xffffffff81a2b3c4) == "__udp4_lib_rcv+0x3c4"
    assert ks.resolve(0xffffffff81a2c010) == "__udp4_lib_rcv+0x1010"  # data symbols skipped
    assert ks.resolve(0xffffffffc0a01234) == "nft_do_chain+0x1234 [nf_tables]"
    assert ks.resolve(0x1000) == "0x1000"


def test_kallsyms_of_this_machine_resolves_a_known_symbol():
    ks = Kallsyms.load()
    if not len(ks):
        pytest.skip("/proc/kallsyms addresses hidden (needs root / kptr_restrict)")
    with open("/proc/kallsyms") as f:
        for line in f:
            addr, typ, name = line.split()[:3]
            if name == "kfree_skb_list_reason" or name == "sk_skb_reason_drop":
                assert ks.resolve(int(addr, 16) + 5).startswith(name + "+0x5")
                return
    pytest.skip("no known symbol found")


# -- counters ------------------------------------------------------------------------------------

SNMP = """Ip: Forwarding DefaultTTL InReceives
Ip: 1 64 100
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: {0} 2 {1} 5 {2} 0 {3} 0 0
"""


def test_counter_drops_from_netstat_samples():
    from netevents.agent.drops.counters import drop_events
    from netevents.agent.netstat.parse import CounterDeltas, Sample, parse_snmp

    deltas = CounterDeltas()
    base = parse_snmp(SNMP.format(10, 7, 6, 0)) + [
        Sample("qdisc", "veth-b:8001:0", {"drops": 4294967290, "requeues": 0}, bits=32),
        Sample("link", "eth0", {"rx_dropped": 5, "rx_packets": 100}),
    ]
    assert drop_events(base, deltas, 1_000) == []  # baseline
    # InErrors also counts the RcvbufErrors and InCsumErrors datagrams (the kernel increments
    # both): +13 = 10 receive buffer + 1 checksum + 2 other
    later = parse_snmp(SNMP.format(99, 20, 16, 1)) + [
        Sample("qdisc", "veth-b:8001:0", {"drops": 3, "requeues": 0}, bits=32),   # wrapped
        Sample("link", "eth0", {"rx_dropped": 5, "rx_packets": 200}),
    ]
    events = drop_events(later, deltas, 2_000, netns=4026531840)
    by = {e["location"]: e for e in events}
    assert set(by) == {"Udp:InErrors", "Udp:RcvbufErrors", "Udp:InCsumErrors", "qdisc:drops"}
    assert by["Udp:RcvbufErrors"]["count"] == 10 and by["Udp:RcvbufErrors"]["reason"] == "UDP_RCVBUF_ERRORS"
    assert by["Udp:InCsumErrors"]["count"] == 1 and by["Udp:InCsumErrors"]["reason"] == "UDP_CSUM_ERRORS"
    assert by["Udp:InErrors"]["count"] == 2  # each dropped datagram counted once
    assert by["qdisc:drops"]["count"] == 9 and by["qdisc:drops"]["iface"] == "veth-b"
    assert all(e["source"] == "counter" and e["netns"] == 4026531840 and e["first_ts"] == 1_000
               for e in events)


# -- configuration ---------------------------------------------------------------------------------

def test_sample_config_builds_and_bad_options_are_named():
    import tomllib

    from netevents.agent.drops import build
    from netevents.errors import ConfigError

    section = tomllib.loads((Path(__file__).parents[3] / "netevents/agent/drops/sample.toml").read_text())["drops"]
    c = build(section)
    assert [s.name for s in c.event_sources] == ["drops.ebpf", "drops.netdm", "drops.tracepoint"]
    assert c.event_sources[2].exclude_reasons == frozenset({"NOT_SPECIFIED"})
    for bad, word in (({"intervall": 1}, "intervall"), ({"interval": 0}, "interval"),
                      ({"exclude_reasons": "NOT_SPECIFIED"}, "exclude_reasons"),
                      ({"mode": "burst"}, "mode"), ({"sources": ["bpf"]}, "sources"),
                      ({"source": "bpf"}, "source"), ({"source": "ebpf", "filter": "rsn=X"}, "rsn"),
                      ({"source": "tracepoint", "filter": "reason=X"}, "filter")):
        with pytest.raises(ConfigError, match=word):
            build(bad)

"""nstat semantics on recorded /proc files (golden cases) and on the live host."""

from pathlib import Path

import pytest

from netevents.agent.netstat import NetstatCollector, NetstatConfig, build
from netevents.agent.netstat.parse import (
    CounterDeltas,
    Sample,
    parse_snmp,
    parse_snmp6,
    parse_softnet,
)
from netevents.errors import ConfigError

DATA = Path(__file__).parent / "testdata"


def test_snmp_golden():
    groups = {s.group: s for s in parse_snmp((DATA / "snmp").read_text())}
    assert {"Ip", "Icmp", "IcmpMsg", "Tcp", "Udp", "UdpLite"} <= set(groups)
    tcp = groups["Tcp"]
    assert "RetransSegs" in tcp.counters and "CurrEstab" not in tcp.counters
    assert set(tcp.gauges) == {"RtoAlgorithm", "RtoMin", "RtoMax", "MaxConn", "CurrEstab"}
    assert tcp.gauges["MaxConn"] == -1
    assert groups["Ip"].gauges["DefaultTTL"] == 64


def test_netstat_and_snmp6_golden():
    ext = {s.group: s for s in parse_snmp((DATA / "netstat").read_text())}
    assert "TCPTimeouts" in ext["TcpExt"].counters and "InOctets" in ext["IpExt"].counters
    six = {s.group: s.counters for s in parse_snmp6((DATA / "snmp6").read_text())}
    assert "InReceives" in six["Ip6"] and "InDatagrams" in six["Udp6"] and "InMsgs" in six["Icmp6"]
    assert "InDatagrams" in six["UdpLite6"]


def test_softnet_golden_has_a_scope_per_cpu():
    rows = parse_softnet((DATA / "softnet_stat").read_text())
    assert [r.scope for r in rows] == [str(i) for i in range(len(rows))]
    assert rows[0].bits == 32 and {"processed", "dropped", "time_squeeze"} <= set(rows[0].counters)
    assert "backlog_len" in rows[0].gauges


def test_mismatched_header_is_a_clear_error():
    with pytest.raises(ValueError, match="3 names but 2 values"):
        parse_snmp("Tcp: A B C\nTcp: 1 2\n")


def test_baseline_then_deltas_wrap_reset_and_gauges():
    d = CounterDeltas()
    first = d.update(Sample("softnet", "0", {"dropped": 10, "processed": 4294967290},
                            {"backlog_len": 3}, bits=32), 1_000)
    assert first.flags == ["baseline"] and first.deltas == {} and first.baseline["dropped"] == 10
    wrap = d.update(Sample("softnet", "0", {"dropped": 15, "processed": 4}, {"backlog_len": 9}, bits=32), 2_000)
    assert wrap.deltas == {"dropped": 5, "processed": 10} and wrap.flags == ["wrap"]
    assert wrap.gauges == {"backlog_len": 9} and wrap.interval_ns == 1_000
    reset = d.update(Sample("softnet", "0", {"dropped": 2, "processed": 8}, bits=32), 3_000)
    assert reset.deltas == {"dropped": 2, "processed": 4} and reset.flags == ["reset"]
    d64 = CounterDeltas()
    d64.update(Sample("Tcp", "", {"RetransSegs": 2**40}), 0)
    back = d64.update(Sample("Tcp", "", {"RetransSegs": 7}), 1)
    assert back.deltas == {"RetransSegs": 7} and back.flags == ["reset"]  # 64-bit: never a wrap


def test_new_counter_starts_its_own_baseline():
    d = CounterDeltas()
    d.update(Sample("TcpExt", "", {"A": 1}), 0)
    out = d.update(Sample("TcpExt", "", {"A": 3, "B": 100}), 1)
    assert out.deltas == {"A": 2}


def test_collector_reads_this_host_and_reports_changes(tmp_path):
    c = NetstatCollector(NetstatConfig())
    first = c.events(c.read(), 1)
    groups = {e.group for e in first}
    assert {"Tcp", "TcpExt", "softnet", "link"} <= groups
    assert all(e.flags == ["baseline"] for e in first)
    # Loopback traffic between two samples shows up as link deltas on lo.
    import socket

    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(5):
        b.sendto(b"x", a.getsockname())
    second = c.events(c.read(), 2)
    lo = [e for e in second if e.group == "link" and e.scope == "lo"]
    assert lo and lo[0].deltas.get("rx_packets", 0) >= 5
    assert all("baseline" not in e.flags for e in second)
    a.close()
    b.close()


def test_config_is_validated_with_the_option_named():
    with pytest.raises(ConfigError, match=r"\[netstat\] intervall: unknown option"):
        build({"intervall": 1})
    with pytest.raises(ConfigError, match=r"\[netstat\] interval"):
        build({"interval": "fast"})
    with pytest.raises(ConfigError, match="0.05-3600"):
        build({"interval": 0})


def test_missing_proc_files_are_skipped(tmp_path):
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "snmp").write_text((DATA / "snmp").read_text())
    c = NetstatCollector(NetstatConfig(proc=str(tmp_path), links=False, qdiscs=False))
    assert {s.group for s in c.read()} == {"Ip", "Icmp", "IcmpMsg", "Tcp", "Udp", "UdpLite"}

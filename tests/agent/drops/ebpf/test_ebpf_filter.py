"""The ``filter`` option: parsing, the kernel struct it compiles to, and the user-space match."""

from __future__ import annotations

import ipaddress

import pytest

from netevents.agent.drops.ebpf import layout as L
from netevents.agent.drops.ebpf.filter import parse_filter
from netevents.agent.kernel.netns import NetnsNames
from netevents.errors import ConfigError

REASONS = {"NOT_SPECIFIED": 2, "NO_SOCKET": 3, "NETFILTER_DROP": 8, "HUGE": 300}


def test_terms_are_anded_and_values_ored():
    f = parse_filter("reason=NETFILTER_DROP,no_socket dst=10.0.0.0/8 dport=53,54 l4=udp")
    assert f.reasons == {"NETFILTER_DROP", "NO_SOCKET"}
    assert f.dst == [ipaddress.ip_network("10.0.0.0/8")]
    assert f.dport == {53, 54} and f.l4 == {17}
    ok = dict(reason="NETFILTER_DROP", netns=1, ifindex=2, l4=17, src="192.0.2.1",
              dst="10.1.2.3", sport=999, dport=53)
    assert f.match(**ok)
    assert not f.match(**{**ok, "dst": "11.0.0.1"})
    assert not f.match(**{**ok, "dport": 55})
    assert not f.match(**{**ok, "reason": "TCP_CSUM"})
    assert not f.match(**{**ok, "l4": 6})
    assert not f.match(**{**ok, "src": None, "dst": None})  # no L3 keys: an address term fails


def test_host_port_and_negated_reason():
    f = parse_filter("host=fd00::/8 port=443 reason!=NOT_SPECIFIED")
    base = dict(reason="NO_SOCKET", netns=None, ifindex=None, l4=6, src="fd00::1",
                dst="2001:db8::1", sport=443, dport=1234)
    assert f.match(**base)
    assert f.match(**{**base, "src": "2001:db8::2", "dst": "fd12::2", "sport": 1, "dport": 443})
    assert not f.match(**{**base, "src": "2001:db8::2", "dst": "2001:db8::3"})
    assert not f.match(**{**base, "reason": "NOT_SPECIFIED"})
    assert not f.match(**{**base, "src": "10.0.0.1"})  # IPv4 never matches an IPv6 prefix


@pytest.mark.parametrize("text, word", [
    ("reason", "not attr=value"), ("color=red", "color"), ("dst=10.0.0.300/8", "dst=10.0.0.300/8"),
    ("dport=http", "dport=http"), ("port=70000", "port=70000"), ("l4=bogus", "l4=bogus"),
    ("dst!=10.0.0.0/8", "only reason"), ("reason=", "no value"), ("ifindex=eth0", "ifindex=eth0"),
    ("reason=NO-SOCKET", "NO-SOCKET"),
])
def test_bad_expressions_name_the_problem(text, word):
    with pytest.raises(ConfigError, match=word):
        parse_filter(text)


def test_compile_sets_kernel_fields():
    f = parse_filter("reason=NETFILTER_DROP,HUGE netns=12345 dst=10.9.0.0/16 sport=7 l4=tcp")
    f.resolve_netns(lambda v: int(v) if v.isdigit() else None)
    raw = f.compile(REASONS)
    assert len(raw) == L.FILTER.size
    flags, n_netns, r0, r1, r2, r3, *rest = L.FILTER.unpack(raw)
    assert flags == L.F_REASON | L.F_NETNS | L.F_DST | L.F_SPORT | L.F_L4
    assert n_netns == 1 and rest[0] == 12345
    assert r0 == 1 << 8 and r3 == 1 << 63  # reasons >= 256 share bit 255
    dst = rest[L.NETNS_MAX + 1]
    family, plen, addr = L.PREFIX.unpack(dst)
    assert (family, plen, addr[:4]) == (4, 16, bytes([10, 9, 0, 0]))
    sport, dport, port, l4 = rest[L.NETNS_MAX + 3:]
    assert (sport, dport, port, l4) == (7, 0, 0, 6)


def test_compile_leaves_to_user_space_what_the_kernel_cannot_hold():
    f = parse_filter("dst=10.0.0.0/8,192.168.0.0/16 dport=1,2 ifindex=3")
    flags = L.FILTER.unpack(f.compile(REASONS))[0]
    assert flags == 0  # all three are checked by match() only
    assert f.match(reason="X", netns=None, ifindex=3, l4=17, src="1.1.1.1", dst="192.168.1.1",
                   sport=5, dport=2)
    assert not f.match(reason="X", netns=None, ifindex=4, l4=17, src="1.1.1.1",
                       dst="192.168.1.1", sport=5, dport=2)


def test_negated_reason_clears_its_bit_only():
    f = parse_filter("reason!=NOT_SPECIFIED")
    _flags, _n, r0, r1, r2, r3, *_ = L.FILTER.unpack(f.compile(REASONS))
    assert r0 == (1 << 64) - 1 - (1 << 2) and r1 == r2 == r3 == (1 << 64) - 1


def test_unknown_reason_and_unknown_netns_are_config_errors():
    with pytest.raises(ConfigError, match="NO_SUCH_REASON"):
        parse_filter("reason=NO_SUCH_REASON").compile(REASONS)
    with pytest.raises(ConfigError, match="netns=nowhere"):
        parse_filter("netns=nowhere").resolve_netns(lambda v: None)


def test_netns_names_prefer_run_netns_over_process_hints():
    t = NetnsNames()
    t.update({10: "web"}, {10: "nginx[42]", 11: "redis[7] container 0123456789ab", 1: "systemd[1]"},
             root=1)
    assert t.name(10) == "web" and t.name(11).startswith("redis[7]")
    assert t.name(1) == "systemd[1]" and t.name(99) is None and t.name(None) is None
    assert t.inode_of("web") == 10
    t.update({}, {}, root=1)
    assert t.name(1) == "root"


def test_a_rows_first_drop_is_its_creators_not_a_zeroed_cpus():
    from netevents.agent.drops.ebpf.collector import per_cpu_total

    # CPU 0 created the row at t=5000 and counted 3 (last 5900); CPU 1's value started zeroed
    # (no first_ts) and counted 2 (last 6100); CPU 2 never saw the row
    value = L.VAL.pack(3, 5000, 5900) + L.VAL.pack(2, 0, 6100) + L.VAL.pack(0, 0, 0)
    assert per_cpu_total(value, 3, L.VAL.size) == (5, 5000, 6100)

"""The client-side event filters (sans-IO)."""

from __future__ import annotations

import pytest

from netevents.codec import Batch
from netevents.consumers.filters import EventFilter
from tests.framegen import frame_batch, gap_batch

DROPS = [
    {"count": 1, "source": "ebpf", "reason": "NETFILTER_DROP", "location": "nf_hook_slow+0x8e",
     "iface": "veth-b", "netns": 4026532000, "netns_name": "ns-b",
     "flow": {"src": "10.0.0.1", "dst": "10.0.0.2", "sport": 5000, "dport": 80, "l4": 6}},
    {"count": 2, "source": "netdm", "reason": "NO_SOCKET", "location": "__udp4_lib_rcv+0xa1f",
     "iface": "eth0", "flow": {"src": "192.168.1.5", "dst": "10.0.0.9", "sport": 53, "dport": 40000}},
    {"count": 3, "source": "counter", "location": "Udp.RcvbufErrors"},
]


def drops():
    return Batch(kind="drop", site="s", host="h", run="r", seq=1, t0=1, t1=2, events=list(DROPS))


def ipstats():
    return Batch(kind="ipstat", site="s", host="h", run="r", seq=1, t0=1, t1=2,
                 events=[{"peer": "10.0.0.2", "retrans_segs": 4}, {"peer": "fd00::7", "resets": 1}])


def counts(f: EventFilter, batch: Batch) -> list:
    return [e.get("count", e.get("peer")) for e in f.rows(batch)]


@pytest.mark.parametrize("opts,want", [
    ({}, [1, 2, 3]),
    ({"reason": ["netfilter_drop"]}, [1]),
    ({"reason": ["SKB_DROP_REASON_NO_SOCKET", "NOT_SPECIFIED"]}, [2, 3]),
    ({"location": ["nf_hook_*"]}, [1]),
    ({"location": ["*udp*", "Udp.*"]}, [2, 3]),
    ({"source": ["netdm", "counter"]}, [2, 3]),
    ({"netns": ["4026532000"]}, [1]),
    ({"netns": ["ns-b"]}, [1]),
    ({"addr": ["10.0.0.2"]}, [1]),
    ({"addr": ["10.0.0.0/24"]}, [1, 2]),
    ({"port": [80]}, [1]),
    ({"port": ["53"]}, [2]),
    ({"iface": ["veth-*"]}, [1]),
    ({"addr": ["10.0.0.0/24"], "reason": ["NO_SOCKET"]}, [2]),   # every option must match
    ({"peer": ["10.0.0.2"]}, []),                                # not about drops
])
def test_drop_filters(opts, want):
    assert counts(EventFilter.build(**opts), drops()) == want


def test_ipstat_peer_and_kinds_each_option_can_speak_about():
    f = EventFilter.build(peer=["10.0.0.0/8"])
    assert counts(f, ipstats()) == ["10.0.0.2"]
    assert counts(EventFilter.build(peer=["fd00::/64"]), ipstats()) == ["fd00::7"]
    assert f.kinds(["drop", "ipstat", "netstat"]) == ["ipstat"]
    assert EventFilter.build(addr=["10.0.0.1"]).kinds(["drop", "gap", "frame", "status"]) == \
        ["drop", "gap", "frame"]
    assert EventFilter.build(iface=["eth0"], reason=["X"]).kinds(["drop", "gap", "frame"]) == ["drop"]
    assert EventFilter.build().kinds(["netstat"]) == ["netstat"] and not EventFilter.build()


def test_frames_and_gaps():
    fb = frame_batch("h", "r", 1, 0, 10, iface="eth1")   # sport 1024+i, dport 9, 10.0.0.1 -> .2
    f = EventFilter.build(port=[1027, 1030])
    cut = f.batch(fb)
    assert cut.events["sport"] == [1027, 1030] and cut.fields["first_frame"] == 0
    assert f.keep(fb) == [3, 6]
    assert EventFilter.build(addr=["10.0.0.2"]).batch(fb) is fb        # all pass: same batch
    assert EventFilter.build(addr=["10.9.9.9"]).batch(fb) is None
    assert EventFilter.build(iface=["eth1"]).batch(fb) is fb
    assert EventFilter.build(iface=["eth0"]).batch(fb) is None
    gb = gap_batch("h", "r", 1, [(3, 5)], iface="eth1")
    assert EventFilter.build(iface=["eth*"]).batch(gb) is gb
    assert EventFilter.build(iface=["lo"]).batch(gb) is None
    assert EventFilter.build(addr=["10.9.9.9"], port=[1]).batch(gb) is gb   # gaps pass addr/port
    assert EventFilter.build(reason=["X"]).batch(gb) is None


def test_bad_values():
    with pytest.raises(ValueError, match="not an address"):
        EventFilter.build(addr=["web-1"])
    with pytest.raises(ValueError, match="not a port"):
        EventFilter.build(port=[70000])
    assert EventFilter.build(reason=["x"], addr=["10.0.0.1"]).describe() == "reason=X addr=10.0.0.1/32"

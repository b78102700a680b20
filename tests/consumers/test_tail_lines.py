"""`netevents tail` readable frame lines: addresses and ports in words, the protocol and the
timestamp source by name, nothing printed as Python's None."""

from __future__ import annotations

from netevents.consumers.tail import event_line, frame_text
from tests.framegen import frame_batch


def test_frame_lines_read_as_words():
    b = frame_batch("h1", "r1", 1, 0, 1)
    line = event_line(b, next(b.rows()))
    assert "None" not in line and "ts_src" not in line
    assert " udp 10.0.0.1:1024 -> 10.0.0.2:9 in, software ts" in line
    arp = {"len": 42, "caplen": 42, "ethertype": 0x0806, "dir": 1, "ts_src": 0,
           "src": None, "dst": None, "l4": None, "sport": None, "dport": None}
    assert frame_text(arp) == "42B arp broadcast, fallback ts"
    v6 = {"len": 1500, "caplen": 96, "ethertype": 0x86DD, "dir": 4, "ts_src": 2, "l4": 58,
          "src": bytes(15) + b"\x01", "dst": bytes(15) + b"\x02", "sport": None, "dport": None,
          "vlan": 0x2064}
    assert frame_text(v6) == "1500B (head 96B) icmpv6 ::1 -> ::2 out, hardware ts, vlan 100"
    tcp6 = {**v6, "l4": 6, "sport": 443, "dport": 50000, "vlan": None}
    assert "tcp [::1]:443 -> [::2]:50000" in frame_text(tcp6)
    assert "None" not in frame_text({"len": 60})


def test_who_is_hurting_whom_reads_in_tail_lines():
    from netevents.codec import Batch
    from netevents.consumers.correlate.peers import summary

    ip = Batch(kind="ipstat", site="s", host="va", run="r", seq=1, t0=1, t1=2,
               events=[{"peer": "10.1.0.2", "retrans_segs": 31, "timeouts": 2, "resets": 1,
                        "flags": ["retransmits"]}])
    line = event_line(ip, ip.events[0])
    assert "peer 10.1.0.2 retrans 31 timeouts 2 rst out 1 flags retransmits" in line
    assert "segs out" not in line and "lost" not in line  # absent at the default level: not 0
    st = Batch(kind="status", site="s", host="vb", run="r", seq=1, t0=1, t1=2,
               events=[{"version": "x", "addresses": {"ne-b": ["10.1.0.2", "10.1.0.3"]}}])
    assert "addresses ne-b: 10.1.0.2 10.1.0.3" in event_line(st, st.events[0])
    details = {"from": "va", "peer": "10.1.0.2", "peer_host": "vb", "phase": "close",
               "span_s": 12.0, "retrans_segs": 31, "timeouts": 2, "peer_dropped": 25,
               "drops_known_until": 5,
               "peer_drops": [{"reason": "NETFILTER_DROP", "location": "nft_do_chain+0x4a0", "count": 25}]}
    inc = Batch(kind="incident", site="s", host="correlator", run="r", seq=1, t0=1, t1=2,
                events=[{"type": "peer", "summary": summary(details), "hosts": ["va", "vb"]}])
    assert event_line(inc, inc.events[0]).endswith(
        "[peer] peer: va -> vb (10.1.0.2): 31 retransmits, 2 timeouts over 12s; vb dropped 25 "
        "on their flows (NETFILTER_DROP at nft_do_chain+0x4a0) [closed]")

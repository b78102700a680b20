"""PeerAccountant: baselines, wrap, sockets closed inside a window, levels, the cap, residual."""

from __future__ import annotations

import socket

import pytest

from netevents.agent.ipstats.aggregate import DEFAULT_FIELDS, PeerAccountant, Window, address, residual
from netevents.agent.ipstats.sockdiag import TcpSock


def ip4(a: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, a) + bytes(12)


def sock(cookie: int, peer: str = "10.0.0.2", local: str = "10.0.0.1", **kw) -> TcpSock:
    base = dict(cookie=cookie, family=socket.AF_INET, state=1, src=ip4(local), sport=40000 + cookie,
                dst=ip4(peer), dport=80, inode=cookie, info_len=280, retransmits=0, lost=0, retrans=0,
                rtt=1000, rttvar=500, cwnd=10, total_retrans=0, bytes_acked=0, bytes_received=0,
                segs_out=0, segs_in=0, bytes_sent=0, bytes_retrans=0, dsack_dups=0, total_rto=0)
    base.update(kw)
    return TcpSock(**base)


def by_peer(w: Window) -> dict[str, dict]:
    return {e["peer"]: e for e in w.events}


def test_first_dump_is_a_baseline_and_publishes_nothing():
    acc = PeerAccountant("diagnostics")
    w = acc.window([sock(1, total_retrans=50, segs_out=1000)])
    assert w.baseline and w.events == [] and w.sockets == 1
    w = acc.window([sock(1, total_retrans=53, segs_out=1100)])
    (ev,) = w.events
    assert (ev["retrans_segs"], ev["segs_out"], ev["opened"], ev["sockets"]) == (3, 100, 0, 1)


def test_u32_counters_wrap_modulo_2_32_and_total_rto_modulo_2_16():
    acc = PeerAccountant("diagnostics")
    acc.window([sock(1, total_retrans=2**32 - 2, segs_out=2**32 - 10, dsack_dups=2**32 - 1,
                     total_rto=2**16 - 1, bytes_sent=2**40)])
    w = acc.window([sock(1, total_retrans=3, segs_out=5, dsack_dups=0, total_rto=1,
                         bytes_sent=2**40 + 7)])
    (ev,) = w.events
    assert ev["retrans_segs"] == 5
    assert ev["segs_out"] == 15
    assert ev["dsack_dups"] == 1
    assert ev["timeouts"] == 2
    assert ev["bytes_sent"] == 7


def test_socket_born_after_the_baseline_counts_from_zero():
    acc = PeerAccountant("diagnostics")
    acc.window([])
    (ev,) = acc.window([sock(7, total_retrans=4, bytes_acked=9000)]).events
    assert (ev["opened"], ev["retrans_segs"], ev["bytes_acked"]) == (1, 4, 9000)


def test_socket_opened_and_closed_inside_a_window_contributes_its_full_counters():
    acc = PeerAccountant("default")
    acc.window([sock(1)])
    acc.destroyed([sock(2, peer="10.0.0.9", state=7, total_retrans=6, bytes_retrans=8000, total_rto=1)])
    w = acc.window([sock(1)])
    ev = by_peer(w)["10.0.0.9"]
    assert (ev["opened"], ev["closed"], ev["sockets"]) == (1, 1, 0)
    assert (ev["retrans_segs"], ev["bytes_retrans"], ev["timeouts"]) == (6, 8000, 1)
    assert set(ev["flags"]) == {"retransmits", "timeouts"}
    assert "10.0.0.2" not in by_peer(w)  # nothing happened there: not published at default


def test_destroyed_socket_counts_from_its_last_sample_and_is_not_revived_by_a_late_dump():
    acc = PeerAccountant("diagnostics")
    acc.window([sock(1, total_retrans=10)])
    acc.window([sock(1, total_retrans=12)])
    acc.destroyed([sock(1, total_retrans=15, state=7)])
    # The dump ran just before the socket died: it still lists it, with older counters.
    w = acc.window([sock(1, total_retrans=14)])
    (ev,) = w.events
    assert (ev["retrans_segs"], ev["closed"], ev["opened"], ev["sockets"]) == (3, 1, 0, 0)
    assert 1 not in acc.baselines
    assert acc.window([]).events == []


def test_socket_that_vanishes_without_destroy_message_waits_then_is_given_up():
    acc = PeerAccountant("diagnostics", grace=1)
    acc.window([sock(1, total_retrans=1)])
    w = acc.window([])          # gone from the dump: wait for its destroy message
    assert w.unseen_closes == 0 and 1 in acc.baselines
    acc.destroyed([sock(1, total_retrans=4, state=7)])  # late destroy: counted against baseline
    (ev,) = acc.window([]).events
    assert ev["retrans_segs"] == 3
    acc.window([sock(2)])
    acc.window([])
    w = acc.window([])
    assert w.unseen_closes == 1 and acc.unseen_closes == 1 and acc.baselines == {}


def test_destroy_messages_before_the_baseline_are_history():
    acc = PeerAccountant()
    acc.destroyed([sock(1, total_retrans=99)])
    assert acc.ignored_before_baseline == 1
    acc.window([])
    assert acc.window([]).events == []


def test_lost_counts_increases_of_the_lost_out_gauge():
    acc = PeerAccountant("diagnostics")
    acc.window([sock(1, lost=5)])
    assert acc.window([sock(1, lost=8)]).events[0]["lost"] == 3
    assert acc.window([sock(1, lost=2)]).events[0]["lost"] == 0


def test_levels_default_is_red_flags_and_few_fields_diagnostics_is_every_pair():
    def run(level: str) -> Window:
        acc = PeerAccountant(level)
        acc.window([sock(1, peer="10.0.0.2", local="10.0.0.1"), sock(2, peer="10.0.0.2", local="10.0.0.5"),
                    sock(3, peer="10.0.0.3")])
        return acc.window([
            sock(1, peer="10.0.0.2", local="10.0.0.1", total_retrans=2, rtt=900, cwnd=20),
            sock(2, peer="10.0.0.2", local="10.0.0.5", total_retrans=1, rtt=3000, cwnd=4),
            sock(3, peer="10.0.0.3", segs_out=10)])

    w = run("default")
    assert [e["peer"] for e in w.events] == ["10.0.0.2"]
    (ev,) = w.events
    assert set(ev) <= set(DEFAULT_FIELDS) and "segs_out" not in ev and "local" not in ev
    assert (ev["retrans_segs"], ev["sockets"], ev["rtt_us"], ev["level"]) == (3, 2, 3000, "default")
    assert w.attributed["retrans_segs"] == 3

    w = run("diagnostics")
    pairs = {(e["local"], e["peer"]): e for e in w.events}
    assert set(pairs) == {("10.0.0.1", "10.0.0.2"), ("10.0.0.5", "10.0.0.2"), ("10.0.0.1", "10.0.0.3")}
    assert pairs[("10.0.0.5", "10.0.0.2")]["cwnd"] == 4
    assert pairs[("10.0.0.1", "10.0.0.3")]["flags"] == [] and pairs[("10.0.0.1", "10.0.0.3")]["segs_out"] == 10
    assert w.attributed["retrans_segs"] == 3


def test_set_level_rejects_unknown_levels_and_keeps_the_old_one():
    acc = PeerAccountant()
    with pytest.raises(ValueError, match="unknown level 'verbose'"):
        acc.set_level("verbose")
    assert acc.level == "default"
    assert acc.set_level("diagnostics") == "diagnostics"


def test_cap_keeps_the_worst_peers_and_counts_the_overflow():
    acc = PeerAccountant("default", max_peers=3)
    peers = [f"10.0.1.{i}" for i in range(10)]
    acc.window([sock(i, peer=p) for i, p in enumerate(peers)])
    w = acc.window([sock(i, peer=p, total_retrans=i + 1) for i, p in enumerate(peers)])
    assert w.overflow == 7 and w.peers_total == 10
    assert [e["peer"] for e in w.events] == ["10.0.1.9", "10.0.1.8", "10.0.1.7"]
    # The residual is against what was published: the left-out peers' retransmits are in it.
    r = residual({"Tcp": {"RetransSegs": 55, "OutRsts": 2, "EstabResets": 1},
                  "TcpExt": {"TCPTimeouts": 0}}, w)
    assert r == {"retrans_segs": 55 - (10 + 9 + 8), "timeouts": 0, "out_rsts": 2, "estab_resets": 1}


def test_residual_leaves_out_missing_mib_counters():
    w = Window(attributed={"retrans_segs": 4, "timeouts": 1, "resets": 0})
    assert residual({"Tcp": {"RetransSegs": 4}, "TcpExt": {}}, w) == {"retrans_segs": 0}


def test_ipv4_mapped_ipv6_peers_read_as_ipv4():
    mapped = bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 7])
    assert address(socket.AF_INET6, mapped) == "192.0.2.7"
    assert address(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, "fd00::1")) == "fd00::1"

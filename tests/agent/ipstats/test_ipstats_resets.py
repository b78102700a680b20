"""Per-peer resets from the tcp:tcp_send_reset / tcp:tcp_receive_reset tracepoints.

Sans-IO: the parser on lines captured from this kernel (6.18), the namespace's addresses from
its /proc/net files, attribution by cookie and by address, the accountant's events. End to end:
two namespaces, real RSTs (connections to a closed port, an abortive close with SO_LINGER 0),
one collector on each side; per-peer counts equal the kernel's OutRsts delta.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

import pytest

from netevents.agent.ipstats import IpstatsCollector, IpstatsConfig
from netevents.agent.ipstats.aggregate import PeerAccountant
from netevents.agent.ipstats.mib import MibReader
from netevents.agent.ipstats.resets import (
    RECEIVE,
    SEND,
    Reset,
    ResetCounter,
    local_addresses,
    parse_line,
)
from netevents.agent.kernel.netns import in_netns

SEND_V4 = ("         python3-24819   [001] ..s1. 11588.977789: tcp_send_reset: skbaddr=000000005f898fa6 "
           "skaddr=0000000000000000 src=10.77.0.2:5999 dest=10.77.0.1:48552 state=UNKNOWN reason=NO_SOCKET")
RECV_V4 = ("         python3-24819   [001] ..... 11588.977805: tcp_receive_reset: family=AF_INET sport=48552 "
           "dport=5999 saddr=10.77.0.1 daddr=10.77.0.2 saddrv6=::ffff:10.77.0.1 "
           "daddrv6=::ffff:10.77.0.2 sock_cookie=69e4f")
SEND_V6 = ("         python3-24819   [001] ..s1. 11588.977989: tcp_send_reset: skbaddr=000000005f898fa6 "
           "skaddr=0000000000000000 src=[fd77::2]:5999 dest=[fd77::1]:54648 state=UNKNOWN reason=NO_SOCKET")
RECV_V6 = ("         python3-24819   [001] ..... 11588.977996: tcp_receive_reset: family=AF_INET6 sport=54648 "
           "dport=5999 saddr=0.0.0.0 daddr=0.0.0.0 saddrv6=fd77::1 daddrv6=fd77::2 sock_cookie=69e50")
ABORT = ("     nats-server-29104   [001] ..... 12135.827278: tcp_send_reset: skbaddr=0000000000000000 "
         "skaddr=000000005e693446 src=127.0.0.1:44523 dest=127.0.0.1:35536 state=TCP_CLOSE "
         "reason=TCP_ABORT_ON_CLOSE")

FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     +-- 10.77.0.0/24 2 0 2
        +-- 10.77.0.0/30 2 0 2
           |-- 10.77.0.0
              /24 link UNICAST
           |-- 10.77.0.2
              /32 host LOCAL
        |-- 10.77.0.255
           /32 link BROADCAST
     +-- 127.0.0.0/8 2 0 2
        |-- 127.0.0.1
           /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 10.77.0.2
        /32 host LOCAL
"""
IF_INET6 = """fd770000000000000000000000000002 03 40 00 80     vb
00000000000000000000000000000001 01 80 10 80       lo
"""


def test_lines_from_this_kernel_parse_into_local_and_peer():
    assert parse_line(SEND_V4) == Reset(SEND, "10.77.0.2", "10.77.0.1", None, "NO_SOCKET")
    assert parse_line(RECV_V4) == Reset(RECEIVE, "10.77.0.1", "10.77.0.2", 0x69E4F, None)
    assert parse_line(SEND_V6) == Reset(SEND, "fd77::2", "fd77::1", None, "NO_SOCKET")
    assert parse_line(RECV_V6) == Reset(RECEIVE, "fd77::1", "fd77::2", 0x69E50, None)
    assert parse_line(ABORT).reason == "TCP_ABORT_ON_CLOSE"
    for bad in ("", "tcp_send_reset: src=garbage dest=1.2.3.4:5",
                SEND_V4.replace("10.77.0.1:48552", "x"), "  foo-1 [000] 1.0: kfree_skb: x=1"):
        assert parse_line(bad) is None


def test_the_namespaces_addresses_come_from_fib_trie_and_if_inet6():
    assert local_addresses(FIB_TRIE, IF_INET6) == {"10.77.0.2", "127.0.0.1", "fd77::2", "::1"}


def test_attribution_by_cookie_then_by_address_never_loopback_by_address():
    c = ResetCounter()
    c.addresses = {"10.77.0.2", "127.0.0.1"}
    c.cookies = {0x1234}
    c.feed(SEND_V4 + "\n" + RECV_V4[:40])           # a line split across two reads
    c.feed(RECV_V4[40:] + "\n")                     # local 10.77.0.1: another namespace's
    c.feed(ABORT + "\n")                            # loopback, no cookie: not attributed
    c.feed(RECV_V4.replace("69e4f", "1234").replace("saddr=10.77.0.1", "saddr=127.0.0.1")
           .replace("daddr=10.77.0.2", "daddr=127.0.0.5") + "\n")  # loopback, our socket's cookie
    assert c.take() == {(SEND, "10.77.0.2", "10.77.0.1"): 1, (RECEIVE, "127.0.0.1", "127.0.0.5"): 1}
    assert (c.other_namespaces, c.unattributed_loopback, c.bad_lines) == (1, 1, 0)
    assert c.take() == {}


def test_the_accountant_publishes_resets_per_peer_with_their_flag():
    acct = PeerAccountant("default")
    acct.resets({(SEND, "10.0.0.1", "10.0.0.9"): 4})  # before the baseline: history
    acct.window([])                                   # baseline
    acct.resets({(SEND, "10.0.0.1", "10.0.0.9"): 3, (RECEIVE, "10.0.0.1", "10.0.0.9"): 2,
                 (RECEIVE, "fd00::1", "fd00::9"): 1})
    w = acct.window([])
    by = {e["peer"]: e for e in w.events}
    assert (by["10.0.0.9"]["resets"], by["10.0.0.9"]["resets_in"]) == (3, 2)
    assert by["fd00::9"]["resets_in"] == 1 and by["fd00::9"]["resets"] == 0
    assert all(e["flags"] == ["resets"] for e in w.events)
    assert w.attributed["resets"] == 3 and w.attributed["resets_in"] == 3


# -- end to end --------------------------------------------------------------------------------

def _tracefs_ok() -> bool:
    return Path("/sys/kernel/tracing/events/tcp/tcp_send_reset").exists()


def _closed_port_attempts(netns: str, dst: str, n: int) -> None:
    for _ in range(n):
        s = in_netns(netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        with s:
            s.settimeout(5)
            with pytest.raises(ConnectionRefusedError):
                s.connect((dst, 5999))


def _abortive_close(server_ns: str, client_ns: str, addr: str) -> None:
    """The server accepts and closes with SO_LINGER 0: one RST from a full socket."""
    ls = in_netns(server_ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, 6001))
    ls.listen(1)
    c = in_netns(client_ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    c.settimeout(5)
    c.connect((addr, 6001))
    conn, _ = ls.accept()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    with pytest.raises(ConnectionResetError):
        c.settimeout(5)
        c.recv(10)
    c.close()
    ls.close()


@pytest.mark.integration
def test_resets_land_on_the_peer_on_both_sides_and_match_out_rsts(netns_pair):
    if not _tracefs_ok():
        pytest.skip("needs tracefs with the tcp:tcp_send_reset tracepoint")
    a, b, prefix = netns_pair
    a_addr, b_addr = f"{prefix}.1", f"{prefix}.2"
    mib_b = MibReader(b.name)
    windows: dict[str, list] = {"a": [], "b": []}

    class Sink:
        def __init__(self, side):
            self.side = side
            self.lost_counts = {}

        def declare_loss(self, place):
            self.lost_counts.setdefault(place, 0)

        def lost(self, place, n):
            self.lost_counts[place] = self.lost_counts.get(place, 0) + n

        def state(self, *a, **k):
            raise AssertionError(f"source degraded: {a}")

        def emit_batch(self, kind, events, **fields):
            windows[self.side].append((events, fields))

    async def main():
        cols = {side: IpstatsCollector(IpstatsConfig(interval=0.5, netns=ns.name))
                for side, ns in (("a", a), ("b", b))}
        sinks = {side: Sink(side) for side in cols}
        tasks = [asyncio.create_task(col.run(sinks[side])) for side, col in cols.items()]
        try:
            async with asyncio.timeout(20):
                for col in cols.values():
                    await col.ready.wait()
            await asyncio.sleep(0.2)
            before = mib_b.read()["Tcp"]["OutRsts"]
            await asyncio.to_thread(_closed_port_attempts, a.name, b_addr, 5)
            await asyncio.to_thread(_abortive_close, b.name, a.name, b_addr)
            after = mib_b.read()["Tcp"]["OutRsts"]
            n = len(windows["b"])
            async with asyncio.timeout(10):
                while len(windows["b"]) < n + 2 or len(windows["a"]) < n + 2:
                    await asyncio.sleep(0.05)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return after - before, sinks

    out_rsts, sinks = asyncio.run(main())
    mib_b.close()
    assert out_rsts == 6, "5 refused connections and one abortive close: 6 RSTs from b"

    def total(side, peer, field):
        return sum(e.get(field, 0) for events, _f in windows[side] for e in events if e["peer"] == peer)

    assert total("b", a_addr, "resets") == 6          # b sent them to a
    assert total("a", b_addr, "resets_in") == 6       # a received them from b
    assert total("a", b_addr, "resets") == 0 and total("b", a_addr, "resets_in") == 0
    # b's resets are all attributed: sum over peers + residual == OutRsts of b's windows
    residual = sum(f["residual"].get("out_rsts", 0) for _e, f in windows["b"])
    mib = sum(f["mib"].get("OutRsts", 0) for _e, f in windows["b"])
    assert total("b", a_addr, "resets") + residual == mib and residual == 0
    assert sinks["b"].lost_counts.get("ipstats.reset_overrun") == 0

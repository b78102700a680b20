"""Golden tests of the sock_diag parser on real kernel answers (testdata/, see record_golden.py).

The oracle is independent of the parser: ``ss -tinH`` of the same namespace taken right after
the dump (iproute2's own parser), and what the socket API said (addresses, ports, inodes).
"""

from __future__ import annotations

import json
import re
import socket
import struct
from pathlib import Path

import pytest

from netevents.agent.ipstats.aggregate import PeerAccountant, address
from netevents.agent.ipstats.sockdiag import (
    INET_DIAG_INFO,
    SOCK_DIAG_BY_FAMILY,
    TCP_CLOSE,
    TCP_ESTABLISHED,
    build_dump_request,
    parse_dump,
)
from netevents.agent.kernel.netlink import NLMSG_HDR
from netevents.errors import NetlinkError

DATA = Path(__file__).resolve().parent / "testdata"


def load(name: str) -> list:
    out: list = []
    parse_dump((DATA / name).read_bytes(), out)
    return out


def ss_records() -> dict[tuple, dict[str, float]]:
    """``ss -tinH`` output -> {(local, lport, peer, pport): {field: value}}."""
    lines = (DATA / "ss.txt").read_text().splitlines()
    out = {}
    for head, info in zip(lines[0::2], lines[1::2], strict=True):
        local, peer = head.split()[3:5]
        lhost, lport = local.rsplit(":", 1)
        phost, pport = peer.rsplit(":", 1)
        key = (lhost.strip("[]"), int(lport), phost.strip("[]"), int(pport))
        rec: dict[str, float] = {}
        for name in ("cwnd", "bytes_sent", "bytes_retrans", "bytes_acked", "bytes_received",
                     "segs_out", "segs_in", "lost"):
            m = re.search(rf"(?<![\w_]){name}:(\d+)", info)
            rec[name] = int(m.group(1)) if m else 0
        m = re.search(r"\brtt:([\d.]+)/([\d.]+)", info)
        rec["rtt"], rec["rttvar"] = round(float(m.group(1)) * 1000), round(float(m.group(2)) * 1000)
        m = re.search(r"\bretrans:(\d+)/(\d+)", info)
        rec["retrans"], rec["total_retrans"] = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
        out[key] = rec
    return out


def test_dump_matches_ss_and_the_socket_api():
    socks = load("dump.bin")
    facts = json.loads((DATA / "sockets.json").read_text())
    ss = ss_records()
    assert len(socks) == len(facts) == len(ss) == 4
    by_key = {(address(s.family, s.src), s.sport, address(s.family, s.dst), s.dport): s for s in socks}
    assert {s.family for s in socks} == {socket.AF_INET, socket.AF_INET6}
    for f in facts:
        s = by_key[(f["local"], f["sport"], f["peer"], f["dport"])]
        assert s.family == f["family"] and s.inode == f["inode"]
        assert s.state == TCP_ESTABLISHED and s.info_len >= 248
        want = ss[(f["local"], f["sport"], f["peer"], f["dport"])]
        got = {k: getattr(s, "cwnd" if k == "cwnd" else k) for k in want}
        assert got == want, f"{f['local']}:{f['sport']} -> {f['peer']}:{f['dport']}"
    assert len({s.cookie for s in socks}) == 4
    # The lossy flows retransmitted; loopback did not.
    assert sum(s.total_retrans for s in socks if s.dport == 7001) > 0
    assert all(s.total_retrans == 0 for s in socks if s.dport != 7001)


def test_destroy_messages_hand_in_final_counters_of_the_same_sockets():
    dumped = {s.cookie: s for s in load("dump.bin")}
    final = load("destroy.bin")
    assert {s.cookie for s in final} == set(dumped)
    for s in final:
        before = dumped[s.cookie]
        assert s.state == TCP_CLOSE and s.inode == 0  # the file is gone by then
        assert (s.family, s.src, s.sport, s.dst, s.dport) == \
               (before.family, before.src, before.sport, before.dst, before.dport)
        for counter in ("total_retrans", "bytes_acked", "segs_out", "segs_in", "bytes_sent"):
            assert getattr(s, counter) >= getattr(before, counter), counter


def _shorten_info(msg: bytes, new_len: int) -> bytes:
    """Rewrite one recorded SOCK_DIAG_BY_FAMILY message as an older kernel would send it: a
    tcp_info of ``new_len`` bytes."""
    out = bytearray(msg[:16 + 72])
    a = 16 + 72
    while a < len(msg):
        alen, atype = struct.unpack_from("=HH", msg, a)
        body = msg[a + 4:a + alen]
        if atype == INET_DIAG_INFO:
            body = body[:new_len]
        attr = struct.pack("=HH", 4 + len(body), atype) + body
        out += attr + bytes(-len(attr) % 4)
        a += (alen + 3) & ~3
    struct.pack_into("=I", out, 0, len(out))
    return bytes(out)


def _first_message(name: str) -> bytes:
    raw = (DATA / name).read_bytes()
    off = 0
    while True:
        n, t, *_ = NLMSG_HDR.unpack_from(raw, off)
        if t == SOCK_DIAG_BY_FAMILY:
            return raw[off:off + n]
        off += (n + 3) & ~3


@pytest.mark.parametrize("length, has_bytes_sent, has_rto", [
    (104, False, False),   # Linux 4.1: up to tcpi_total_retrans
    (216, True, False),    # 4.19: bytes_sent, bytes_retrans
    (232, True, False),    # 5.x
    (248, True, True),     # 6.7: total_rto
])
def test_shorter_tcp_info_from_older_kernels(length, has_bytes_sent, has_rto):
    msg = _first_message("dump.bin")
    (full,) = [s for s in load("dump.bin") if s.cookie == struct.unpack_from("=Q", msg, 16 + 44)[0]]
    out: list = []
    parse_dump(_shorten_info(msg, length), out)
    (s,) = out
    assert s.info_len == length
    assert (s.cookie, s.total_retrans, s.rtt, s.cwnd) == (full.cookie, full.total_retrans, full.rtt, full.cwnd)
    assert s.bytes_sent == (full.bytes_sent if has_bytes_sent else 0)
    assert s.total_rto == (full.total_rto if has_rto else 0)


def test_timeouts_not_counted_from_a_tcp_info_without_total_rto():
    msg = _first_message("dump.bin")
    old: list = []
    parse_dump(_shorten_info(msg, 232), old)
    acc = PeerAccountant("diagnostics")
    acc.window([])
    acc.destroyed(old)
    (ev,) = acc.window([]).events
    assert ev["timeouts"] == 0 and ev["retrans_segs"] == old[0].total_retrans


def test_malformed_input_is_one_clear_error():
    good = _first_message("dump.bin")
    with pytest.raises(NetlinkError, match="truncated netlink message at offset 0"):
        parse_dump(good[:-8], [])
    short = bytearray(good[:40])
    struct.pack_into("=I", short, 0, 40)
    with pytest.raises(NetlinkError, match="short inet_diag_msg"):
        parse_dump(bytes(short), [])
    bad_attr = bytearray(good)
    struct.pack_into("=H", bad_attr, 16 + 72, 2)  # the first attribute claims 2 bytes
    with pytest.raises(NetlinkError, match="bad attribute at offset 88"):
        parse_dump(bytes(bad_attr), [])
    err = NLMSG_HDR.pack(36, 2, 0, 1, 0) + struct.pack("=i", -16) + bytes(16)
    with pytest.raises(NetlinkError) as info:
        parse_dump(err, [])
    assert info.value.errno == 16 and "EBUSY" in str(info.value)


def test_dump_request_layout():
    req = build_dump_request(socket.AF_INET6, 7)
    assert len(req) == 16 + 56
    n, t, flags, seq, _pid = NLMSG_HDR.unpack_from(req)
    assert (n, t, flags, seq) == (72, SOCK_DIAG_BY_FAMILY, 0x301, 7)
    family, proto, ext, states = struct.unpack_from("=BBBxI", req, 16)
    assert (family, proto, ext) == (socket.AF_INET6, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1))
    assert states & (1 << TCP_ESTABLISHED) and not states & (1 << 10)  # no listeners


def test_samples_are_the_sockets_the_full_parse_gives(monkeypatch):
    """parse_dump(samples=True) reads runs of same-layout messages with one iter_unpack each;
    every socket's (family, src, dst, cookie, tcp_info) is what the TcpSock parse gives, also
    around a message of another layout (an older kernel's shorter tcp_info) in the middle."""
    import netevents.agent.ipstats.sockdiag as sd

    raw = (DATA / "dump.bin").read_bytes()
    msgs, off = [], 0
    while off < len(raw):
        n = NLMSG_HDR.unpack_from(raw, off)[0]
        msgs.append(raw[off:off + n] + bytes(-n % 4))
        off += (n + 3) & ~3
    socks = [m for m in msgs if NLMSG_HDR.unpack_from(m, 0)[1] == SOCK_DIAG_BY_FAMILY]
    rest = [m for m in msgs if m not in socks]
    assert len(socks) >= 4
    socks = socks * 4  # longer runs (the same sockets again: the parse does not care)
    odd = _shorten_info(socks[0], 232)
    data = b"".join(socks[:5] + [odd] + socks[5:] + rest)
    monkeypatch.setattr(sd, "_SAMPLE_STRUCTS", {})
    full: list = []
    parse_dump(data, full)
    samples: list = []
    assert parse_dump(data, samples, samples=True)
    assert sd._SAMPLE_STRUCTS  # the run path was taken
    assert len(samples) == len(full) == len(socks) + 1
    for t, s in zip(samples, full, strict=True):
        assert (t[sd.S_FAMILY], t[sd.S_SRC], t[sd.S_DST], t[sd.S_COOKIE]) == (
            s.family, s.src, s.dst, s.cookie)
        assert t[sd.S_INFO:] == s[9:]
    acc_a, acc_b = PeerAccountant("diagnostics"), PeerAccountant("diagnostics")
    acc_a.window([])
    acc_b.window([])
    assert acc_a.window_samples([samples[:3], samples[3:]]).events == acc_b.window(full).events

"""The block walker on synthetic ring memory laid out as include/uapi/linux/if_packet.h says."""

from __future__ import annotations

import struct

from netevents.agent.capture.ring import (
    BLOCK_DESC,
    TP_STATUS_LOSING,
    TP_STATUS_TS_RAW_HARDWARE,
    TP_STATUS_TS_SOFTWARE,
    TP_STATUS_USER,
    TP_STATUS_VLAN_VALID,
    walk_block,
)
from netevents.agent.capture.summary import parse_l3l4
from tests.agent.capture.test_capture_summary import TCP, UDP, eth, ipv4

HDR = struct.Struct("=IIIIIIHHIIHH8x")  # tpacket3_hdr, 48 bytes
SLL = struct.Struct("=HHiHBB8s")          # sockaddr_ll, 20 bytes
MAC_OFF = 82                               # what the kernel uses for SOCK_RAW, V3


def frame_record(data: bytes, *, sec: int, nsec: int, status: int, pkttype: int, rxhash: int,
                 tci: int, wire: int, snap: int, last: bool) -> bytes:
    cap = data[:snap]
    size = (MAC_OFF + len(cap) + 15) & ~15
    hdr = HDR.pack(0 if last else size, sec, nsec, len(cap), wire, status, MAC_OFF, MAC_OFF + 14,
                   rxhash, tci, 0x8100 if tci else 0, 0)
    sll = SLL.pack(17, 0x0008, 3, 1, pkttype, 6, b"\0" * 8)
    rec = hdr + sll
    rec += b"\0" * (MAC_OFF - len(rec)) + cap
    return rec + b"\0" * (size - len(rec))


def block(frames: list[bytes], *, seq: int, status: int = TP_STATUS_USER, size: int = 4096) -> bytes:
    body = b"".join(frames)
    desc = BLOCK_DESC.pack(1, 0, status, len(frames), BLOCK_DESC.size, BLOCK_DESC.size + len(body),
                           seq, 1, 0, 2, 0)
    raw = desc + body
    assert len(raw) <= size
    return raw + b"\0" * (size - len(raw))


def test_walks_every_frame_with_its_provenance_and_keys():
    tcp = eth(0x0800, ipv4(6, TCP))
    udp = eth(0x0800, ipv4(17, UDP, ident=99))
    frames = [
        frame_record(tcp, sec=10, nsec=5, status=TP_STATUS_USER | TP_STATUS_TS_SOFTWARE,
                     pkttype=0, rxhash=0xAB, tci=0, wire=len(tcp), snap=96, last=False),
        frame_record(udp + b"x" * 200, sec=11, nsec=0,
                     status=TP_STATUS_USER | TP_STATUS_TS_RAW_HARDWARE | TP_STATUS_VLAN_VALID,
                     pkttype=4, rxhash=0, tci=42, wire=len(udp) + 200, snap=96, last=False),
        frame_record(udp, sec=12, nsec=1, status=TP_STATUS_USER, pkttype=1, rxhash=1, tci=7,
                     wire=len(udp), snap=96, last=True),
    ]
    mem = b"\xee" * 4096 + block(frames, seq=77, status=TP_STATUS_USER | TP_STATUS_LOSING)
    rows: list[tuple] = []
    keys: list[tuple] = []
    info = walk_block(mem, 4096, rows, keys)
    assert (info.seq, info.num_pkts, info.walked) == (77, 3, 3)
    assert info.status & TP_STATUS_LOSING
    assert info.first_ts == 10_000_000_005 and info.last_ts == 12_000_000_001
    ts, ts_src, caplen, wire, direction, rxhash, vlan = zip(*(r[:7] for r in rows), strict=True)
    assert ts_src == (1, 2, 0)
    assert caplen == (len(tcp), 96, len(udp)) and wire == (len(tcp), len(udp) + 200, len(udp))
    assert direction == (0, 4, 1) and rxhash == (0xAB, 0, 1)
    assert vlan == (None, 42, None)  # tp_vlan_tci only counts with TP_STATUS_VLAN_VALID
    assert keys[0] == (0x0800, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 6, 40000, 443,
                       0x1234, 0xDEADBEEF)
    assert keys[1][7] is None and keys[1][6] == 99 and rows[1][7] == udp + b"x" * (96 - len(udp))
    assert rows[2][7] == udp
    # the fast IPv4 path and the generic parser agree
    assert keys == [parse_l3l4(r[7]) for r in rows]


def test_a_frame_pointing_outside_the_ring_ends_the_block_walk():
    udp = eth(0x0800, ipv4(17, UDP))
    good = frame_record(udp, sec=1, nsec=0, status=1, pkttype=0, rxhash=0, tci=0, wire=len(udp),
                        snap=96, last=False)
    bad = bytearray(good)
    struct.pack_into("=I", bad, 0, 1 << 20)  # tp_next_offset far past the buffer
    mem = block([good, bytes(bad), good], seq=1)
    rows: list[tuple] = []
    keys: list[tuple] = []
    info = walk_block(mem, 0, rows, keys)
    assert info.num_pkts == 3 and info.walked == 2 and len(rows) == len(keys) == 2


def test_empty_block():
    rows: list[tuple] = []
    keys: list[tuple] = []
    info = walk_block(block([], seq=5), 0, rows, keys)
    assert info.walked == 0 and info.first_ts is None and rows == keys == []


def test_fast_path_matches_the_parser_on_fragments_icmp_and_options():
    frames = [eth(0x0800, ipv4(17, UDP + b"p" * 20, frag=0x2000)),      # MF set, offset 0
              eth(0x0800, ipv4(17, UDP + b"p" * 20, frag=0x0004)),      # later fragment
              eth(0x0800, ipv4(1, b"\x08\x00" + b"i" * 30)),             # ICMP
              eth(0x0800, ipv4(6, TCP, ihl=6)),                          # options: generic path
              eth(0x0800, ipv4(6, TCP), vlans=(5,))]                     # tagged: generic path
    recs = [frame_record(f, sec=1, nsec=i, status=1, pkttype=0, rxhash=0, tci=0, wire=len(f),
                         snap=96, last=i == len(frames) - 1) for i, f in enumerate(frames)]
    rows: list[tuple] = []
    keys: list[tuple] = []
    walk_block(block(recs, seq=1), 0, rows, keys)
    assert keys == [parse_l3l4(f) for f in frames]
    assert keys[0][4:6] == (5353, 53) and keys[1][4] is None and keys[2][4] is None

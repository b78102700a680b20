"""Golden cases for the L3/L4 key parser and the column transpose (netevents/agent/capture/summary.py)."""

from __future__ import annotations

import struct

from netevents.agent.capture.summary import COLUMNS, KEY_FIELDS, ROW_FIELDS, columns, parse_l3l4

MACS = bytes.fromhex("020000000002" "020000000001")


def eth(ethertype: int, payload: bytes, vlans: tuple[int, ...] = ()) -> bytes:
    tags = b"".join(struct.pack("!HH", 0x8100, v) for v in vlans)
    return MACS + tags + struct.pack("!H", ethertype) + payload


def ipv4(proto: int, l4: bytes, *, ident: int = 0x1234, frag: int = 0, ihl: int = 5) -> bytes:
    opts = b"\x01" * ((ihl - 5) * 4)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(opts) + len(l4), ident, frag, 64,
                      proto, 0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    return hdr + opts + l4


SRC6 = bytes.fromhex("fd000000000000000000000000000001")
DST6 = bytes.fromhex("fd000000000000000000000000000002")


def ipv6(nh: int, rest: bytes) -> bytes:
    return struct.pack("!IHBB", 0x60000000, len(rest), nh, 64) + SRC6 + DST6 + rest


TCP = struct.pack("!HHII", 40000, 443, 0xDEADBEEF, 0) + b"\x50\x02" + b"\0" * 6
UDP = struct.pack("!HHHH", 5353, 53, 8, 0)


def test_ipv4_tcp():
    keys = parse_l3l4(eth(0x0800, ipv4(6, TCP)))
    assert keys == (0x0800, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 6, 40000, 443, 0x1234,
                    0xDEADBEEF)


def test_ipv4_udp_with_options_and_two_vlan_tags():
    keys = parse_l3l4(eth(0x0800, ipv4(17, UDP, ihl=7), vlans=(100, 200)))
    assert keys[0] == 0x0800 and keys[3:7] == (17, 5353, 53, 0x1234) and keys[7] is None


def test_ipv4_non_first_fragment_has_no_ports():
    keys = parse_l3l4(eth(0x0800, ipv4(17, UDP, frag=0x0010)))
    assert keys[3] == 17 and keys[4] is None and keys[5] is None and keys[6] == 0x1234


def test_ipv6_udp_through_hop_by_hop_and_first_fragment():
    hbh = bytes([44, 0]) + b"\0" * 6           # next: fragment
    frag = bytes([17, 0, 0, 0]) + struct.pack("!I", 777)  # offset 0, id 777
    keys = parse_l3l4(eth(0x86DD, ipv6(0, hbh + frag + UDP)))
    assert keys == (0x86DD, SRC6, DST6, 17, 5353, 53, 777, None)


def test_ipv6_later_fragment_has_no_ports():
    frag = bytes([6, 0]) + struct.pack("!H", 8 << 3) + struct.pack("!I", 9)
    keys = parse_l3l4(eth(0x86DD, ipv6(44, frag + TCP)))
    assert keys[3] == 6 and keys[4] is None and keys[6] == 9


def test_short_heads_never_raise():
    frame = eth(0x0800, ipv4(6, TCP))
    for n in range(len(frame)):
        keys = parse_l3l4(frame[:n])
        assert len(keys) == 8
    assert parse_l3l4(frame[:14 + 20 + 6])[4:6] == (40000, 443)  # ports reached, seq not
    assert parse_l3l4(frame[:14 + 20 + 6])[7] is None


def test_arp_gives_only_the_ethertype():
    assert parse_l3l4(eth(0x0806, b"\0" * 28)) == (0x0806,) + (None,) * 7


def test_columns_transpose_and_queue():
    rows = [(i, 1, 60, 60, 0, 7, None, b"h") for i in range(3)]
    keys = [parse_l3l4(eth(0x0800, ipv4(6, TCP)))] * 3
    cols = columns(rows, keys, queue=2)
    assert list(cols) == list(COLUMNS)
    assert cols["ts"] == [0, 1, 2] and cols["queue"] == [2, 2, 2] and cols["sport"] == [40000] * 3
    assert cols["head"] == [b"h"] * 3
    assert set(ROW_FIELDS) | set(KEY_FIELDS) | {"queue"} == set(COLUMNS)
    assert columns([], [], None) == {name: [] for name in COLUMNS}

"""The batch form of the packet fingerprint gives exactly the digests of the one-frame form."""

import random
import struct

from netevents.consumers.correlate.fingerprint import fingerprint, fingerprints


def _eth(ethertype: int, l3: bytes, vlan: bool = False) -> bytes:
    tag = struct.pack("!HH", 0x8100, 7) if vlan else b""
    return b"\x02" * 6 + b"\x04" * 6 + tag + struct.pack("!H", ethertype) + l3


def _ipv4(proto: int, l4: bytes, ihl: int = 5) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(l4), 1, 0, 64, proto, 0,
                       b"\x0a\0\0\1", b"\x0a\0\0\2") + b"\0" * (4 * (ihl - 5)) + l4


def test_fingerprints_of_a_batch_equal_the_fingerprint_of_each_frame():
    rnd = random.Random(7)
    payload = bytes(range(64))
    tcp = struct.pack("!HHIIBBHHH", 1, 2, 3, 4, 0x80, 0x18, 5, 0, 0) + b"\0" * 12 + payload
    heads = [
        _eth(0x0800, _ipv4(6, tcp)), _eth(0x0800, _ipv4(17, b"\0" * 8 + payload)),
        _eth(0x0800, _ipv4(1, b"\x08\0\0\0\0\1\0\2" + payload)), _eth(0x0800, _ipv4(6, tcp, ihl=7)),
        _eth(0x0800, _ipv4(6, tcp), vlan=True), _eth(0x86DD, b"\x60" + b"\0" * 39 + payload),
        _eth(0x0800, _ipv4(6, tcp))[:40],              # TCP header cut short
        _eth(0x0800, _ipv4(6, tcp))[:30], b"\x02" * 10, b"", None, _eth(0x0806, b"\0" * 28),
    ]
    rows = []
    for head in heads * 3:
        rows.append((rnd.choice([b"\x0a\0\0\1", b"", None]) or b"\x0a\0\0\1",
                     rnd.choice([b"\x0a\0\0\2", None]), rnd.choice([6, 17, 1, None]),
                     rnd.choice([None, 80]), rnd.choice([None, 443]), rnd.randrange(65536),
                     rnd.choice([None, rnd.randrange(2**32)]), head))
    cols = [list(c) for c in zip(*rows, strict=True)]
    expected = [fingerprint(*r) for r in rows]
    assert fingerprints(*cols) == expected
    assert sum(fp is not None for fp in expected) > len(rows) // 3   # most are real digests

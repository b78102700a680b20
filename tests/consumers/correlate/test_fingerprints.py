"""The batch form of the packet fingerprint gives exactly the digests of the one-frame form, in
C (_cfinger.c) as in Python."""

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


cfinger = pytest.importorskip("netevents.consumers.correlate._cfinger",
                              reason="the C fingerprint extension is not built")

_HEADS = st.one_of(
    st.none(), st.binary(max_size=100),
    st.builds(lambda et, l3, vlan: _eth(et, l3, vlan), st.sampled_from([0x0800, 0x86DD, 0x0806, 0x88A8]),
              st.binary(min_size=0, max_size=90), st.booleans()),
    st.builds(lambda proto, l4, ihl, cut: _eth(0x0800, _ipv4(proto, l4, ihl))[:cut],
              st.sampled_from([6, 17, 1, 132]), st.binary(max_size=80), st.integers(5, 15),
              st.integers(0, 200)))
_NUM = st.one_of(st.none(), st.integers(0, 2**32), st.sampled_from([-1, 2**63 - 1, -(2**63)]))
_ODD = st.sampled_from([2**64, 1.5, "80", [1], bytearray(b"\x0a\0\0\1"), b"\x01" * 256, True])
_ROW = st.tuples(st.one_of(st.none(), st.sampled_from([b"", b"\x0a\0\0\1", b"\xfe\x80" + b"\0" * 14])),
                 st.one_of(st.none(), st.sampled_from([b"\x0a\0\0\2", b"\0" * 16])),
                 st.one_of(st.none(), st.sampled_from([6, 17, 1, 0])), _NUM, _NUM, _NUM, _NUM, _HEADS)


@settings(max_examples=300, deadline=None)
@given(st.lists(_ROW, max_size=12), st.lists(st.tuples(st.integers(0, 11), st.integers(0, 7), _ODD),
                                             max_size=2))
def test_the_c_keys_are_the_python_keys_frame_by_frame(rows, odd) -> None:
    """Every frame gets one key whichever path makes it (a departure hashed in C must meet its
    arrival hashed in Python): C for the batch equals Python frame by frame, and a batch with a
    value C leaves to Python (``odd``) gets Python's keys for all its frames."""
    rows = [list(r) for r in rows]
    for i, c, value in odd:
        if i < len(rows):
            rows[i][c] = value
    cols = [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(8)]
    expected = [fingerprint(*r) for r in rows]
    keys = cfinger.fingerprints(*cols)
    if keys is None:   # left to Python: only for a value the codec would not give
        assert odd and any(i < len(rows) for i, _c, _v in odd)
    else:
        assert keys == expected
    assert fingerprints(*cols) == expected


def test_fields_that_differ_give_different_keys() -> None:
    head = _eth(0x0800, _ipv4(17, b"\0" * 8 + b"payload"))
    base = [b"\x0a\0\0\1", b"\x0a\0\0\2", 17, 4000, 5000, 7, None, head]
    variants = [base[:3] + [None] + base[4:], base[:3] + [0] + base[4:],       # None is not 0
                base[:6] + [0] + base[7:], [b"\x0a\0\0\1\0", b"\0\0\2"] + base[2:],  # lengths count
                base[:7] + [head[:-1] + b"X"]]
    keys = [cfinger.fingerprints(*[[v] for v in row])[0] for row in [base, *variants]]
    assert len(set(keys)) == len(keys)
    assert keys == [fingerprint(*row) for row in [base, *variants]]

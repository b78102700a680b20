"""The C block walker against the pure-Python one: the same blocks must give the same BlockInfo,
the same columns and the same encoded batch, byte for byte (netevents/agent/capture/cwalk.py)."""

from __future__ import annotations

import mmap
import shutil
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netevents.agent.capture import capture_config, cwalk
from netevents.agent.capture.ring import (
    BLOCK_DESC,
    TP_STATUS_LOSING,
    TP_STATUS_TS_RAW_HARDWARE,
    TP_STATUS_TS_SOFTWARE,
    TP_STATUS_USER,
    TP_STATUS_VLAN_VALID,
    PythonWalker,
)
from netevents.codec import Batch, PackedColumns, decode_batch, encode_batch
from netevents.errors import CapabilityError, ConfigError
from tests.agent.capture.test_capture_summary import TCP, UDP, eth, ipv4, ipv6
from tests.agent.capture.test_capture_walk import block, frame_record


@pytest.fixture(scope="module")
def c_cache():
    """Skips the module's C tests where the walker was not built at install (no compiler)."""
    try:
        cwalk.CWalker()
    except cwalk.BuildError as exc:
        pytest.skip(f"the C walker is not installed here: {exc}")


def encoded(cols, t0: int, t1: int) -> bytes:
    return encode_batch(Batch(kind="frame", site="local", host="h1", run="0123456789abcdef",
                              seq=3, t0=t0, t1=t1, events=cols,
                              fields={"agent": "t", "iface": "veth0", "worker": 1,
                                      "first_frame": 0, "hwtstamp": {"filter": None}}))


def both(mem, offsets: list[int], queue: int | None, cache) -> tuple:
    """Walk ``offsets`` of ``mem`` with each walker; assert they agree; return the C result."""
    results = []
    for walker in (PythonWalker(), cwalk.CWalker()):
        infos = [walker.walk(mem, off) for off in offsets]
        taken = walker.take(queue) if len(walker) else None
        assert len(walker) == 0
        results.append((infos, taken))
    (py_infos, py_taken), (c_infos, c_taken) = results
    assert c_infos == py_infos
    assert (py_taken is None) == (c_taken is None)
    if py_taken is not None:
        py_cols, py_t0, py_t1 = py_taken
        c_cols, c_t0, c_t1 = c_taken
        assert isinstance(c_cols, PackedColumns) and c_cols.rows == len(py_cols["ts"])
        assert (c_t0, c_t1) == (py_t0, py_t1)
        assert list(c_cols) == list(py_cols)
        assert dict(c_cols) == py_cols
        assert encoded(c_cols, c_t0, c_t1) == encoded(py_cols, py_t0, py_t1)
    return c_infos, c_taken


def rec(data: bytes, i: int = 0, **kw) -> bytes:
    args = dict(sec=1_700_000_000 + i, nsec=i * 7919, status=TP_STATUS_USER | TP_STATUS_TS_SOFTWARE,
                pkttype=0, rxhash=i * 0x9E3779B1 & 0xFFFFFFFF, tci=0, wire=len(data), snap=96,
                last=False)
    args.update(kw)
    return frame_record(data, **args)


HBH = bytes([44, 0]) + b"\0" * 6
FRAG_FIRST = bytes([17, 0, 0, 0]) + struct.pack("!I", 777)
FRAG_LATER = bytes([6, 0]) + struct.pack("!H", 8 << 3) + struct.pack("!I", 9)
FRAG_8_BYTES = bytes([17, 0]) + struct.pack("!HI", 1 << 3, 10)    # offset 1 (in 8-byte units)
FRAG_MORE = bytes([17, 0]) + struct.pack("!HI", 1, 11)            # offset 0, M set: has ports

CASES = {
    "ipv4 tcp": eth(0x0800, ipv4(6, TCP)),
    "ipv4 udp": eth(0x0800, ipv4(17, UDP, ident=99)),
    "ipv4 first fragment": eth(0x0800, ipv4(17, UDP + b"p" * 20, frag=0x2000)),
    "ipv4 later fragment": eth(0x0800, ipv4(17, UDP + b"p" * 20, frag=0x0004)),
    "ipv4 icmp": eth(0x0800, ipv4(1, b"\x08\x00" + b"i" * 30)),
    "ipv4 options": eth(0x0800, ipv4(6, TCP, ihl=6)),
    "ipv4 ihl < 5": eth(0x0800, ipv4(6, TCP, ihl=3)),
    "ipv4 ihl 4": eth(0x0800, bytes([0x44]) + ipv4(6, TCP)[1:]),
    "ipv4 sctp": eth(0x0800, ipv4(132, UDP + b"s" * 8)),
    "vlan tcp": eth(0x0800, ipv4(6, TCP), vlans=(5,)),
    "two vlans udp options": eth(0x0800, ipv4(17, UDP, ihl=7), vlans=(100, 200)),
    "ipv6 hbh + first fragment udp": eth(0x86DD, ipv6(0, HBH + FRAG_FIRST + UDP)),
    "ipv6 later fragment": eth(0x86DD, ipv6(44, FRAG_LATER + TCP)),
    "ipv6 fragment at 8 bytes": eth(0x86DD, ipv6(44, FRAG_8_BYTES + UDP)),
    "ipv6 first fragment, more": eth(0x86DD, ipv6(60, bytes([44, 1]) + b"d" * 14 + FRAG_MORE + UDP)),
    "ipv4 fragment at 8 bytes": eth(0x0800, ipv4(17, UDP, frag=0x0001)),
    "ipv4 reserved+DF flags, offset 0": eth(0x0800, ipv4(17, UDP, frag=0xC000)),
    "ipv6 first fragment, then options": eth(0x86DD, ipv6(44, bytes([60, 0, 0, 0]) + b"\0" * 4
                                                           + bytes([6, 1]) + b"o" * 14 + TCP)),
    "ipv6 tcp": eth(0x86DD, ipv6(6, TCP)),
    "ipv4 udp, 300 bytes (bin8 -> bin16 heads)": eth(0x0800, ipv4(17, UDP + b"L" * 264)),
    "ipv6 udplite": eth(0x86DD, ipv6(136, UDP)),
    "arp": eth(0x0806, b"\0" * 28),
    "runt": b"\x01\x02\x03",
}


def test_golden_cases_with_every_snap_length(c_cache):
    """Each case at each truncation (the short snap lengths the parser must survive), in one
    block with the ring's status bits, VLAN tags and large timestamps/hashes."""
    for name, data in CASES.items():
        recs = [rec(data, i, snap=snap,
                    status=TP_STATUS_USER | (TP_STATUS_TS_RAW_HARDWARE if i % 3 == 0 else 0)
                    | (TP_STATUS_VLAN_VALID if i % 2 else 0), tci=i * 37, pkttype=i % 8)
                for i, snap in enumerate(range(1, len(data) + 1))]
        for part in range(0, len(recs), 20):
            chunk = recs[part:part + 20]
            mem = block(chunk, seq=part + 1, status=TP_STATUS_USER | TP_STATUS_LOSING, size=8192)
            infos, _ = both(mem, [0], None, c_cache)
            assert infos[0].walked == len(chunk), name


def test_ring_memory_two_blocks_queue_and_a_bad_next_offset(c_cache):
    """An mmap as the ring is (the from_buffer path), a batch over two blocks, a queue column,
    and tp_next_offset pointing past the buffer ending the second block's walk early."""
    frames = [rec(d, i) for i, d in enumerate(CASES.values())]
    bad = bytearray(frames[3])
    struct.pack_into("=I", bad, 0, 1 << 20)
    second = frames[:3] + [bytes(bad)] + frames[4:6]
    size = 8192
    raw = block(frames[:8], seq=7, size=size) + block(second, seq=8, size=size)
    with mmap.mmap(-1, len(raw)) as mm:
        mm[:] = raw
        infos, taken = both(mm, [0, size], 5, c_cache)
    assert [i.walked for i in infos] == [8, 4] and infos[1].num_pkts == 6
    assert taken[0]["queue"] == [5] * 12


def test_empty_block_and_descriptor_outside_the_buffer(c_cache):
    infos, taken = both(block([], seq=5), [0], None, c_cache)
    assert infos[0].walked == 0 and infos[0].first_ts is None and taken is None
    for walker in (PythonWalker(), cwalk.CWalker()):
        with pytest.raises(struct.error):
            walker.walk(b"\0" * 40, 0)


def test_head_clipped_by_the_end_of_the_buffer(c_cache):
    """The IPv4 fast path with a snap length that promises more than the buffer holds ends the
    walk in the Python walker (struct.error); the C walker must stop at the same frame."""
    data = eth(0x0800, ipv4(17, UDP + b"u" * 40))
    recs = [rec(data, 0), rec(data, 1), rec(data, 2, last=True)]
    mem = block(recs, seq=1)
    third = BLOCK_DESC.size + len(recs[0]) + len(recs[1])
    for cut in range(third - 2, third + 82 + len(data) + 2):
        infos, _ = both(mem[:cut], [0], None, c_cache)  # every byte of header and head
        head = cut - third - 82  # bytes of the third head inside the buffer
        clipped = cut < third + 59 or 15 <= head < 42  # header, or the fast path's 14 + 28
        assert infos[0].walked == (2 if clipped else 3)
    infos, _ = both(mem[:BLOCK_DESC.size + 3], [0], None, c_cache)
    assert infos[0].walked == 0 and infos[0].num_pkts == 3


# --- randomized frames ----------------------------------------------------------------------

_u8 = st.integers(0, 255)
_u16 = st.integers(0, 0xFFFF)
_u32 = st.integers(0, 0xFFFFFFFF)


@st.composite
def frames(draw) -> bytes:
    """Ethernet frames that reach every branch of parse_l3l4, with random field values."""
    vlans = tuple(draw(st.lists(_u16, max_size=2)))
    kind = draw(st.sampled_from(["ipv4", "ipv6", "other", "raw"]))
    payload = draw(st.binary(max_size=48))
    proto = draw(st.sampled_from([6, 17, 132, 136, 1, 58]) | _u8)
    if kind == "raw":
        return draw(st.binary(max_size=120))
    if kind == "ipv4":
        ihl = draw(st.sampled_from([5, 5, 5, 6, 15]) | st.integers(0, 15))
        frag = draw(st.sampled_from([0, 0, 0x4000, 0x2000, 0x0001, 0x1FFF, 0xE000]) | _u16)
        body = ipv4(proto, payload, ident=draw(_u16), frag=frag, ihl=max(ihl, 5))
        if ihl < 5:
            body = bytes([0x40 | ihl]) + body[1:]
        et = 0x0800
    elif kind == "ipv6":
        chain = draw(st.lists(st.sampled_from([0, 43, 60, 44]), max_size=3))
        rest = b""
        for i, nh in enumerate(chain):
            nxt = chain[i + 1] if i + 1 < len(chain) else proto
            if nh == 44:
                off = draw(st.sampled_from([0, 1, 8, 9, 0xFFF8, 0xFFF9]) | _u16)
                rest += bytes([nxt, 0]) + struct.pack("!HI", off, draw(_u32))
            else:
                extra = draw(st.integers(0, 1))
                rest += bytes([nxt, extra]) + draw(st.binary(min_size=6 + 8 * extra,
                                                             max_size=6 + 8 * extra))
        body = ipv6(chain[0] if chain else proto, rest + payload)
        et = 0x86DD
    else:
        body, et = payload, draw(_u16)
    tags = b"".join(struct.pack("!HH", draw(st.sampled_from([0x8100, 0x88A8])), v) for v in vlans)
    return eth(et, body)[:12] + tags + eth(et, body)[12:]


@st.composite
def records(draw) -> bytes:
    data = draw(frames())
    return frame_record(data, sec=draw(_u32), nsec=draw(st.integers(0, 999_999_999)),
                        status=draw(_u32), pkttype=draw(_u8), rxhash=draw(_u32),
                        tci=draw(_u32), wire=draw(_u32),
                        snap=draw(st.integers(0, max(len(data), 1))), last=False)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recs=st.lists(records(), max_size=12), cut=st.integers(0, 100),
       bad_next=st.none() | st.tuples(st.integers(0, 11), _u32), queue=st.none() | _u8,
       ring=st.booleans())
def test_random_frames_truncations_and_offsets(c_cache, recs, cut, bad_next, queue, ring):
    recs = list(recs)
    if bad_next and bad_next[0] < len(recs):
        r = bytearray(recs[bad_next[0]])
        struct.pack_into("=I", r, 0, bad_next[1])
        recs[bad_next[0]] = bytes(r)
    mem = block(recs, seq=9, size=max(4096, BLOCK_DESC.size + sum(map(len, recs))))
    used = BLOCK_DESC.size + sum(map(len, recs))
    if cut < 100:  # the buffer ends somewhere inside the block's frames
        mem = mem[:BLOCK_DESC.size + (used - BLOCK_DESC.size) * cut // 100]
    both(bytearray(mem) if ring else mem, [0], queue, c_cache)


# --- choosing the walker --------------------------------------------------------------------

def test_falls_back_to_python_when_not_installed_and_c_then_refuses(monkeypatch):
    monkeypatch.setattr(cwalk, "_lib", None)
    monkeypatch.setattr(cwalk, "EXTENSION", "_not_installed")
    walker, why, fallback = cwalk.open_walker("auto")
    assert isinstance(walker, PythonWalker) and fallback
    assert "not built when netevents was installed" in why and "pure-Python" in why
    assert "\n" not in why
    with pytest.raises(CapabilityError, match="C block walker: not built when"):
        cwalk.open_walker("c")


def test_a_library_built_from_another_walker_c_is_refused(c_cache, tmp_path, monkeypatch):
    lib = cwalk.library_path()
    shutil.copy(lib, tmp_path / lib.name)
    edited = tmp_path / "walker.c"
    edited.write_bytes(cwalk.SOURCE.read_bytes() + b"\n/* edited */\n")
    monkeypatch.setattr(cwalk, "_lib", None)
    monkeypatch.setattr(cwalk, "SOURCE", edited)
    walker, why, fallback = cwalk.open_walker("auto")
    assert isinstance(walker, PythonWalker) and fallback
    assert "built from another walker.c" in why and "pip install -e ." in why
    edited.write_bytes((lib.parent / "walker.c").read_bytes())  # the source it was built from
    assert isinstance(cwalk.open_walker("auto")[0], cwalk.CWalker)


def test_forcing_python_by_option_or_environment(c_cache, monkeypatch):
    walker, why, fallback = cwalk.open_walker("python")
    assert isinstance(walker, PythonWalker) and not fallback and why
    monkeypatch.setenv(cwalk.WALKER_ENV, "python")
    assert isinstance(cwalk.open_walker("auto")[0], PythonWalker)
    assert isinstance(cwalk.open_walker("c")[0], cwalk.CWalker)  # option wins
    monkeypatch.setenv(cwalk.WALKER_ENV, "c")
    assert isinstance(cwalk.open_walker("auto")[0], cwalk.CWalker)
    with pytest.raises(ValueError, match="walker 'fast'"):
        cwalk.open_walker("fast")


def test_walker_option_is_validated():
    assert capture_config({"iface": "eth0", "walker": "python"}).walker == "python"
    with pytest.raises(ConfigError, match="capture walker 'fast'"):
        capture_config({"iface": "eth0", "walker": "fast"})


def test_packed_columns_decode_to_the_batch_they_encode(c_cache):
    walker = cwalk.CWalker()
    walker.walk(block([rec(CASES["ipv4 tcp"], 1), rec(CASES["arp"], 2, last=True)], seq=1), 0)
    cols, t0, t1 = walker.take(None)
    back = decode_batch(encoded(cols, t0, t1))
    assert len(back) == 2 and back.events == dict(cols)
    assert back.events["ethertype"] == [0x0800, 0x0806] and back.events["sport"] == [40000, None]

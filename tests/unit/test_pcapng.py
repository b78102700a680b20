"""PcapNG writer and reader: exact encodings, round trips, truncated files, and what tshark sees."""

from __future__ import annotations

import shutil
import struct
import subprocess

import pytest

from netevents.pcapng import (
    BT_EPB,
    BT_IDB,
    BT_ISB,
    BT_SHB,
    HASH_TOEPLITZ,
    EnhancedPacket,
    InterfaceDescription,
    InterfaceStatistics,
    PcapngFormatError,
    PcapngWriter,
    SectionHeader,
    iter_packets,
    pkttype_flags,
    read_pcapng,
)
from tests.framegen import T0, eth_ipv4_udp

needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None or shutil.which("capinfos") is None,
                                  reason="needs tshark and capinfos (Debian package tshark)")


def _blocks(data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        btype, total = struct.unpack_from("<II", data, pos)
        assert struct.unpack_from("<I", data, pos + total - 4)[0] == total
        out.append((btype, data[pos:pos + total]))
        pos += total
    return out


def test_shb_encoding_exact():
    w = PcapngWriter(userappl="ab")
    data = w.take()
    # type, len 40, BOM, 1.0, section length -1, shb_userappl "ab" padded, endofopt, len
    assert data == bytes.fromhex(
        "0a0d0d0a" "28000000" "4d3c2b1a" "0100" "0000" "ffffffffffffffff"
        "0400" "0200" "61620000" "00000000" "28000000")


def test_idb_encoding_exact():
    w = PcapngWriter()
    w.take()
    assert w.add_interface("eth0", description="h1", hardware="x", snaplen=96) == 0
    (btype, blk), = _blocks(w.take())
    assert btype == BT_IDB
    assert blk == bytes.fromhex(
        "01000000" "38000000" "0100" "0000" "60000000"
        "0200" "0400" "65746830"            # if_name eth0
        "0300" "0200" "68310000"            # if_description h1
        "0900" "0100" "09000000"            # if_tsresol 9 (nanoseconds)
        "0f00" "0100" "78000000"            # if_hardware x
        "00000000" "38000000")


def test_epb_encoding_exact_all_options():
    w = PcapngWriter()
    w.add_interface("eth0")
    w.take()
    ts = 0x0123456789ABCDEF
    w.packet(0, ts, b"\xaa\xbb\xcc", 60, flags=pkttype_flags(2), dropcount=7, queue=3,
             rxhash=0xDEADBEEF, packetid=0x1122334455667788, comment="x")
    (btype, blk), = _blocks(w.take())
    assert btype == BT_EPB
    expect = (struct.pack("<IIIIIII", 6, len(blk), 0, 0x01234567, 0x89ABCDEF, 3, 60)
              + b"\xaa\xbb\xcc\x00"
              + bytes.fromhex("0100" "0100" "78000000")                 # opt_comment "x"
              + bytes.fromhex("0200" "0400" "09000000")                 # epb_flags inbound|multicast
              + bytes.fromhex("0300" "0500" "05efbeadde000000")         # epb_hash Toeplitz
              + bytes.fromhex("0400" "0800" "0700000000000000")         # epb_dropcount 7
              + bytes.fromhex("0500" "0800" "8877665544332211")         # epb_packetid
              + bytes.fromhex("0600" "0400" "03000000")                 # epb_queue 3
              + bytes.fromhex("00000000")
              + struct.pack("<I", len(blk)))
    assert blk == expect
    assert HASH_TOEPLITZ == 5


def test_fast_path_equals_general_path():
    """frames() (hot loop, precompiled option tails) encodes exactly what packet() encodes."""
    fast, slow = PcapngWriter(), PcapngWriter()
    for w in (fast, slow):
        w.add_interface("eth0", snaplen=96)
        w.take()
    rows = []
    for i in range(40):
        head, wire = eth_ipv4_udp(i)
        head = head[: 60 + i % 4]           # every padding length
        rows.append((T0 + i * 7, head, wire, i % 8, None if i % 3 == 0 else i % 5,
                     0 if i % 4 == 0 else 0x9E3779B9 * i & 0xFFFFFFFF))
    ts, heads, lens, dirs, queues, hashes = (list(c) for c in zip(*rows, strict=True))
    fast.frames(0, ts, heads, lens, dirs, queues, hashes, packetid_base=1000, first_frame=5,
                specials={3: (9, "gap here")})
    for i, (t, h, ln, d, q, rh) in enumerate(rows):
        slow.packet(0, t, h, ln, flags=pkttype_flags(d), queue=q, rxhash=rh, packetid=1005 + i,
                    dropcount=9 if i == 3 else None, comment="gap here" if i == 3 else None)
    assert fast.take() == slow.take()
    assert fast.packets == slow.packets == 40


def _rows(n: int, caplen, queue, rxhash, wire=None, d=None) -> list[tuple]:
    rows = []
    for i in range(n):
        head, w = eth_ipv4_udp(i, snap=200)
        rows.append((T0 + i * 1733, head[:caplen(i)], w if wire is None else wire(i),
                     i % 9 if d is None else d(i), queue(i), rxhash(i)))
    return rows


RUN_CASES = {
    # name: (rows, whole columns at a time for all of them?)
    "uniform 96, queue + hash": (_rows(300, lambda i: 96, lambda i: i % 4, lambda i: i * 7 + 1), True),
    "uniform 61 (padding), no queue": (_rows(100, lambda i: 61, lambda i: None, lambda i: i + 1), True),
    "uniform 66, no hash": (_rows(100, lambda i: 66, lambda i: 3, lambda i: 0), True),
    "uniform 96, neither": (_rows(100, lambda i: 96, lambda i: None, lambda i: None), True),
    "empty heads": (_rows(40, lambda i: 0, lambda i: 1, lambda i: 5), True),
    "runs of 60/96 and short runs": (_rows(400, lambda i: 96 if (i // 50) % 2 else (60 if i < 300 else 60 + i % 3),
                                           lambda i: 1, lambda i: 9), False),
    "mixed shapes": (_rows(100, lambda i: 96, lambda i: None if i % 7 == 0 else 2, lambda i: i % 5), False),
    "values to mask": (_rows(100, lambda i: 96, lambda i: (1 << 33) + i if i == 50 else i, lambda i: 1), False),
    "wire below caplen, None": (_rows(100, lambda i: 96, lambda i: 0, lambda i: 1,
                                      wire=lambda i: 10 if i == 5 else (None if i == 9 else 300)), False),
    "directions outside the table": (_rows(100, lambda i: 96, lambda i: 0, lambda i: 1,
                                           d=lambda i: (8, 99, 255, 4)[i % 4]), True),
    "directions None, negative": (_rows(100, lambda i: 96, lambda i: 0, lambda i: 1,
                                        d=lambda i: (None, -1, 300, 4)[i % 4]), False),
}


@pytest.mark.parametrize("case", RUN_CASES)
def test_columns_at_a_time_equal_block_by_block(case, monkeypatch):
    """frames() over runs of equal-length heads (pcapng_columns: whole columns written into a
    repeated template) gives exactly the bytes of packet() per frame, specials and all."""
    import netevents.pcapng_columns as pc

    rows, all_runs = RUN_CASES[case]
    calls = []
    blocks = pc._blocks
    monkeypatch.setattr(pc, "_blocks", lambda *a: (calls.append(a[9:11]), blocks(*a))[1])
    fast, slow = PcapngWriter(), PcapngWriter()
    for w in (fast, slow):
        w.add_interface("eth0", snaplen=96)
        w.take()
    ts, heads, lens, dirs, queues, hashes = (list(c) for c in zip(*rows, strict=True))
    base = 1 << 40 if all_runs else (1 << 64) - 150  # else packet ids wrap inside the batch
    special = {0: (4, "first"), 70: (2, None)} if len(rows) > 70 else {}
    fast.frames(0, ts, heads, lens, dirs, queues, hashes, packetid_base=base, first_frame=3,
                specials=special)
    for i, (t, h, ln, d, q, rh) in enumerate(rows):
        drop, comment = special.get(i, (None, None))
        slow.packet(0, t, h, ln, flags=pkttype_flags(d), queue=q, rxhash=rh,
                    packetid=(base + 3 + i) & ((1 << 64) - 1), dropcount=drop, comment=comment)
    assert fast.take() == slow.take()
    assert fast.packets == slow.packets == len(rows)
    if pc.RUNS and all_runs:
        assert all(lo == hi for lo, hi in calls), calls  # no row went block by block


def test_pkttype_to_flags():
    assert pkttype_flags(0) == 0b00101       # inbound unicast
    assert pkttype_flags(1) == 0b01101       # inbound broadcast
    assert pkttype_flags(2) == 0b01001       # inbound multicast
    assert pkttype_flags(3) == 0b10001       # inbound promiscuous
    assert pkttype_flags(4) == 0b00010       # outbound
    assert pkttype_flags(5) == pkttype_flags(99) == pkttype_flags(None) == 0


def _sample() -> bytes:
    w = PcapngWriter(userappl="netevents test", comment="section")
    a = w.add_interface("eth0", description="host-a", hardware="worker 0", snaplen=96)
    b = w.add_interface("eth1", description="host-b", snaplen=128)
    w.frames(a, [T0, T0 + 1], [b"\x01" * 61, b"\x02" * 62], [100, 101], [0, 4], [0, 0],
             [5, 6], packetid_base=0, first_frame=10)
    w.packet(b, T0 + 2, b"\x03" * 63, 200, dropcount=40, comment="after gap")
    w.statistics(a, T0 + 3, ifrecv=2, ifdrop=0, osdrop=0, starttime=T0, endtime=T0 + 1)
    return w.take()


def test_round_trip_through_reader():
    r = read_pcapng(_sample())
    assert not r.truncated
    assert [type(b) for b in r.blocks] == [SectionHeader, InterfaceDescription, InterfaceDescription,
                                           EnhancedPacket, EnhancedPacket, EnhancedPacket,
                                           InterfaceStatistics]
    shb = r.blocks[0]
    assert shb.type == BT_SHB and shb.opt(4) == b"netevents test" and shb.opt(1) == b"section"
    idbs = r.of(InterfaceDescription)
    assert [(i.name, i.description, i.snaplen, i.tsresol) for i in idbs] == [
        ("eth0", "host-a", 96, 9), ("eth1", "host-b", 128, 9)]
    assert idbs[0].hardware == "worker 0"
    pk = list(iter_packets(r))
    assert [(i.name, p.timestamp, p.caplen, p.orig_len, p.packetid) for i, p in pk] == [
        ("eth0", T0, 61, 100, 10), ("eth0", T0 + 1, 62, 101, 11), ("eth1", T0 + 2, 63, 200, None)]
    assert pk[0][1].flags == 5 and pk[1][1].flags == 2 and pk[0][1].queue == 0
    assert pk[0][1].hash == (5, struct.pack("<I", 5))
    assert pk[2][1].dropcount == 40 and pk[2][1].comments == ["after gap"]
    assert pk[1][1].data == b"\x02" * 62
    isb, = r.of(InterfaceStatistics)
    assert isb.type == BT_ISB
    assert isb.counters == {"starttime": T0, "endtime": T0 + 1, "ifrecv": 2, "ifdrop": 0, "osdrop": 0}


def test_truncated_file_reads_up_to_last_complete_block():
    data = _sample()
    full = read_pcapng(data)
    cut = full.blocks[5].offset + 17           # inside the third EPB
    r = read_pcapng(data[:cut])
    assert r.truncated and r.trailing == 17
    assert len(r.of(EnhancedPacket)) == 2


def test_reader_rejects_garbage_with_a_clear_error():
    with pytest.raises(PcapngFormatError, match="Section Header Block"):
        read_pcapng(b"\xd4\xc3\xb2\xa1" + bytes(40))   # a classic pcap header
    bad = bytearray(_sample())
    struct.pack_into("<I", bad, 4, 999)                # SHB length not a multiple of 4
    with pytest.raises(PcapngFormatError, match="invalid length"):
        read_pcapng(bytes(bad))


def test_packet_for_unknown_interface_raises():
    w = PcapngWriter()
    with pytest.raises(ValueError, match="interface id 0"):
        w.packet(0, T0, b"x")


# ---------------------------------------------------------------------------------------------
# What Wireshark's tools make of it

def _tshark(path, *fields: str, extra: tuple[str, ...] = ()) -> list[list[str]]:
    cmd = ["tshark", "-r", str(path), "-T", "fields", "-E", "separator=|", *extra]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [line.split("|") for line in out.splitlines()]


@needs_tshark
def test_tshark_reads_options(tmp_path):
    w = PcapngWriter(userappl="netevents test")
    a = w.add_interface("eth0", description="host-a", snaplen=96)
    heads, lens = zip(*(eth_ipv4_udp(i) for i in range(6)), strict=True)
    ts = [T0 + i * 1_000_000_001 for i in range(6)]   # nanosecond digits that must survive
    w.frames(a, ts[:3], heads[:3], lens[:3], [0, 1, 4], [2, 2, 2], [7, 8, 9], 1 << 40, 0)
    w.frames(a, ts[3:], heads[3:], lens[3:], [0, 0, 0], [2, 2, 2], [7, 8, 9], 1 << 40, 3,
             specials={0: (40, "capture gap: 40 frames lost between frame 2 and 3")})
    path = tmp_path / "t.pcapng"
    path.write_bytes(w.take())
    rows = _tshark(path, "frame.time_epoch", "frame.drop_count", "frame.interface_name",
                   "frame.interface_description", "frame.packet_id", "frame.interface_queue",
                   "frame.packet_flags_direction", "frame.packet_flags_reception_type",
                   "frame.comment", "udp.srcport", "frame.len", "frame.cap_len")
    assert len(rows) == 6
    for i, r in enumerate(rows):
        sec, ns = divmod(ts[i], 10**9)
        assert r[0] == f"{sec}.{ns:09d}"          # nanosecond timestamps exact
        assert r[2:4] == ["eth0", "host-a"]
        assert int(r[4]) == (1 << 40) + i
        assert r[5] == "2"
        assert r[9] == str(1024 + i)
        assert (int(r[10]), int(r[11])) == (lens[i], 96)
    assert [r[1] for r in rows] == ["", "", "", "40", "", ""]
    assert [int(r[6], 16) for r in rows[:3]] == [1, 1, 2]
    assert [r[7] for r in rows[:3]] == ["1", "3", "0"]
    assert "40 frames lost" in rows[3][8]


@needs_tshark
def test_capinfos_counts_packets_and_reads_isb(tmp_path):
    path = tmp_path / "s.pcapng"
    path.write_bytes(_sample())
    out = subprocess.run(["capinfos", "-c", "-M", str(path)], check=True, capture_output=True,
                         text=True).stdout
    assert "Number of packets:   3" in out
    out = subprocess.run(["capinfos", str(path)], check=True, capture_output=True, text=True).stdout
    assert "Number of interfaces in file: 2" in out and "Time precision = nanoseconds (9)" in out
    assert "Number of stat entries = 1" in out


def test_counters_above_u64_saturate_instead_of_raising():
    """Two accepted gap records of 2**63 lost each sum past u64 (found by the survival test):
    the ISB and EPB fields saturate at 2**64 - 1 rather than ending the archive."""
    w = PcapngWriter()
    w.add_interface("eth0", snaplen=96)
    w.packet(0, 1, b"x" * 60, dropcount=2 ** 64)
    w.statistics(0, 2, ifdrop=2 ** 64, osdrop=2 ** 65)
    raw = w.take()
    after_shb = raw[int.from_bytes(raw[4:8], "little"):]  # the SHB's section length is -1 too
    assert after_shb.count((2 ** 64 - 1).to_bytes(8, "little")) == 3

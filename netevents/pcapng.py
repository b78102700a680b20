"""Sans-IO PcapNG: a block writer written for speed, and the small reader tests and ``verify`` use.

Block and option layouts follow draft-ietf-opsawg-pcapng (the PcapNG capture file format):

    SHB  Section Header Block          0x0A0D0D0A  byte-order magic, version 1.0, section length -1
    IDB  Interface Description Block   0x00000001  link type, snaplen; if_name, if_description, ...
    EPB  Enhanced Packet Block         0x00000006  interface id, 64-bit timestamp, caplen, len, data
    ISB  Interface Statistics Block    0x00000005  interface id, timestamp; isb_* counters

The writer never touches a file: every method appends encoded blocks to an internal
``bytearray`` and :meth:`PcapngWriter.take` hands the accumulated bytes to the caller, who
writes them in one system call per batch (the archive consumer flushes once per bus batch).
All blocks are little-endian (the section's byte order is whatever the SHB says; readers swap).

Not used on purpose: ``epb_verdict`` (editcap 4.0 corrupts it when rewriting files) and Custom
Blocks between packets (tshark counts them as frames).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import CodecError
from .pcapng_columns import encode_frames

# -- block types (draft-ietf-opsawg-pcapng, "Block Types") ------------------------------------
BT_SHB = 0x0A0D0D0A
BT_IDB = 0x00000001
BT_ISB = 0x00000005
BT_EPB = 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D

LINKTYPE_ETHERNET = 1  # LINKTYPE_ETHERNET (DLT_EN10MB), tcpdump.org link-layer header types

# -- option codes ---------------------------------------------------------------------------
OPT_ENDOFOPT = 0
OPT_COMMENT = 1
SHB_HARDWARE = 2
SHB_OS = 3
SHB_USERAPPL = 4
IF_NAME = 2
IF_DESCRIPTION = 3
IF_TSRESOL = 9
IF_HARDWARE = 15
EPB_FLAGS = 2
EPB_HASH = 3
EPB_DROPCOUNT = 4
EPB_PACKETID = 5
EPB_QUEUE = 6
ISB_STARTTIME = 2
ISB_ENDTIME = 3
ISB_IFRECV = 4
ISB_IFDROP = 5
ISB_FILTERACCEPT = 6
ISB_OSDROP = 7
ISB_USRDELIV = 8

# epb_hash algorithm codes ("Hash Algorithms" registry of the draft):
# 0 two's complement, 1 XOR, 2 CRC32, 3 MD-5, 4 SHA-1, 5 Toeplitz.
HASH_TOEPLITZ = 5
# The rxhash a TPACKET_V3 ring reports (tp_rxhash = skb->hash) is, on a multi-queue NIC, the
# RSS hash the hardware computed to pick the receive queue -- a Toeplitz hash: that is what the
# field exists to record (it explains the queue/fanout choice). When no NIC hash exists the
# kernel fills in its own software flow hash (siphash over the flow keys), for which the
# registry has no code; Toeplitz is still the right label for the common multi-queue case and
# the value is kept verbatim either way. A zero rxhash means "no hash" and is not written.
RXHASH_ALGORITHM = HASH_TOEPLITZ

# -- epb_flags (draft: "Enhanced Packet Block Flags Word") -----------------------------------
# bits 0-1 direction: 0 unknown, 1 inbound, 2 outbound
# bits 2-4 reception type: 0 unspecified, 1 unicast, 2 multicast, 3 broadcast, 4 promiscuous
FLAG_INBOUND = 0x1
FLAG_OUTBOUND = 0x2
RX_UNICAST = 1 << 2
RX_MULTICAST = 2 << 2
RX_BROADCAST = 3 << 2
RX_PROMISCUOUS = 4 << 2

# sll_pkttype values (include/uapi/linux/if_packet.h: PACKET_HOST ... PACKET_KERNEL) -> epb_flags.
# PACKET_OTHERHOST is a frame for another host that we saw because the interface is promiscuous.
# PACKET_LOOPBACK/USER/KERNEL carry no wire direction: flags 0 (unknown).
PKTTYPE_FLAGS: tuple[int, ...] = (
    FLAG_INBOUND | RX_UNICAST,       # 0 PACKET_HOST
    FLAG_INBOUND | RX_BROADCAST,     # 1 PACKET_BROADCAST
    FLAG_INBOUND | RX_MULTICAST,     # 2 PACKET_MULTICAST
    FLAG_INBOUND | RX_PROMISCUOUS,   # 3 PACKET_OTHERHOST
    FLAG_OUTBOUND,                   # 4 PACKET_OUTGOING
    0, 0, 0,                         # 5 PACKET_LOOPBACK, 6 PACKET_USER, 7 PACKET_KERNEL
)


def pkttype_flags(pkttype: int | None) -> int:
    """epb_flags for an ``sll_pkttype``; 0 (direction unknown) for anything else."""
    if pkttype is None or not 0 <= pkttype < len(PKTTYPE_FLAGS):
        return 0
    return PKTTYPE_FLAGS[pkttype]


# -- precompiled layouts ----------------------------------------------------------------------
# Every fixed-size piece is one precompiled struct.Struct so a block costs a few C calls.
_U32 = struct.Struct("<I")
_BLOCK_HEAD = struct.Struct("<II")                 # block type, total length
_SHB_BODY = struct.Struct("<IHHq")                 # magic, major, minor, section length
_IDB_BODY = struct.Struct("<HHI")                  # link type, reserved, snaplen
_EPB_HEAD = struct.Struct("<IIIIIII")              # type, len, if id, ts hi, ts lo, caplen, orig len
_ISB_HEAD = struct.Struct("<IIIII")                # type, len, if id, ts hi, ts lo
_OPT_HEAD = struct.Struct("<HH")
_OPT_U32 = struct.Struct("<HHI")
_OPT_U64 = struct.Struct("<HHQ")
_OPT_TS = struct.Struct("<HHII")                   # 64-bit timestamp as high, low 32-bit words
_OPT_HASH = struct.Struct("<HHBI3x")               # algorithm octet + 32-bit hash, padded to 8
_END_AND_LEN = struct.Struct("<HHI")               # opt_endofopt + trailing block length
_OPT_END = b"\0\0\0\0"
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")            # indexed by length & 3
_U64_MASK = (1 << 64) - 1

def _opt_bytes(code: int, value: bytes) -> bytes:
    return _OPT_HEAD.pack(code, len(value)) + value + _PAD[len(value) & 3]


def _opt_str(code: int, text: str) -> bytes:
    return _opt_bytes(code, text.encode("utf-8", "replace")[:0xFFFF])


def _block(block_type: int, body: bytes) -> bytes:
    """A complete block: type, total length, body (already padded to 32 bits), total length."""
    total = 12 + len(body)
    return _BLOCK_HEAD.pack(block_type, total) + body + _U32.pack(total)


@dataclass(slots=True)
class InterfaceInfo:
    """What an IDB said; the writer keeps one per interface id."""

    name: str
    description: str | None = None
    hardware: str | None = None
    snaplen: int = 0
    linktype: int = LINKTYPE_ETHERNET


class PcapngWriter:
    """Encodes one PcapNG section into an internal buffer; :meth:`take` returns the bytes.

    Usage::

        w = PcapngWriter(userappl="netevents 0.1")      # SHB is buffered immediately
        eth0 = w.add_interface("eth0", description="host-a", snaplen=96)
        w.packet(eth0, ts_ns, frame_bytes, orig_len=1514, flags=pkttype_flags(0))
        out.write(w.take())

    Raises:
        ValueError: on a packet for an interface id that was never added, or a value that
            does not fit its field (negative counts, a caplen over 4 GiB).
    """

    def __init__(self, *, userappl: str | None = None, hardware: str | None = None,
                 os: str | None = None, comment: str | None = None) -> None:
        self.buf = bytearray()
        self._chunks: list = []  # whole runs of blocks made elsewhere, ahead of ``buf``
        self.interfaces: list[InterfaceInfo] = []
        self.packets = 0
        self._section(userappl, hardware, os, comment)

    @classmethod
    def continuing(cls, interfaces: list[InterfaceInfo]) -> PcapngWriter:
        """A writer that appends to an existing section (no SHB) whose IDBs are ``interfaces``,
        e.g. to add the ISBs of a file another process left unclosed."""
        w = cls.__new__(cls)
        w.buf = bytearray()
        w._chunks = []
        w.interfaces = list(interfaces)
        w.packets = 0
        return w

    # -- section / interfaces ----------------------------------------------------------------
    def _section(self, userappl: str | None, hardware: str | None, os: str | None,
                 comment: str | None) -> None:
        opts = b""
        if comment:
            opts += _opt_str(OPT_COMMENT, comment)
        if hardware:
            opts += _opt_str(SHB_HARDWARE, hardware)
        if os:
            opts += _opt_str(SHB_OS, os)
        if userappl:
            opts += _opt_str(SHB_USERAPPL, userappl)
        if opts:
            opts += _OPT_END
        # Section length -1: "not specified" -- we append to the section as we go.
        self.buf += _block(BT_SHB, _SHB_BODY.pack(BYTE_ORDER_MAGIC, 1, 0, -1) + opts)

    def add_interface(self, name: str, *, description: str | None = None,
                      hardware: str | None = None, snaplen: int = 0,
                      linktype: int = LINKTYPE_ETHERNET, comment: str | None = None) -> int:
        """Buffer an IDB with ``if_tsresol`` = 9 (nanoseconds); returns its interface id."""
        opts = _opt_str(IF_NAME, name)
        if description:
            opts += _opt_str(IF_DESCRIPTION, description)
        opts += _OPT_HEAD.pack(IF_TSRESOL, 1) + b"\x09\0\0\0"  # 10^-9 s, padded to 32 bits
        if hardware:
            opts += _opt_str(IF_HARDWARE, hardware)
        if comment:
            opts += _opt_str(OPT_COMMENT, comment)
        opts += _OPT_END
        self.buf += _block(BT_IDB, _IDB_BODY.pack(linktype, 0, snaplen & 0xFFFFFFFF) + opts)
        self.interfaces.append(InterfaceInfo(name, description, hardware, snaplen, linktype))
        return len(self.interfaces) - 1

    # -- packets ------------------------------------------------------------------------------
    def packet(self, if_id: int, ts_ns: int, data: bytes, orig_len: int | None = None, *,
               flags: int | None = None, dropcount: int | None = None, queue: int | None = None,
               rxhash: int | None = None, packetid: int | None = None,
               comment: str | None = None) -> None:
        """Buffer one EPB with any of its options (the general path; see :meth:`frames`)."""
        if not 0 <= if_id < len(self.interfaces):
            raise ValueError(f"EPB for interface id {if_id}, but only {len(self.interfaces)} IDBs")
        caplen = len(data)
        if orig_len is None or orig_len < caplen:
            orig_len = caplen
        opts = bytearray()
        if comment:
            opts += _opt_str(OPT_COMMENT, comment)
        if flags is not None:
            opts += _OPT_U32.pack(EPB_FLAGS, 4, flags)
        if rxhash:
            opts += _OPT_HASH.pack(EPB_HASH, 5, RXHASH_ALGORITHM, rxhash & 0xFFFFFFFF)
        if dropcount is not None:
            if dropcount < 0:
                raise ValueError(f"epb_dropcount must be >= 0, got {dropcount}")
            # a u64 field: a larger sum (possible from hostile gap counts) saturates
            opts += _OPT_U64.pack(EPB_DROPCOUNT, 8, min(dropcount, _U64_MASK))
        if packetid is not None:
            opts += _OPT_U64.pack(EPB_PACKETID, 8, packetid & _U64_MASK)
        if queue is not None:
            opts += _OPT_U32.pack(EPB_QUEUE, 4, queue & 0xFFFFFFFF)
        if opts:
            opts += _OPT_END
        pad = _PAD[caplen & 3]
        total = 32 + caplen + len(pad) + len(opts)
        buf = self.buf
        buf += _EPB_HEAD.pack(BT_EPB, total, if_id, (ts_ns >> 32) & 0xFFFFFFFF,
                              ts_ns & 0xFFFFFFFF, caplen, orig_len)
        buf += data
        buf += pad
        buf += opts
        buf += _U32.pack(total)
        self.packets += 1

    def frames(self, if_id: int, ts: Sequence[int], heads: Sequence[bytes | None],
               lens: Sequence[int], dirs: Sequence[int], queues: Sequence[int | None],
               rxhashes: Sequence[int | None], packetid_base: int, first_frame: int,
               specials: dict[int, tuple[int | None, str | None]] | None = None) -> None:
        """Buffer one EPB per frame of a column-wise frame batch (the hot path).

        ``packetid`` of row i is ``(packetid_base + first_frame + i) mod 2**64``. ``specials``
        maps a row index to ``(dropcount, comment)`` for the few frames that carry them; those
        rows take the general :meth:`packet` path, the rows between them
        :func:`netevents.pcapng_columns.encode_frames` (written for speed: whole columns at a
        time for runs of equal-length heads, else one struct per head and per option tail).
        """
        if not 0 <= if_id < len(self.interfaces):
            raise ValueError(f"EPB for interface id {if_id}, but only {len(self.interfaces)} IDBs")
        base = packetid_base + first_frame
        specials = specials or {}
        n = len(ts)
        lo = 0
        for i in sorted(k for k in specials if 0 <= k < n):
            encode_frames(self.buf, self._chunk, if_id, ts, heads, lens, dirs, queues, rxhashes,
                          base, lo, i, PKTTYPE_FLAGS, RXHASH_ALGORITHM)
            dropcount, comment = specials[i]
            self.packet(if_id, ts[i], heads[i] or b"", lens[i], flags=pkttype_flags(dirs[i]),
                        dropcount=dropcount, queue=queues[i], rxhash=rxhashes[i],
                        packetid=(base + i) & _U64_MASK, comment=comment)
            lo = i + 1
        encode_frames(self.buf, self._chunk, if_id, ts, heads, lens, dirs, queues, rxhashes,
                      base, lo, n, PKTTYPE_FLAGS, RXHASH_ALGORITHM)
        self.packets += n - len(specials)

    # -- statistics ---------------------------------------------------------------------------
    def statistics(self, if_id: int, ts_ns: int, *, ifrecv: int | None = None,
                   ifdrop: int | None = None, osdrop: int | None = None,
                   usrdeliv: int | None = None, starttime: int | None = None,
                   endtime: int | None = None, comment: str | None = None) -> None:
        """Buffer an ISB (counters cumulative since the interface's capture started)."""
        if not 0 <= if_id < len(self.interfaces):
            raise ValueError(f"ISB for interface id {if_id}, but only {len(self.interfaces)} IDBs")
        opts = bytearray()
        if comment:
            opts += _opt_str(OPT_COMMENT, comment)
        if starttime is not None:
            opts += _OPT_TS.pack(ISB_STARTTIME, 8, (starttime >> 32) & 0xFFFFFFFF, starttime & 0xFFFFFFFF)
        if endtime is not None:
            opts += _OPT_TS.pack(ISB_ENDTIME, 8, (endtime >> 32) & 0xFFFFFFFF, endtime & 0xFFFFFFFF)
        for code, value in ((ISB_IFRECV, ifrecv), (ISB_IFDROP, ifdrop), (ISB_OSDROP, osdrop),
                            (ISB_USRDELIV, usrdeliv)):
            if value is not None:  # u64 counters: a larger sum saturates (the comment has it)
                opts += _OPT_U64.pack(code, 8, min(max(value, 0), _U64_MASK))
        if opts:
            opts += _OPT_END
        body = _U32.pack(if_id) + _U32.pack((ts_ns >> 32) & 0xFFFFFFFF) + _U32.pack(ts_ns & 0xFFFFFFFF)
        self.buf += _block(BT_ISB, body + bytes(opts))

    # -- output -------------------------------------------------------------------------------
    def take(self) -> bytes:
        """The bytes buffered since the last call (complete blocks only)."""
        if self._chunks:
            self._chunk(b"")
            out = b"".join(self._chunks)
            self._chunks.clear()
            return out
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def discard(self) -> None:
        """Forget everything buffered since the last :meth:`take`."""
        self.buf.clear()
        self._chunks.clear()

    def _chunk(self, data: Any) -> None:
        """Append finished blocks (bytes or a buffer) without copying them into ``buf``."""
        if self.buf:
            self._chunks.append(bytes(self.buf))
            self.buf.clear()
        if data:
            self._chunks.append(data)

    def __len__(self) -> int:
        """Bytes buffered since the last :meth:`take`."""
        return len(self.buf) + sum(map(len, self._chunks))


# =============================================================================================
# Reader: enough for tests and `netevents verify` (SHB, IDB, EPB, ISB and their options).

@dataclass(slots=True)
class Block:
    type: int
    offset: int
    options: dict[int, list[bytes]] = field(default_factory=dict)

    def opt(self, code: int) -> bytes | None:
        values = self.options.get(code)
        return values[0] if values else None


@dataclass(slots=True)
class SectionHeader(Block):
    major: int = 1
    minor: int = 0
    big_endian: bool = False


@dataclass(slots=True)
class InterfaceDescription(Block):
    linktype: int = 0
    snaplen: int = 0
    name: str | None = None
    description: str | None = None
    hardware: str | None = None
    tsresol: int = 6


@dataclass(slots=True)
class EnhancedPacket(Block):
    interface_id: int = 0
    timestamp: int = 0          # raw units of the interface's if_tsresol
    caplen: int = 0
    orig_len: int = 0
    data: bytes = b""
    flags: int | None = None
    dropcount: int | None = None
    packetid: int | None = None
    queue: int | None = None
    hash: tuple[int, bytes] | None = None
    comments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class InterfaceStatistics(Block):
    interface_id: int = 0
    timestamp: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    comments: list[str] = field(default_factory=list)


class PcapngFormatError(CodecError):
    """The bytes are not a PcapNG file (or a block is corrupt before the end of the data)."""

    reason = "pcapng"


_ISB_NAMES = {ISB_STARTTIME: "starttime", ISB_ENDTIME: "endtime", ISB_IFRECV: "ifrecv",
              ISB_IFDROP: "ifdrop", ISB_FILTERACCEPT: "filteraccept", ISB_OSDROP: "osdrop",
              ISB_USRDELIV: "usrdeliv"}


@dataclass(slots=True)
class ReadResult:
    blocks: list[Block]
    truncated: bool = False     # the data ended inside a block (e.g. the writer was killed)
    trailing: int = 0           # bytes of that incomplete block
    end: int = 0                # offset just past the last complete block

    def of(self, cls: type) -> list[Any]:
        return [b for b in self.blocks if isinstance(b, cls)]


def _parse_options(data: bytes | memoryview, pos: int, end: int, e: str) -> dict[int, list[bytes]]:
    opts: dict[int, list[bytes]] = {}
    head = struct.Struct(e + "HH")
    while pos + 4 <= end:
        code, length = head.unpack_from(data, pos)
        pos += 4
        if code == OPT_ENDOFOPT:
            break
        if pos + length > end:
            raise PcapngFormatError(f"option {code} of {length} bytes runs past its block")
        opts.setdefault(code, []).append(bytes(data[pos:pos + length]))
        pos += (length + 3) & ~3
    return opts


def read_pcapng(data: bytes | memoryview, *, fragment: bool = False) -> ReadResult:
    """Parse a PcapNG byte string into blocks (several sections and either byte order).

    An incomplete last block (a writer killed mid-write) ends the list with ``truncated=True``
    instead of raising, so a reader gets everything up to the last complete block.
    With ``fragment`` the data may start at any block boundary of a little-endian section (the
    tail of a file); EPB interface ids are then not checked and timestamps stay raw.

    Raises:
        PcapngFormatError: if the data does not start with an SHB, or a complete block is corrupt
            (lengths that disagree, options running past the block).
    """
    mv = memoryview(data)
    n = len(mv)
    pos = 0
    e = "<"
    blocks: list[Block] = []
    tsresol: list[int] = []
    if not fragment and (n < 12 or struct.unpack_from("<I", mv, 0)[0] != BT_SHB):
        raise PcapngFormatError("not a PcapNG file: it does not start with a Section Header Block")
    while pos < n:
        if pos + 12 > n:
            return ReadResult(blocks, True, n - pos, pos)
        btype = struct.unpack_from(e + "I", mv, pos)[0]
        if btype == BT_SHB:
            if pos + 12 > n:
                return ReadResult(blocks, True, n - pos, pos)
            magic_le = struct.unpack_from("<I", mv, pos + 8)[0]
            if magic_le == BYTE_ORDER_MAGIC:
                e = "<"
            elif struct.unpack_from(">I", mv, pos + 8)[0] == BYTE_ORDER_MAGIC:
                e = ">"
            else:
                raise PcapngFormatError(f"bad byte-order magic in the SHB at offset {pos}")
            tsresol = []
        total = struct.unpack_from(e + "I", mv, pos + 4)[0]
        if total < 12 or total % 4:
            raise PcapngFormatError(f"block at offset {pos} has an invalid length {total}")
        if pos + total > n:
            return ReadResult(blocks, True, n - pos, pos)
        if struct.unpack_from(e + "I", mv, pos + total - 4)[0] != total:
            raise PcapngFormatError(f"block at offset {pos}: trailing length != leading length")
        body, end = pos + 8, pos + total - 4
        if btype == BT_SHB:
            _m, major, minor, _sl = struct.unpack_from(e + "IHHq", mv, body)
            blocks.append(SectionHeader(btype, pos, _parse_options(mv, body + 16, end, e),
                                        major, minor, e == ">"))
        elif btype == BT_IDB:
            linktype, _r, snaplen = struct.unpack_from(e + "HHI", mv, body)
            opts = _parse_options(mv, body + 8, end, e)
            idb = InterfaceDescription(btype, pos, opts, linktype, snaplen)
            idb.name = _text(idb.opt(IF_NAME))
            idb.description = _text(idb.opt(IF_DESCRIPTION))
            idb.hardware = _text(idb.opt(IF_HARDWARE))
            res = idb.opt(IF_TSRESOL)
            if res:
                idb.tsresol = res[0] & 0x7F if not res[0] & 0x80 else -(res[0] & 0x7F)
            tsresol.append(idb.tsresol)
            blocks.append(idb)
        elif btype == BT_EPB:
            if_id, hi, lo, caplen, orig_len = struct.unpack_from(e + "IIIII", mv, body)
            if if_id >= len(tsresol) and not fragment:
                raise PcapngFormatError(f"EPB at offset {pos} names interface {if_id}, "
                                        f"but the section has {len(tsresol)} IDBs")
            dstart = body + 20
            opts = _parse_options(mv, dstart + ((caplen + 3) & ~3), end, e)
            epb = EnhancedPacket(btype, pos, opts, if_id, (hi << 32) | lo, caplen, orig_len,
                                 bytes(mv[dstart:dstart + caplen]))
            v = epb.opt(EPB_FLAGS)
            epb.flags = struct.unpack(e + "I", v)[0] if v else None
            v = epb.opt(EPB_DROPCOUNT)
            epb.dropcount = struct.unpack(e + "Q", v)[0] if v else None
            v = epb.opt(EPB_PACKETID)
            epb.packetid = struct.unpack(e + "Q", v)[0] if v else None
            v = epb.opt(EPB_QUEUE)
            epb.queue = struct.unpack(e + "I", v)[0] if v else None
            v = epb.opt(EPB_HASH)
            epb.hash = (v[0], v[1:]) if v else None
            epb.comments = [c.decode("utf-8", "replace") for c in opts.get(OPT_COMMENT, [])]
            blocks.append(epb)
        elif btype == BT_ISB:
            if_id, hi, lo = struct.unpack_from(e + "III", mv, body)
            opts = _parse_options(mv, body + 12, end, e)
            isb = InterfaceStatistics(btype, pos, opts, if_id, (hi << 32) | lo)
            for code, name in _ISB_NAMES.items():
                v = isb.opt(code)
                if v is None:
                    continue
                if code in (ISB_STARTTIME, ISB_ENDTIME):
                    h, lo2 = struct.unpack(e + "II", v)
                    isb.counters[name] = (h << 32) | lo2
                else:
                    isb.counters[name] = struct.unpack(e + "Q", v)[0]
            isb.comments = [c.decode("utf-8", "replace") for c in opts.get(OPT_COMMENT, [])]
            blocks.append(isb)
        else:
            blocks.append(Block(btype, pos))
        pos += total
    return ReadResult(blocks, end=n)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")


def iter_packets(result: ReadResult) -> Iterator[tuple[InterfaceDescription, EnhancedPacket]]:
    """(IDB, EPB) pairs in file order, resolving interface ids per section."""
    idbs: list[InterfaceDescription] = []
    for b in result.blocks:
        if isinstance(b, SectionHeader):
            idbs = []
        elif isinstance(b, InterfaceDescription):
            idbs.append(b)
        elif isinstance(b, EnhancedPacket):
            yield idbs[b.interface_id], b


__all__ = [
    "EnhancedPacket", "InterfaceDescription", "InterfaceStatistics", "PcapngFormatError",
    "PcapngWriter", "ReadResult", "SectionHeader", "iter_packets", "pkttype_flags", "read_pcapng",
]

"""AF_PACKET TPACKET_V3 receive ring: socket, mmap, and the block walk.

Set-up order matters for "nothing lost while it is set up" and for fanout:

1. ``socket(AF_PACKET, SOCK_RAW, 0)``: protocol 0 registers no packet hook, so nothing is
   delivered (and nothing counted) yet.
2. A "drop everything" classic BPF program is attached, so that when the socket is bound it
   counts nothing until it has joined its fanout group (otherwise every worker would see the
   same first frames).
3. ``PACKET_VERSION`` = TPACKET_V3, ``PACKET_TIMESTAMP``, ``PACKET_RX_RING``, ``mmap``.
4. ``bind(ETH_P_ALL, ifindex)``: from here the ring exists, so every frame is either written to
   it or counted in ``tp_drops``.
5. ``PACKET_FANOUT`` (needs a bound socket), then the user's filter (or accept-all), every
   accepting return cut to the snap length (bpf.py), replaces the drop-all program.

Stopping is the mirror: :meth:`CaptureRing.detach` puts the drop-all filter back, so after the
block timer retires the last partial block and the walker drains it, the final
``PACKET_STATISTICS`` read closes the run's accounting exactly. (Counting ends with that read
in any case: a frame the kernel counts later is in no read and in no summary.)

Layouts from ``include/uapi/linux/if_packet.h`` (and ``linux/filter.h`` for the BPF program).
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import shutil
import socket
import struct
import subprocess
from dataclasses import dataclass

from netevents.errors import CapabilityError, ConfigError

from ..kernel.netns import entered
from .bpf import snap_program
from .summary import columns, parse_l3l4

# --- include/uapi/linux/if_ether.h, linux/socket.h, asm-generic/socket.h -------------------
ETH_P_ALL = 0x0003
SOL_PACKET = 263
SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27
SO_TIMESTAMPING = 37  # SO_TIMESTAMPING_OLD
SO_RXQ_OVFL = 40

# --- include/uapi/linux/if_packet.h ---------------------------------------------------------
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_TIMESTAMP = 17
PACKET_FANOUT = 18
TPACKET_V3 = 2

PACKET_FANOUT_HASH = 0
PACKET_FANOUT_LB = 1
PACKET_FANOUT_CPU = 2
PACKET_FANOUT_ROLLOVER = 3
PACKET_FANOUT_RND = 4
PACKET_FANOUT_QM = 5
PACKET_FANOUT_FLAG_ROLLOVER = 0x1000
PACKET_FANOUT_FLAG_DEFRAG = 0x8000
FANOUT_MODES = {"hash": PACKET_FANOUT_HASH, "lb": PACKET_FANOUT_LB, "cpu": PACKET_FANOUT_CPU,
                "rnd": PACKET_FANOUT_RND, "qm": PACKET_FANOUT_QM}

TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1 << 0
TP_STATUS_LOSING = 1 << 2
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_BLK_TMO = 1 << 5
TP_STATUS_TS_SOFTWARE = 1 << 29
TP_STATUS_TS_RAW_HARDWARE = 1 << 31
TP_FT_REQ_FILL_RXHASH = 0x1

# --- include/uapi/linux/net_tstamp.h ---------------------------------------------------------
SOF_TIMESTAMPING_RX_HARDWARE = 1 << 2
SOF_TIMESTAMPING_RX_SOFTWARE = 1 << 3
SOF_TIMESTAMPING_SOFTWARE = 1 << 4
SOF_TIMESTAMPING_RAW_HARDWARE = 1 << 6

# struct tpacket_req3 { tp_block_size, tp_block_nr, tp_frame_size, tp_frame_nr,
#                       tp_retire_blk_tov, tp_sizeof_priv, tp_feature_req_word }  (all __u32)
TPACKET_REQ3 = struct.Struct("=7I")
# struct tpacket_stats_v3 { tp_packets, tp_drops, tp_freeze_q_cnt }  (all unsigned int)
TPACKET_STATS_V3 = struct.Struct("=3I")
# struct tpacket_block_desc { __u32 version; __u32 offset_to_priv; struct tpacket_hdr_v1 {
#   __u32 block_status; __u32 num_pkts; __u32 offset_to_first_pkt; __u32 blk_len;
#   __aligned_u64 seq_num; struct tpacket_bd_ts ts_first_pkt, ts_last_pkt; } }
BLOCK_DESC = struct.Struct("=IIIIIIQIIII")
BLOCK_STATUS_OFF = 8
# struct tpacket3_hdr { __u32 tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len, tp_status;
#   __u16 tp_mac, tp_net; struct tpacket_hdr_variant1 { __u32 tp_rxhash, tp_vlan_tci;
#   __u16 tp_vlan_tpid, tp_padding; }; __u8 tp_padding[8]; }            -> 48 bytes
# followed (at TPACKET_ALIGN(48) = 48) by struct sockaddr_ll { __u16 sll_family;
#   __be16 sll_protocol; int sll_ifindex; __u16 sll_hatype; __u8 sll_pkttype; __u8 sll_halen; ...}
# One unpack per frame covers both (up to sll_pkttype): the hot loop's only struct call.
TPACKET3_HDR_LL = struct.Struct("=IIIIIIHHII22xB")
TPACKET3_HDRLEN = 48 + 20

# struct sock_filter { __u16 code; __u8 jt; __u8 jf; __u32 k; }   (linux/filter.h)
SOCK_FILTER = struct.Struct("=HBBI")
DROP_ALL = [(0x06, 0, 0, 0)]  # BPF_RET|BPF_K 0: accept nothing


@dataclass(slots=True)
class RingStats:
    """One PACKET_STATISTICS read (clear-on-read deltas since the previous read)."""

    packets: int
    drops: int
    freezes: int


@dataclass(slots=True)
class RingConfig:
    iface: str
    snaplen: int = 96
    block_size: int = 1 << 20
    block_nr: int = 8
    retire_tov_ms: int = 50
    fanout_group: int | None = None
    fanout_mode: str = "hash"
    fanout_rollover: bool = False
    bpf: list[tuple[int, int, int, int]] | None = None
    timestamps: bool = True
    netns: str | None = None
    """Named network namespace (/var/run/netns/NAME) the interface lives in; None = ours."""

    def validate(self) -> None:
        """Raises ConfigError naming the bad option."""
        page = mmap.PAGESIZE
        if self.block_size < page or self.block_size % page:
            raise ConfigError(f"capture block_size {self.block_size} must be a multiple of {page}")
        if self.block_nr < 1:
            raise ConfigError("capture block_nr must be >= 1")
        if not 0 < self.snaplen <= 65535:
            raise ConfigError(f"capture snaplen {self.snaplen} must be 1..65535")
        if self.fanout_mode not in FANOUT_MODES:
            raise ConfigError(f"capture fanout mode {self.fanout_mode!r} is not one of "
                              f"{', '.join(FANOUT_MODES)}")

    @property
    def frame_size(self) -> int:
        # V3 frames are variable-length; tp_frame_size only has to divide the block and hold a
        # header plus the snap length (the kernel checks frame_nr = block_nr * block/frame).
        need = TPACKET3_HDRLEN + 2 + self.snaplen
        size = 16
        while size < need:
            size *= 2
        return min(size, self.block_size)


def parse_bpf_ddd(text: str) -> list[tuple[int, int, int, int]]:
    """A classic BPF program from ``tcpdump -ddd`` output (a count line, then ``code jt jf k``).

    Raises:
        ConfigError: if the text is not such a program.
    """
    lines = [ln.split() for ln in text.strip().splitlines() if ln.strip()]
    try:
        count = int(lines[0][0])
        prog = [tuple(int(x) for x in ln) for ln in lines[1:]]
    except (IndexError, ValueError):
        raise ConfigError("capture filter: not `tcpdump -ddd` output (count, then code jt jf k)") from None
    if count != len(prog) or any(len(ins) != 4 for ins in prog) or not 0 < count <= 4096:
        raise ConfigError(f"capture filter: `tcpdump -ddd` program says {count} instructions, "
                          f"found {len(prog)} well-formed ones")
    return prog  # type: ignore[return-value]


def compile_filter(expr: str) -> list[tuple[int, int, int, int]]:
    """Compile a pcap filter expression by running ``tcpdump -ddd`` (Ethernet link type).

    A string that already is ``tcpdump -ddd`` output (starts with a number) is parsed directly.

    Raises:
        ConfigError: if tcpdump is missing or refuses the expression.
    """
    stripped = expr.strip()
    if stripped[:1].isdigit() and "\n" in stripped:
        return parse_bpf_ddd(stripped)
    tcpdump = shutil.which("tcpdump")
    if tcpdump is None:
        raise ConfigError("capture filter: compiling an expression needs tcpdump "
                          "(install it, or pass `tcpdump -ddd` output)")
    proc = subprocess.run([tcpdump, "-ddd", "-y", "EN10MB", "-i", "lo", stripped],
                          capture_output=True, text=True, timeout=10)
    if proc.returncode != 0:
        msg = (proc.stderr.strip().splitlines() or ["tcpdump failed"])[-1]
        raise ConfigError(f"capture filter {stripped!r}: {msg}")
    return parse_bpf_ddd(proc.stdout)


class _BpfProgram:
    """A sock_fprog whose instruction array stays alive as long as this object."""

    def __init__(self, prog: list[tuple[int, int, int, int]]) -> None:
        raw = b"".join(SOCK_FILTER.pack(*ins) for ins in prog)
        self._buf = ctypes.create_string_buffer(raw, len(raw))
        # struct sock_fprog { unsigned short len; struct sock_filter *filter; } (native alignment)
        self.fprog = struct.pack("@HP", len(prog), ctypes.addressof(self._buf))


def attach_filter(sock: socket.socket, prog: list[tuple[int, int, int, int]]) -> None:
    program = _BpfProgram(prog)  # must outlive the setsockopt call (the kernel copies it)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, program.fprog)
    del program


def preflight(cfg: RingConfig) -> None:
    """Check, cheaply, that a ring could be opened: the interface exists (in its namespace) and
    AF_PACKET sockets are allowed. Raises CapabilityError naming what is missing."""
    with entered(cfg.netns):
        try:
            socket.if_nametoindex(cfg.iface)
        except OSError:
            raise CapabilityError("capture", f"no interface {cfg.iface!r}") from None
        try:
            socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
        except PermissionError:
            raise CapabilityError("capture", "AF_PACKET needs CAP_NET_RAW") from None


class CaptureRing:
    """One TPACKET_V3 ring on one interface (one fanout member).

    Raises (from :meth:`open`):
        CapabilityError: no CAP_NET_RAW, no such interface, or the kernel refused the ring.
    """

    def __init__(self, cfg: RingConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        self.sock: socket.socket | None = None
        self.mm: mmap.mmap | None = None
        self.block_size = cfg.block_size
        self.block_nr = cfg.block_nr
        self.next_block = 0
        self.ifindex = 0

    # -- set-up ------------------------------------------------------------------------------
    def open(self) -> CaptureRing:
        cfg = self.cfg
        with entered(cfg.netns):
            try:
                self.ifindex = socket.if_nametoindex(cfg.iface)
            except OSError:
                raise CapabilityError("capture", f"no interface {cfg.iface!r}") from None
            try:
                # The socket belongs to the namespace it was created in, whatever thread uses it.
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            except PermissionError:
                raise CapabilityError("capture", "AF_PACKET needs CAP_NET_RAW") from None
        self.sock = sock
        try:
            sock.bind((cfg.iface, 0))  # protocol 0: bound to the interface, no packet hook yet
            attach_filter(sock, DROP_ALL)
            sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            if cfg.timestamps:
                # SO_TIMESTAMPING with RX_SOFTWARE turns on the kernel's receive stamps (else
                # skb->tstamp may be unset and every frame falls back to "now"); PACKET_TIMESTAMP
                # picks what the ring reports: raw hardware if the NIC stamped, else software.
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING,
                                SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE
                                | SOF_TIMESTAMPING_RX_HARDWARE | SOF_TIMESTAMPING_RAW_HARDWARE)
                sock.setsockopt(SOL_PACKET, PACKET_TIMESTAMP,
                                SOF_TIMESTAMPING_RAW_HARDWARE | SOF_TIMESTAMPING_SOFTWARE)
            frame = cfg.frame_size
            req = TPACKET_REQ3.pack(self.block_size, self.block_nr, frame,
                                    (self.block_size // frame) * self.block_nr,
                                    cfg.retire_tov_ms, 0, TP_FT_REQ_FILL_RXHASH)
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            self.mm = mmap.mmap(sock.fileno(), self.block_size * self.block_nr,
                                mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            sock.bind((cfg.iface, ETH_P_ALL))
            if cfg.fanout_group is not None:
                mode = FANOUT_MODES[cfg.fanout_mode]
                if cfg.fanout_rollover:
                    mode |= PACKET_FANOUT_FLAG_ROLLOVER
                sock.setsockopt(SOL_PACKET, PACKET_FANOUT, (cfg.fanout_group & 0xFFFF) | (mode << 16))
            # Always a program: the kernel cuts a frame to what the filter returns, and only
            # then (bpf.py); it also leaves out the bus's own traffic when asked to.
            attach_filter(sock, snap_program(cfg.bpf, cfg.snaplen))
            sock.setblocking(False)
        except OSError as exc:
            self.close()
            raise CapabilityError("capture", f"{cfg.iface}: TPACKET_V3 ring set-up failed: "
                                             f"{os.strerror(exc.errno or 0)}") from None
        # No statistics read here: the drop-all filter kept the counters at 0 until the line
        # above, and from then on every count belongs to the run (a read would lose some).
        return self

    def fileno(self) -> int:
        assert self.sock is not None
        return self.sock.fileno()

    def read_stats(self) -> RingStats:
        """PACKET_STATISTICS: clear-on-read; tp_packets includes tp_drops (af_packet.c adds them)."""
        assert self.sock is not None
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, TPACKET_STATS_V3.size)
        p, d, f = TPACKET_STATS_V3.unpack(raw)
        return RingStats(p, d, f)

    def detach(self) -> None:
        """Stop delivery into the ring; the ring and its counters stay for the final drain.

        The drop-all filter goes back on: refused frames are counted nowhere (and a fanout
        group's other members carry on). Re-binding would not do: ``bind`` with protocol 0
        keeps the current protocol, and a fanout member cannot re-bind at all (EINVAL).
        """
        if self.sock is not None:
            with contextlib.suppress(OSError):
                attach_filter(self.sock, DROP_ALL)

    def close(self) -> None:
        if self.mm is not None:
            try:
                self.mm.close()
            except BufferError:
                pass  # a memoryview is still alive somewhere; the fd close below frees the ring
            self.mm = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    # -- the block walk ----------------------------------------------------------------------
    def ready_block(self) -> int | None:
        """Offset of the next block if the kernel has handed it to user space, else None."""
        assert self.mm is not None
        off = self.next_block * self.block_size
        status = int.from_bytes(self.mm[off + BLOCK_STATUS_OFF:off + BLOCK_STATUS_OFF + 4], "little")
        return off if status & TP_STATUS_USER else None

    def release_block(self, off: int) -> None:
        assert self.mm is not None
        self.mm[off + BLOCK_STATUS_OFF:off + BLOCK_STATUS_OFF + 4] = b"\0\0\0\0"
        self.next_block = (self.next_block + 1) % self.block_nr

    def blocks_owned_by_user(self) -> int:
        assert self.mm is not None
        n = 0
        for i in range(self.block_nr):
            off = i * self.block_size + BLOCK_STATUS_OFF
            if int.from_bytes(self.mm[off:off + 4], "little") & TP_STATUS_USER:
                n += 1
        return n


@dataclass(slots=True)
class BlockInfo:
    """What one retired block held (from its tpacket_hdr_v1 and its frames)."""

    seq: int
    num_pkts: int
    status: int
    first_ts: int | None
    last_ts: int | None
    walked: int
    """Frames actually walked (== num_pkts unless the block was malformed)."""


# IPv4 fast path of the walk: ip_id, frag, protocol, src, dst and the first 8 bytes of L4
# (ports, TCP sequence), from a head that is Ethernet + a 20-byte IPv4 header ("\x08\x00\x45").
_IPV4_FAST = struct.Struct("!4xHHxB2x4s4sHHI")
_V4_PREFIX = b"\x08\x00\x45"
_TS_SRC = (0, 1, 0, 1, 2, 2, 2, 2)  # indexed by tp_status >> 29: TS_SOFTWARE=1, RAW_HARDWARE=4


def walk_block(buf, off: int, rows: list[tuple], keys: list[tuple]) -> BlockInfo:
    """Append one row per frame of the block at ``off`` in ``buf`` (ring memory) to ``rows``
    (ts, ts_src, caplen, len, dir, rxhash, vlan, head) and its flow keys to ``keys``.

    Sans-IO (``buf`` is the mmap, or bytes in tests). This is the capture's hot loop, written
    for speed: one ``unpack_from`` for tpacket3_hdr + sockaddr_ll, one slice for the head, one
    ``unpack_from`` for plain Ethernet/IPv4 keys (the generic parser only for the rest), two
    tuple appends; bound methods and constants are locals; columns are made later by one
    transpose per list (:func:`summary.columns`). A frame header that points outside the
    buffer ends the walk of that block (``walked`` < ``num_pkts``).
    """
    (_ver, _priv, bstatus, num, first_off, _blen, seq,
     _s1, _n1, _s2, _n2) = BLOCK_DESC.unpack_from(buf, off)
    unpack = TPACKET3_HDR_LL.unpack_from
    v4 = _IPV4_FAST.unpack_from
    parse = parse_l3l4
    row = rows.append
    key = keys.append
    ts_src = _TS_SRC
    vlan_valid = TP_STATUS_VLAN_VALID
    prefix = _V4_PREFIX
    start = len(rows)
    p = off + first_off
    walked = 0
    try:
        for _ in range(num):
            nxt, sec, nsec, snap, wlen, st, mac, _net, rxh, tci, pkttype = unpack(buf, p)
            head = buf[p + mac:p + mac + snap]
            row((sec * 1_000_000_000 + nsec, ts_src[st >> 29], snap, wlen, pkttype, rxh,
                 tci if st & vlan_valid else None, head))
            if head[12:15] == prefix and snap >= 46:
                ip_id, frag, l4, src, dst, sport, dport, tseq = v4(head, 14)
                if frag & 0x1FFF:
                    key((0x0800, src, dst, l4, None, None, ip_id, None))
                elif l4 == 17:
                    key((0x0800, src, dst, 17, sport, dport, ip_id, None))
                elif l4 == 6:
                    key((0x0800, src, dst, 6, sport, dport, ip_id, tseq))
                else:
                    key(parse(head))
            else:
                key(parse(head))
            walked += 1
            p += nxt
    except struct.error:
        if len(keys) > len(rows):
            keys.pop()
        elif len(rows) > len(keys):
            rows.pop()
    first_ts = rows[start][0] if walked else None
    last_ts = rows[-1][0] if walked else None
    return BlockInfo(seq, num, bstatus, first_ts, last_ts, walked)


class PythonWalker:
    """The pure-Python walker behind the collector's walker interface (cwalk.FrameWalker):
    :func:`walk_block` into rows and keys, one :func:`summary.columns` transpose per batch.

    The reference the C walker is held to, and the fallback where it cannot be built.
    """

    name = "python"

    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self.keys: list[tuple] = []

    def __len__(self) -> int:
        return len(self.rows)

    def walk(self, buf, off: int) -> BlockInfo:
        return walk_block(buf, off, self.rows, self.keys)

    def take(self, queue: int | None) -> tuple[dict[str, list], int, int]:
        cols = columns(self.rows, self.keys, queue)
        self.rows, self.keys = [], []
        ts = cols["ts"]
        return cols, ts[0], ts[-1]

"""Raw NETLINK_SOCK_DIAG for TCP: the dump request, the destroy multicast, and a fast parser.

    build_dump_request(family, seq)   one inet_diag_req_v2 asking for every non-listening TCP
                                      socket of a family with INET_DIAG_INFO (struct tcp_info)
    parse_dump(buf, out)              sans-IO: netlink messages -> TcpSock tuples (appended), or
                                      with ``samples`` compact (cookie, family, src, dst, info)
    DiagSocket                        the netlink socket: dump() for IPv4 + IPv6 (blocking, run
                                      it in a thread), sample_chunks() the same as a stream of
                                      compact samples, open in a given network namespace
    DestroyListener                   SKNLGRP_INET{,6}_TCP_DESTROY subscriber, non-blocking fd
                                      for ``loop.add_reader``; ENOBUFS surfaces as an overrun

The parser is the hot loop (100k sockets per sample): precompiled ``struct.Struct`` objects,
``unpack_from`` on one memoryview, only the fields we use unpacked, one plain tuple per socket.

Netlink framing (header, NLMSG_ERROR, request building) is netevents/agent/kernel/netlink.py's; the
layouts here come from include/uapi/linux/sock_diag.h,
include/uapi/linux/inet_diag.h and include/uapi/linux/tcp.h (struct tcp_info, read by length:
older kernels hand in a shorter struct and the missing tail reads as absent).
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable, Iterator
from typing import NamedTuple

from netevents.errors import CapabilityError, NetlinkError

from ..kernel.netlink import (
    NETLINK_ADD_MEMBERSHIP,
    NETLINK_SOCK_DIAG,
    NLA_HDR,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_HDR,
    SOL_NETLINK,
    check_error,
    pack_message,
)
from ..kernel.netns import in_netns

# include/uapi/linux/sock_diag.h
SOCK_DIAG_BY_FAMILY = 20
SKNLGRP_INET_TCP_DESTROY = 1
SKNLGRP_INET6_TCP_DESTROY = 3

# include/uapi/linux/inet_diag.h
INET_DIAG_INFO = 2
# struct inet_diag_req_v2 { u8 family, protocol, ext, pad; u32 states; struct inet_diag_sockid id; }
# struct inet_diag_sockid { be16 sport, dport; be32 src[4], dst[4]; u32 if; u32 cookie[2]; }
INET_DIAG_REQ_V2 = struct.Struct("=BBBxI48x")
# struct inet_diag_msg { u8 family, state, timer, retrans; struct inet_diag_sockid id;
#                        u32 expires, rqueue, wqueue, uid, inode; }  (72 bytes)
# sport/dport are big-endian; read natively here and swapped below (one struct, one call).
INET_DIAG_MSG = struct.Struct("=BBxxHH16s16sxxxxQxxxxxxxxxxxxxxxxI")
INET_DIAG_MSG_LEN = 72
# The netlink header and inet_diag_msg in one unpack (the parser's hot path).
_HDR_MSG = struct.Struct("=IH10x" + INET_DIAG_MSG.format[1:])
_HDR_MSG_LEN = 16 + INET_DIAG_MSG_LEN
assert _HDR_MSG.size == _HDR_MSG_LEN

# include/net/tcp_states.h
TCP_ESTABLISHED, TCP_SYN_SENT, TCP_SYN_RECV, TCP_FIN_WAIT1, TCP_FIN_WAIT2 = 1, 2, 3, 4, 5
TCP_TIME_WAIT, TCP_CLOSE, TCP_CLOSE_WAIT, TCP_LAST_ACK, TCP_LISTEN = 6, 7, 8, 9, 10
TCP_CLOSING, TCP_NEW_SYN_RECV = 11, 12
# Every state with a full socket and a peer: no listeners, no time-wait or request minisocks
# (those carry no tcp_info).
DUMP_STATES = ((1 << 13) - 1) & ~((1 << TCP_LISTEN) | (1 << TCP_TIME_WAIT) | (1 << TCP_NEW_SYN_RECV))

# include/uapi/linux/tcp.h, struct tcp_info: (name or None for skipped bytes, format) in order.
# Offsets in comments; the struct grew over the years, so a kernel may hand in a prefix.
_TCP_INFO_LAYOUT: list[tuple[str | None, str]] = [
    (None, "2x"), ("retransmits", "B"), (None, "5x"),             # 0 state, ca_state, retransmits
    (None, "24x"),                                                # 8 rto ... unacked, sacked
    ("lost", "I"), ("retrans", "I"), (None, "4x"),                # 32 lost, retrans, fackets
    (None, "16x"),                                                # 44 last_data_sent ... ack_recv
    (None, "8x"), ("rtt", "I"), ("rttvar", "I"),                  # 60 pmtu, rcv_ssthresh, rtt, rttvar
    (None, "4x"), ("snd_cwnd", "I"), (None, "8x"),                # 76 snd_ssthresh, snd_cwnd, ...
    (None, "8x"), ("total_retrans", "I"),                         # 92 rcv_rtt, rcv_space, total_retrans
    (None, "16x"), ("bytes_acked", "Q"), ("bytes_received", "Q"),  # 104 pacing rates, bytes
    ("segs_out", "I"), ("segs_in", "I"),                          # 136
    (None, "16x"), (None, "8x"), (None, "24x"), (None, "8x"),     # 144 ... delivered_ce (200)
    ("bytes_sent", "Q"), ("bytes_retrans", "Q"),                  # 200
    ("dsack_dups", "I"), (None, "4x"), (None, "4x"),              # 216 dsack_dups, reord_seen, ooopack
    (None, "12x"),                                                # 228 snd_wnd, rcv_wnd, rehash
    ("total_rto", "H"), (None, "2x"), (None, "4x"),               # 240 total_rto (6.7+), ...
]
TCP_INFO = struct.Struct("=" + "".join(f for _n, f in _TCP_INFO_LAYOUT))
TCP_INFO_LEN = TCP_INFO.size  # 248 on 6.7+
TCP_INFO_LEN_TOTAL_RTO = 242   # tcpi_total_rto present (Linux 6.7)
TCP_INFO_LEN_BYTES_SENT = 216  # tcpi_bytes_sent/bytes_retrans present (Linux 4.19)
TCP_INFO_LEN_DSACK = 220       # tcpi_dsack_dups present (Linux 5.0)
assert TCP_INFO_LEN == 248, TCP_INFO_LEN
_PAD = bytes(TCP_INFO_LEN)



class TcpSock(NamedTuple):
    """One TCP socket's sample. Built with ``tuple.__new__`` in the hot loop (field order!)."""

    cookie: int
    family: int
    state: int
    src: bytes           # 16 bytes as the kernel gives them (IPv4 in the first 4)
    sport: int
    dst: bytes
    dport: int
    inode: int
    info_len: int        # length of the tcp_info the kernel sent (0: none)
    retransmits: int     # gauge: unrecovered RTO timeouts (tcpi_retransmits)
    lost: int            # gauge: packets marked lost now (tcpi_lost = tp->lost_out)
    retrans: int         # gauge: retransmitted packets in flight (tcpi_retrans)
    rtt: int             # gauge, us
    rttvar: int          # gauge, us
    cwnd: int            # gauge, segments
    total_retrans: int   # u32 counter
    bytes_acked: int     # u64 counter
    bytes_received: int  # u64 counter
    segs_out: int        # u32 counter
    segs_in: int         # u32 counter
    bytes_sent: int      # u64 counter
    bytes_retrans: int   # u64 counter
    dsack_dups: int      # u32 counter
    total_rto: int       # u16 counter (0 before Linux 6.7; see info_len)


_new_sock = tuple.__new__
assert TcpSock._fields[9:] == tuple(n.replace("snd_", "") for n, _f in _TCP_INFO_LAYOUT if n), \
    "TcpSock fields must follow the tcp_info layout order"


def build_dump_request(family: int, seq: int, states: int = DUMP_STATES) -> bytes:
    """A SOCK_DIAG_BY_FAMILY dump request for TCP sockets of ``family`` with tcp_info."""
    body = INET_DIAG_REQ_V2.pack(family, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), states)
    return pack_message(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, body)


Sample = tuple
"""What a sampling dump keeps of a socket, one flat tuple: ``[S_FAMILY]``, ``[S_SRC]``,
``[S_DST]``, ``[S_COOKIE]``, and from ``[S_INFO]`` on the tcp_info fields in TcpSock's order
from ``retransmits`` (``TcpSock[9:]``; a shorter kernel struct reads as zeros); the netlink and
attribute lengths and types before them. No TcpSock, no port or inode: what the accounting
needs. It is exactly what one ``iter_unpack`` of a whole message gives (see _sample_struct)."""
S_FAMILY, S_SRC, S_DST, S_COOKIE, S_INFO = 2, 3, 4, 5, 8
_SAMPLE_HEAD = "=IH10xBxxx4x16s16s4xQ16x4x"  # nlmsghdr, inet_diag_msg: S_* fields only
_SAMPLE_STRUCTS: dict[tuple[int, int], struct.Struct] = {}


def _sample_struct(msg_len: int, info_at: int) -> struct.Struct:
    """One message of ``msg_len`` bytes (aligned) with a full tcp_info attribute at
    ``info_at``, as one flat :data:`Sample` (cached per layout)."""
    st = _SAMPLE_STRUCTS.get((msg_len, info_at))
    if st is None:
        tail = msg_len - info_at - 4 - TCP_INFO_LEN
        st = _SAMPLE_STRUCTS[msg_len, info_at] = struct.Struct(
            f"{_SAMPLE_HEAD}{info_at - _HDR_MSG_LEN}xHH{TCP_INFO.format[1:]}{tail}x")
    return st


def parse_dump(buf: bytes | bytearray | memoryview, out: list,
               addresses: dict[bytes, bytes] | None = None, samples: bool = False) -> bool:
    """Parse netlink messages of a sock_diag dump or destroy multicast; append sockets to ``out``
    (TcpSock tuples, or :data:`Sample` tuples with ``samples``).

    Sockets without tcp_info (none requested, or minisocks) are skipped. Returns True when
    NLMSG_DONE was seen. ``addresses``, shared across the calls of one dump, makes sockets with
    the same address share one bytes object (less memory; cached hashes for the accounting).

    Hot loop (~100k messages per sample), written for speed: one memoryview, one
    ``unpack_from`` for the netlink header and inet_diag_msg together, and the position of
    INET_DIAG_INFO remembered from the previous message (a dump's messages share one attribute
    layout), so the attribute walk only runs when the (length, type) found there differs. That
    is why it walks messages and attributes inline rather than with kernel/netlink.py's
    generators (one generator step per message and attribute would cost more than the parse).

    Raises:
        NetlinkError: for an NLMSG_ERROR message with a non-zero error (``errno`` set), or a
            truncated or malformed message (names the offset).
    """
    mv = memoryview(buf)
    end = len(mv)
    off = 0
    hdr_msg_unpack = _HDR_MSG.unpack_from
    hdr_unpack = NLMSG_HDR.unpack_from
    attr_unpack = NLA_HDR.unpack_from  # struct rtattr: the same layout
    info_unpack = TCP_INFO.unpack_from
    append = out.append
    new = _new_sock
    cls = TcpSock
    intern = (addresses if addresses is not None else {}).setdefault
    done = False
    info_at = 0                # offset of the INET_DIAG_INFO attribute in the previous message
    info_attr = (0, -1)        # its (length, type)
    fast = None                # samples: the Struct of a whole message of the last layout
    fast_len = fast_alen = 0   # ... its message length and tcp_info attribute length
    while off + 16 <= end:
        if fast is not None:
            # Samples, written for speed: a datagram's messages share one length and layout,
            # so one iter_unpack (C) reads a run of them whole; a message that differs ends the
            # run and takes the general path below.
            size = fast.size
            start = off
            for t in fast.iter_unpack(mv[off:off + (end - off) // size * size]):
                if (t[0] != fast_len or t[1] != SOCK_DIAG_BY_FAMILY or t[6] != fast_alen
                        or t[7] != INET_DIAG_INFO):
                    break
                append(t)
                off += size
            fast = None
            if off > start:
                continue
        if off + _HDR_MSG_LEN <= end:
            nl_len, nl_type, family, state, sport, dport, src, dst, cookie, inode = hdr_msg_unpack(mv, off)
        else:
            nl_len, nl_type = hdr_unpack(mv, off)[:2]
        if nl_len < 16 or off + nl_len > end:
            raise NetlinkError(f"truncated netlink message at offset {off}: length {nl_len}")
        if nl_type == SOCK_DIAG_BY_FAMILY:
            if nl_len < _HDR_MSG_LEN:
                raise NetlinkError(f"short inet_diag_msg at offset {off}: length {nl_len}")
            msg_end = off + nl_len
            a = off + info_at
            if a + 4 > msg_end or attr_unpack(mv, a) != info_attr:
                a = off + _HDR_MSG_LEN
                while a + 4 <= msg_end:
                    a_len, a_type = attr_unpack(mv, a)
                    if a_len < 4 or a + a_len > msg_end:
                        raise NetlinkError(f"bad attribute at offset {a}: length {a_len}")
                    if a_type == INET_DIAG_INFO:
                        break
                    a += (a_len + 3) & ~3
                else:  # no tcp_info: not a full socket
                    off += (nl_len + 3) & ~3
                    continue
                info_at = a - off
                info_attr = attr_unpack(mv, a)
            ilen = info_attr[0] - 4
            if ilen >= TCP_INFO_LEN:
                f = info_unpack(mv, a + 4)
            else:  # older kernel: shorter struct, the missing tail reads as zero
                f = info_unpack(bytes(mv[a + 4:a + 4 + ilen]) + _PAD[ilen:])
            if samples:
                append((nl_len, nl_type, family, src, dst, cookie, *info_attr, *f))
                if ilen >= TCP_INFO_LEN and nl_len % 4 == 0:
                    fast = _sample_struct(nl_len, info_at)
                    fast_len, fast_alen = nl_len, info_attr[0]
                off += (nl_len + 3) & ~3
                continue
            append(new(cls, (
                cookie, family, state, intern(src, src), ((sport & 0xFF) << 8) | (sport >> 8),
                intern(dst, dst), ((dport & 0xFF) << 8) | (dport >> 8), inode, ilen, *f)))
        elif nl_type == NLMSG_DONE:
            done = True
        elif nl_type == NLMSG_ERROR:
            check_error(mv[off + 16:off + nl_len], "sock_diag")
        off += (nl_len + 3) & ~3
    return done


def _netlink_socket(rcvbuf: int) -> socket.socket:
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
    except OSError as exc:
        raise CapabilityError("NETLINK_SOCK_DIAG", f"cannot open a sock_diag netlink socket: {exc}") from exc
    try:
        s.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE (root) beats rmem_max
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((0, 0))
    return s


class DiagSocket:
    """A blocking sock_diag socket that dumps TCP sockets; call :meth:`dump` from a thread.

    Raises (constructor):
        CapabilityError: if netlink sock_diag is unavailable or the namespace cannot be entered.
    """

    def __init__(self, netns: str | None = None, *, rcvbuf: int = 4 << 20,
                 families: tuple[int, ...] = (socket.AF_INET, socket.AF_INET6)) -> None:
        self.sock = in_netns(netns, lambda: _netlink_socket(rcvbuf))
        self.families = families
        self._buf = bytearray(1 << 20)
        self._seq = 0
        self.recorder: list[bytes] | None = None
        """Set to a list to keep every raw datagram received (golden test recording)."""

    def dump(self) -> list[TcpSock]:
        """Every TCP socket (IPv4 then IPv6) with its tcp_info, as one list.

        Raises:
            NetlinkError: if the kernel answers a dump with an error (EAFNOSUPPORT for IPv6
                on a kernel without it is skipped, not raised).
            OSError: on a socket error.
        """
        out: list[TcpSock] = []
        addresses: dict[bytes, bytes] = {}
        for _ in self._exchange(lambda view: parse_dump(view, out, addresses)):
            pass
        return out

    def sample_chunks(self) -> Iterator[list[Sample]]:
        """The dump of :meth:`dump` as it arrives, one list of :data:`Sample` tuples per
        datagram: a consumer that accounts as it goes never holds the whole dump.

        Raises: like :meth:`dump`, while iterating.
        """
        chunk: list[Sample] = []

        def parse(view: memoryview) -> bool:
            nonlocal chunk
            chunk = []
            return parse_dump(view, chunk, samples=True)

        for _ in self._exchange(parse):
            yield chunk

    def _exchange(self, parse: Callable[[memoryview], bool]) -> Iterator[None]:
        """One dump request per family; each datagram of the answer goes to ``parse`` (which
        says whether it ended the dump), then the caller resumes. A family the kernel does
        not have (EAFNOSUPPORT, ENOENT) is skipped."""
        buf = self._buf
        mv = memoryview(buf)
        for family in self.families:
            self._seq += 1
            self.sock.send(build_dump_request(family, self._seq))
            try:
                while True:
                    n = self.sock.recv_into(buf)
                    if self.recorder is not None:
                        self.recorder.append(bytes(mv[:n]))
                    done = parse(mv[:n])
                    yield
                    if done:
                        break
            except NetlinkError as exc:
                if exc.errno not in (errno.EAFNOSUPPORT, errno.ENOENT):
                    raise

    def close(self) -> None:
        self.sock.close()


class DestroyListener:
    """Subscriber to SKNLGRP_INET_TCP_DESTROY / SKNLGRP_INET6_TCP_DESTROY: final counters of
    every TCP socket the namespace destroys, as the kernel frees it.

    The socket is non-blocking; call :meth:`read` when it is readable (``loop.add_reader``).
    The kernel delivers these through a workqueue, shortly after the socket left the tables.

    Raises (constructor):
        CapabilityError: if the groups cannot be joined (needs CAP_NET_ADMIN).
    """

    def __init__(self, netns: str | None = None, *, rcvbuf: int = 8 << 20) -> None:
        def make() -> socket.socket:
            s = _netlink_socket(rcvbuf)
            try:
                for group in (SKNLGRP_INET_TCP_DESTROY, SKNLGRP_INET6_TCP_DESTROY):
                    s.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
            except OSError as exc:
                s.close()
                raise CapabilityError(
                    "CAP_NET_ADMIN", f"cannot join the sock_diag TCP destroy groups: {exc.strerror}") from exc
            s.setblocking(False)
            return s

        self.sock = in_netns(netns, make)
        self._buf = bytearray(256 << 10)
        self.recorder: list[bytes] | None = None

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self, out: list[TcpSock], max_reads: int = 256) -> int:
        """Drain what is queued into ``out``; returns the number of overruns (ENOBUFS) seen.

        An overrun means the kernel dropped an unknown number of destroy messages because our
        receive buffer was full: the count is of overruns, not of messages.

        Raises:
            NetlinkError: for a malformed message (the rest of that datagram is lost).
        """
        overruns = 0
        mv = memoryview(self._buf)
        for _ in range(max_reads):
            try:
                n = self.sock.recv_into(self._buf)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    overruns += 1
                    continue
                raise
            if self.recorder is not None:
                self.recorder.append(bytes(mv[:n]))
            parse_dump(mv[:n], out)
        return overruns

    def close(self) -> None:
        self.sock.close()

"""NET_DM (the kernel's drop monitor, what dropwatch uses) over generic netlink.

    decode_messages(data)     sans-IO: netlink bytes -> NetDmMessage (alert, packet alert, stats,
                              nlctrl family announcements); malformed input -> NetlinkError
    samples_of(msg, ...)      NetDmMessage -> DropSample list for the aggregator
    NetDmDrops                the collector: resolve the family, configure (alert or packet mode,
                              trunc len, queue len), start, read alerts with loop.add_reader, poll
                              NET_DM_CMD_STATS_GET and report the kernel's tail drops as own loss

Only one program can own NET_DM on a host (its configuration is global and CONFIG/START answer
EBUSY while monitoring runs): the agent is meant to be that program. Netlink framing (headers,
attributes, NLMSG_ERROR, generic netlink and nlctrl) is netevents/agent/kernel/netlink.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from netevents.errors import CapabilityError, ConfigError, NetlinkError

from ..kernel import netlink as nl
from ..kernel.kallsyms import Kallsyms, normalize_location
from .aggregate import DropAggregator, DropSample

log = logging.getLogger("netevents.agent.drops")

# include/uapi/linux/net_dropmon.h
NET_DM_FAMILY = "NET_DM"
NET_DM_GRP_ALERT = "events"
NET_DM_CMD_ALERT = 1
NET_DM_CMD_CONFIG = 2
NET_DM_CMD_START = 3
NET_DM_CMD_STOP = 4
NET_DM_CMD_PACKET_ALERT = 5
NET_DM_CMD_CONFIG_GET = 6
NET_DM_CMD_CONFIG_NEW = 7
NET_DM_CMD_STATS_GET = 8
NET_DM_CMD_STATS_NEW = 9

NET_DM_ATTR_ALERT_MODE = 1      # u8
NET_DM_ATTR_PC = 2              # u64
NET_DM_ATTR_SYMBOL = 3          # string
NET_DM_ATTR_IN_PORT = 4         # nested: PORT_NETDEV_IFINDEX u32, PORT_NETDEV_NAME string
NET_DM_ATTR_TIMESTAMP = 5       # u64, ns (ktime of skb->tstamp: CLOCK_REALTIME)
NET_DM_ATTR_PROTO = 6           # u16, host order
NET_DM_ATTR_PAYLOAD = 7         # binary
NET_DM_ATTR_PAD = 8
NET_DM_ATTR_TRUNC_LEN = 9       # u32
NET_DM_ATTR_ORIG_LEN = 10       # u32
NET_DM_ATTR_QUEUE_LEN = 11      # u32
NET_DM_ATTR_STATS = 12          # nested: STATS_DROPPED u64
NET_DM_ATTR_HW_STATS = 13       # nested
NET_DM_ATTR_ORIGIN = 14         # u16: NET_DM_ORIGIN_SW 0, NET_DM_ORIGIN_HW 1
NET_DM_ATTR_HW_TRAP_GROUP_NAME = 15  # string
NET_DM_ATTR_HW_TRAP_NAME = 16   # string
NET_DM_ATTR_HW_ENTRIES = 17
NET_DM_ATTR_HW_ENTRY = 18
NET_DM_ATTR_HW_TRAP_COUNT = 19
NET_DM_ATTR_SW_DROPS = 20       # flag
NET_DM_ATTR_HW_DROPS = 21       # flag
NET_DM_ATTR_FLOW_ACTION_COOKIE = 22
NET_DM_ATTR_REASON = 23         # string (v6.0+)
NET_DM_ATTR_PORT_NETDEV_IFINDEX = 0
NET_DM_ATTR_PORT_NETDEV_NAME = 1
NET_DM_ATTR_STATS_DROPPED = 0
NET_DM_ALERT_MODE_SUMMARY = 0
NET_DM_ALERT_MODE_PACKET = 1
NET_DM_ORIGIN_HW = 1

# struct net_dm_alert_msg { __u32 entries; struct net_dm_drop_point points[]; }
# struct net_dm_drop_point { __u8 pc[8]; __u32 count; }
ALERT_ENTRIES = struct.Struct("=I")
DROP_POINT = struct.Struct("=QI")


@dataclass(slots=True)
class DropPoint:
    pc: int
    count: int


@dataclass(slots=True)
class NetDmMessage:
    """One decoded generic-netlink message of the NET_DM family (or an nlctrl announcement)."""

    family: int
    cmd: int
    pc: int | None = None
    symbol: str | None = None
    ifindex: int | None = None
    iface: str | None = None
    timestamp: int | None = None
    proto: int | None = None
    payload: bytes | None = None
    orig_len: int | None = None
    origin: str = "sw"
    hw_group: str | None = None
    hw_trap: str | None = None
    reason: str | None = None
    points: list[DropPoint] = field(default_factory=list)
    dropped: int | None = None
    hw_dropped: int | None = None
    family_name: str | None = None
    family_id: int | None = None
    alert_mode: int | None = None
    trunc_len: int | None = None
    queue_len: int | None = None
    error: int | None = None


def decode_genl(msg_type: int, body: memoryview, net_dm_family: int | None) -> NetDmMessage | None:
    """Decode the payload (after the nlmsghdr) of one generic-netlink message.

    Returns None for families other than nlctrl and NET_DM. ``net_dm_family=None`` accepts any
    non-nlctrl family id as NET_DM (a capture without its nlctrl announcement).

    Raises:
        NetlinkError: truncated header or attributes.
    """
    cmd, _version, attrs = nl.genl_header(body)
    if msg_type == nl.GENL_ID_CTRL:
        fam = nl.nlctrl_family(attrs)
        return NetDmMessage(family=msg_type, cmd=cmd, family_id=fam.id, family_name=fam.name)
    if net_dm_family is not None and msg_type != net_dm_family:
        return None
    m = NetDmMessage(family=msg_type, cmd=cmd)
    for t, v in nl.attrs(attrs, "NET_DM"):
        if t == 0 and cmd == NET_DM_CMD_ALERT:
            m.points = decode_alert_msg(v)
        elif t == NET_DM_ATTR_PC:
            m.pc = nl.attr_uint(v, "NET_DM PC")
        elif t == NET_DM_ATTR_SYMBOL:
            m.symbol = nl.attr_str(v)
        elif t == NET_DM_ATTR_IN_PORT:
            for pt, pv in nl.attrs(v, "NET_DM IN_PORT"):
                if pt == NET_DM_ATTR_PORT_NETDEV_IFINDEX:
                    m.ifindex = nl.attr_uint(pv, "NET_DM PORT_NETDEV_IFINDEX")
                elif pt == NET_DM_ATTR_PORT_NETDEV_NAME:
                    m.iface = nl.attr_str(pv)
        elif t == NET_DM_ATTR_TIMESTAMP:
            m.timestamp = nl.attr_uint(v, "NET_DM TIMESTAMP")
        elif t == NET_DM_ATTR_PROTO:
            m.proto = nl.attr_uint(v, "NET_DM PROTO")
        elif t == NET_DM_ATTR_PAYLOAD:
            m.payload = bytes(v)
        elif t == NET_DM_ATTR_ORIG_LEN:
            m.orig_len = nl.attr_uint(v, "NET_DM ORIG_LEN")
        elif t == NET_DM_ATTR_ORIGIN:
            m.origin = "hw" if nl.attr_uint(v, "NET_DM ORIGIN") == NET_DM_ORIGIN_HW else "sw"
        elif t == NET_DM_ATTR_HW_TRAP_GROUP_NAME:
            m.hw_group = nl.attr_str(v)
        elif t == NET_DM_ATTR_HW_TRAP_NAME:
            m.hw_trap = nl.attr_str(v)
        elif t == NET_DM_ATTR_REASON:
            m.reason = nl.attr_str(v)
        elif t == NET_DM_ATTR_ALERT_MODE:
            m.alert_mode = nl.attr_uint(v, "NET_DM ALERT_MODE")
        elif t == NET_DM_ATTR_TRUNC_LEN:
            m.trunc_len = nl.attr_uint(v, "NET_DM TRUNC_LEN")
        elif t == NET_DM_ATTR_QUEUE_LEN:
            m.queue_len = nl.attr_uint(v, "NET_DM QUEUE_LEN")
        elif t in (NET_DM_ATTR_STATS, NET_DM_ATTR_HW_STATS):
            for st, sv in nl.attrs(v, "NET_DM STATS"):
                if st == NET_DM_ATTR_STATS_DROPPED:
                    if t == NET_DM_ATTR_STATS:
                        m.dropped = nl.attr_uint(sv, "NET_DM STATS_DROPPED")
                    else:
                        m.hw_dropped = nl.attr_uint(sv, "NET_DM HW_STATS_DROPPED")
    return m


def decode_alert_msg(v: memoryview) -> list[DropPoint]:
    """``struct net_dm_alert_msg`` (summary mode) -> drop points.

    Raises:
        NetlinkError: the entry count claims more points than the attribute holds.
    """
    if len(v) < ALERT_ENTRIES.size:
        raise NetlinkError("NET_DM alert: net_dm_alert_msg shorter than its entry count")
    (entries,) = ALERT_ENTRIES.unpack_from(v)
    need = ALERT_ENTRIES.size + entries * DROP_POINT.size
    if need > len(v):
        raise NetlinkError(f"NET_DM alert: {entries} drop points need {need} bytes, have {len(v)}")
    return [DropPoint(*DROP_POINT.unpack_from(v, ALERT_ENTRIES.size + i * DROP_POINT.size))
            for i in range(entries)]


def decode_messages(data: bytes, net_dm_family: int | None = None) -> list[NetDmMessage]:
    """All NET_DM / nlctrl messages in a buffer of netlink messages (one recv or one frame).

    Error messages (NLMSG_ERROR) come back as a message with ``error`` set (negative errno).

    Raises:
        NetlinkError: a message whose length does not fit the buffer, or bad attributes.
    """
    out: list[NetDmMessage] = []
    for msg in nl.messages(data):
        if msg.type == nl.NLMSG_ERROR:
            out.append(NetDmMessage(family=msg.type, cmd=0, error=-nl.error_of(msg.body)))
        elif msg.type != nl.NLMSG_DONE and msg.type >= nl.GENL_ID_CTRL:
            m = decode_genl(msg.type, msg.body, net_dm_family)
            if m is not None:
                out.append(m)
    return out


def samples_of(msg: NetDmMessage, kallsyms: Kallsyms | None = None) -> list[DropSample]:
    """The drops one NET_DM message reports (none for stats/config/nlctrl messages)."""
    if msg.cmd == NET_DM_CMD_PACKET_ALERT:
        location = None
        if msg.symbol:
            location, _ = normalize_location(msg.symbol)
        elif msg.pc is not None and kallsyms is not None:
            location = kallsyms.resolve(msg.pc)
        return [DropSample(reason=msg.reason or "NOT_SPECIFIED", location=location, pc=msg.pc,
                           iface=msg.iface, ifindex=msg.ifindex, proto=msg.proto,
                           origin=msg.origin, hw_trap=msg.hw_trap, hw_group=msg.hw_group,
                           ts=msg.timestamp, payload=msg.payload, orig_len=msg.orig_len)]
    if msg.cmd == NET_DM_CMD_ALERT:
        return [DropSample(location=kallsyms.resolve(p.pc) if kallsyms else f"0x{p.pc:x}",
                           pc=p.pc, count=p.count) for p in msg.points if p.count]
    return []


# ---------------------------------------------------------------------------------------------
# Requests (sans-IO encoders) and the collector.

def encode_request(family: int, cmd: int, attrs: bytes = b"", *, seq: int = 1,
                   flags: int = nl.NLM_F_REQUEST | nl.NLM_F_ACK) -> bytes:
    return nl.genl_request(family, cmd, attrs, seq=seq, version=2, flags=flags)


def encode_config(*, packet_mode: bool, trunc_len: int, queue_len: int) -> bytes:
    mode = NET_DM_ALERT_MODE_PACKET if packet_mode else NET_DM_ALERT_MODE_SUMMARY
    attrs = nl.pack_attr(NET_DM_ATTR_ALERT_MODE, struct.pack("=B", mode))
    if packet_mode:
        attrs += nl.pack_attr(NET_DM_ATTR_TRUNC_LEN, struct.pack("=I", trunc_len))
        attrs += nl.pack_attr(NET_DM_ATTR_QUEUE_LEN, struct.pack("=I", queue_len))
    return attrs


class NetDmDrops:
    """Collector over NET_DM. Config: ``mode`` (alert|packet), ``trunc_len``, ``queue_len``,
    ``interval`` (a busy signature at most once per interval, s), ``tick`` (a new signature
    within a tick, s; DropAggregator.due), ``stats_interval`` (s), ``packet_cap`` (packets kept
    per interval), ``packet_reasons`` (keep packets of these reasons only; implies packet mode),
    ``exclude_reasons``.

    Raises (from run):
        CapabilityError("CONFIG_NET_DROP_MONITOR"): the kernel has no NET_DM family.
        CapabilityError("NET_DM"): another program owns the drop monitor (EBUSY).
        CapabilityError("CAP_NET_ADMIN"): configuring NET_DM was refused (EPERM).
    """

    name = "drops.netdm"
    source = "netdm"

    def __init__(self, *, mode: str = "alert", trunc_len: int = 128, queue_len: int = 1000,
                 interval: float = 1.0, stats_interval: float = 1.0, packet_cap: int = 256,
                 packet_reasons: frozenset[str] = frozenset(),
                 exclude_reasons: frozenset[str] = frozenset(), tick: float = 0.05) -> None:
        if mode not in ("alert", "packet"):
            raise ConfigError(f"[drops] mode must be 'alert' or 'packet', not {mode!r}")
        # Asking for packets of some reasons needs the kernel in packet mode.
        self.packet_mode = mode == "packet" or bool(packet_reasons)
        self.exclude_reasons = exclude_reasons
        self.trunc_len = trunc_len
        self.queue_len = queue_len
        self.interval = interval
        self.stats_interval = stats_interval
        self.tick = min(tick, interval)
        keep = (lambda smp: smp.reason in packet_reasons) if packet_reasons else None
        self.agg = DropAggregator(self.source, packet_mode=self.packet_mode, packet_cap=packet_cap,
                                  packet_filter=keep, tick=self.tick, interval=interval)
        self.kallsyms: Kallsyms | None = None
        self.family: int | None = None
        self.group: int | None = None
        self.decode_errors = 0
        self._seq = 0
        self._last_dropped: int | None = None
        self._window_start = time.time_ns()

    # -- blocking setup helpers (short request/ack exchanges on a private socket) --------------
    def _request(self, sock: socket.socket, family: int, cmd: int, attrs: bytes = b"") -> list[NetDmMessage]:
        self._seq += 1
        sock.send(encode_request(family, cmd, attrs, seq=self._seq))
        out: list[NetDmMessage] = []
        while True:  # replies (if any) come before the ack we asked for
            data = sock.recv(65536)
            for m in decode_messages(data, self.family):
                if m.error is not None:
                    if m.error != 0:
                        raise NetlinkError.from_errno(-m.error, "NET_DM")
                    return out
                out.append(m)

    def resolve_family(self, sock: socket.socket) -> None:
        """Find NET_DM's family id and its ``events`` multicast group.

        Raises:
            CapabilityError: the family does not exist (no CONFIG_NET_DROP_MONITOR).
        """
        attrs = nl.pack_attr(nl.CTRL_ATTR_FAMILY_NAME, NET_DM_FAMILY.encode() + b"\0")
        self._seq += 1
        sock.send(encode_request(nl.GENL_ID_CTRL, nl.CTRL_CMD_GETFAMILY, attrs, seq=self._seq,
                                 flags=nl.NLM_F_REQUEST))
        msg = next(nl.messages(sock.recv(65536)), None)
        if msg is None:
            raise CapabilityError("NET_DM", "resolving the NET_DM family failed: no answer")
        if msg.type == nl.NLMSG_ERROR:
            err = nl.error_of(msg.body)
            if err in (errno.ENOENT, errno.EOPNOTSUPP):
                raise CapabilityError(
                    "CONFIG_NET_DROP_MONITOR",
                    "the kernel has no NET_DM generic netlink family (CONFIG_NET_DROP_MONITOR "
                    "is off or the drop_monitor module is not loaded)")
            raise CapabilityError("NET_DM", f"resolving the NET_DM family failed: {os.strerror(err)}")
        fam = nl.nlctrl_family(nl.genl_header(msg.body, "nlctrl")[2])
        self.family = fam.id
        self.group = fam.groups.get(NET_DM_GRP_ALERT)
        if self.family is None:
            raise CapabilityError("CONFIG_NET_DROP_MONITOR", "nlctrl answered without a NET_DM id")

    def _configure_and_start(self, sock: socket.socket) -> None:
        assert self.family is not None
        try:
            self._request(sock, self.family, NET_DM_CMD_CONFIG,
                          encode_config(packet_mode=self.packet_mode, trunc_len=self.trunc_len,
                                        queue_len=self.queue_len))
            self._request(sock, self.family, NET_DM_CMD_START,
                          nl.pack_attr(NET_DM_ATTR_SW_DROPS, b"") + nl.pack_attr(NET_DM_ATTR_HW_DROPS, b""))
        except (OSError, NetlinkError) as exc:
            if exc.errno == errno.EBUSY:
                raise CapabilityError(
                    "NET_DM", "NET_DM is busy: another tool (dropwatch, perf, another agent) "
                    "is running the drop monitor; stop it or use the tracepoint source") from exc
            if exc.errno in (errno.EPERM, errno.EACCES):
                raise CapabilityError("CAP_NET_ADMIN",
                                      "configuring NET_DM needs CAP_NET_ADMIN") from exc
            raise CapabilityError("NET_DM", f"starting NET_DM failed: {exc}") from exc

    def _stop(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError, NetlinkError):
            if self.family is not None:
                self._request(sock, self.family, NET_DM_CMD_STOP,
                              nl.pack_attr(NET_DM_ATTR_SW_DROPS, b"") + nl.pack_attr(NET_DM_ATTR_HW_DROPS, b""))

    def handle(self, data: bytes, sink: Any) -> None:
        """Feed one received buffer (sans-IO apart from the sink)."""
        try:
            msgs = decode_messages(data, self.family)
        except NetlinkError as exc:
            self.decode_errors += 1
            sink.lost("netdm.decode_error", 1)
            log.warning("NET_DM: undecodable message: %s", exc)
            return
        for m in msgs:
            if m.cmd == NET_DM_CMD_STATS_NEW and m.dropped is not None:
                self.account_stats(m.dropped, sink)
                continue
            for s in samples_of(m, self.kallsyms):
                if s.reason not in self.exclude_reasons:
                    self.agg.add(s)

    def account_stats(self, dropped: int, sink: Any) -> None:
        """The kernel's cumulative tail-drop count -> own-loss increase."""
        if self._last_dropped is not None and dropped >= self._last_dropped:
            sink.lost("netdm.tail_drop", dropped - self._last_dropped)
        elif self._last_dropped is None:
            sink.lost("netdm.tail_drop", 0)
        self._last_dropped = dropped

    async def run(self, sink: Any) -> None:
        sink.declare_loss("netdm.tail_drop")
        sink.declare_loss("netdm.decode_error")
        sink.declare_loss("netdm.packet_cap")
        # ENOBUFS on the alert socket: the kernel dropped alerts for us (how many is unknown,
        # so this counts overflow occurrences; the socket buffer is made large to avoid them).
        sink.declare_loss("netdm.socket_overflow")
        try:
            ctl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, nl.NETLINK_GENERIC)
        except OSError as exc:
            raise CapabilityError("NETLINK_GENERIC", f"cannot open generic netlink: {exc}") from exc
        ctl.settimeout(2.0)
        with ctl:
            # Request/ack exchanges block (briefly): they run in a thread, not on the loop.
            await asyncio.to_thread(self.resolve_family, ctl)
            if not self.packet_mode:
                self.kallsyms = Kallsyms.load()
            ev_sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, nl.NETLINK_GENERIC)
            with ev_sock:
                ev_sock.bind((0, 0))
                with contextlib.suppress(OSError):
                    ev_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
                if self.group is not None:
                    ev_sock.setsockopt(nl.SOL_NETLINK, nl.NETLINK_ADD_MEMBERSHIP, self.group)
                ev_sock.setblocking(False)
                await asyncio.to_thread(self._configure_and_start, ctl)
                loop = asyncio.get_running_loop()

                def readable() -> None:
                    for _ in range(256):
                        try:
                            data = ev_sock.recv(1 << 20)
                        except (BlockingIOError, InterruptedError):
                            return
                        except OSError as exc:
                            if exc.errno == errno.ENOBUFS:  # socket buffer overflow
                                sink.lost("netdm.socket_overflow", 1)
                                continue
                            raise
                        self.handle(data, sink)

                loop.add_reader(ev_sock.fileno(), readable)
                stats_at = loop.time()
                try:
                    while True:
                        await asyncio.sleep(self.tick)
                        if loop.time() - stats_at >= self.stats_interval:
                            stats_at = loop.time()
                            with contextlib.suppress(OSError, NetlinkError):
                                for m in await asyncio.to_thread(self._request, ctl, self.family,
                                                                 NET_DM_CMD_STATS_GET):
                                    if m.dropped is not None:
                                        self.account_stats(m.dropped, sink)
                        self.flush(sink, due=loop.time())
                finally:
                    loop.remove_reader(ev_sock.fileno())
                    self._stop(ctl)
                    self.flush(sink)

    def flush(self, sink: Any, due: float | None = None) -> None:
        """Publish what is due at ``due`` (the loop's clock), or everything when None."""
        sink.lost("netdm.packet_cap", self.agg.take_overflow())
        now = time.time_ns()
        events = self.agg.flush() if due is None else self.agg.due(due)
        if events:
            sink.emit_batch("drop", events, t0=self._window_start, t1=now,
                            mode="packet" if self.packet_mode else "alert")
            self._window_start = now

"""Interface addresses of a network namespace, from rtnetlink: a dump and change notifications.

    dump_request(seq)        RTM_GETADDR dump request (every family)
    parse_addresses(buf)     sans-IO: the RTM_NEWADDR / RTM_DELADDR messages of a datagram ->
                             Address(family, addr, prefixlen, scope, ifindex, deleted)
    own(addresses)           the addresses a host owns for others to reach it: scope
                             universe or site (no loopback, no link-local)
    AddressSocket(netns)     a NETLINK_ROUTE socket bound in ``netns``: ``dump()`` (blocking)
                             and, with ``notify=True``, the RTMGRP_IPV4_IFADDR /
                             RTMGRP_IPV6_IFADDR notifications on a pollable fd (``changed()``)

Layouts: ``struct ifaddrmsg`` and the IFA_* attributes of include/uapi/linux/if_addr.h,
RTM_* and RTMGRP_* of include/uapi/linux/rtnetlink.h.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from typing import NamedTuple

from netevents.errors import CapabilityError, NetlinkError

from .netlink import (
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    attrs,
    check_error,
    messages,
    pack_message,
)
from .netns import in_netns

NETLINK_ROUTE = 0
# include/uapi/linux/rtnetlink.h
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
# include/uapi/linux/if_addr.h
IFADDRMSG = struct.Struct("=BBBBI")  # ifa_family, ifa_prefixlen, ifa_flags, ifa_scope, ifa_index
IFA_ADDRESS, IFA_LOCAL = 1, 2
# include/uapi/linux/rtnetlink.h enum rt_scope_t
RT_SCOPE_UNIVERSE, RT_SCOPE_SITE, RT_SCOPE_LINK, RT_SCOPE_HOST = 0, 200, 253, 254


class Address(NamedTuple):
    family: int
    addr: str
    prefixlen: int
    scope: int
    ifindex: int
    deleted: bool = False


def dump_request(seq: int) -> bytes:
    """An RTM_GETADDR dump of every address of every family."""
    return pack_message(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq,
                        IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))


def parse_addresses(buf: bytes | memoryview) -> tuple[list[Address], bool]:
    """(addresses, done) of one datagram: ``done`` once NLMSG_DONE ends a dump.

    Raises:
        NetlinkError: a malformed message or attribute, or an NLMSG_ERROR with an error.
    """
    out: list[Address] = []
    done = False
    for m in messages(buf):
        if m.type == NLMSG_DONE:
            done = True
            continue
        if m.type == NLMSG_ERROR:
            check_error(m.body, "RTM_GETADDR")
            continue
        if m.type not in (RTM_NEWADDR, RTM_DELADDR):
            continue
        if len(m.body) < IFADDRMSG.size:
            raise NetlinkError(f"address message of {len(m.body)} bytes has no ifaddrmsg")
        family, plen, _flags, scope, index = IFADDRMSG.unpack_from(m.body)
        size = 4 if family == socket.AF_INET else 16 if family == socket.AF_INET6 else 0
        found: dict[int, bytes] = {}
        for t, v in attrs(m.body[IFADDRMSG.size:], "ifaddrmsg"):
            if t in (IFA_ADDRESS, IFA_LOCAL) and len(v) == size:
                found[t] = bytes(v)
        # IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer on point-to-point)
        raw = found.get(IFA_LOCAL) or found.get(IFA_ADDRESS)
        if raw is None:
            continue
        out.append(Address(family, str(ipaddress.ip_address(raw)), plen, scope, index,
                           m.type == RTM_DELADDR))
    return out, done


def own(addresses: list[Address]) -> list[str]:
    """The addresses others reach this namespace at (scope universe or site), sorted, once."""
    return sorted({a.addr for a in addresses if not a.deleted
                   and a.scope in (RT_SCOPE_UNIVERSE, RT_SCOPE_SITE)})


class AddressSocket:
    """A NETLINK_ROUTE socket made inside ``netns`` (None: the caller's namespace).

    Raises:
        CapabilityError: if the namespace cannot be entered or the socket made.
    """

    def __init__(self, netns: str | None, *, notify: bool = False) -> None:
        groups = RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR if notify else 0

        def make() -> socket.socket:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
            try:
                s.bind((0, groups))
            except OSError:
                s.close()
                raise
            return s

        try:
            self.sock = in_netns(netns, make)
        except OSError as exc:
            raise CapabilityError("rtnetlink", f"cannot open rtnetlink in {netns or 'own'} "
                                               f"namespace: {exc.strerror}") from None
        self.seq = 0
        if notify:
            self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def dump(self, timeout: float = 5.0) -> list[str]:
        """The namespace's own addresses now (blocking: call it from a thread).

        Raises:
            NetlinkError: a malformed answer or an error from the kernel.
            OSError: the socket failed or the answer did not come within ``timeout``.
        """
        self.seq += 1
        self.sock.settimeout(timeout)
        self.sock.send(dump_request(self.seq))
        found: list[Address] = []
        while True:
            got, done = parse_addresses(self.sock.recv(1 << 16))
            found.extend(got)
            if done:
                return own(found)

    def changed(self) -> tuple[bool, int]:
        """Drain the notifications received so far: (any address change, overruns). An
        overrun (ENOBUFS) lost notifications: the caller re-dumps either way."""
        changed, overruns = False, 0
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return changed, overruns
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    overruns += 1
                    changed = True
                    continue
                raise
            changed = True  # any RTM_NEWADDR / RTM_DELADDR: re-dump (one lookup, exact)
            if not data:
                return changed, overruns

    def close(self) -> None:
        self.sock.close()


def netns_inode(netns: str | None) -> int | None:
    """The inode of namespace ``netns`` (a /run/netns name or a path; None: this thread's)."""
    from .netns import netns_path

    try:
        return os.stat(netns_path(netns) if netns else "/proc/thread-self/ns/net").st_ino
    except OSError:
        return None

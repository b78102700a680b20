"""Netlink messages, sans-IO: headers, attributes, requests and the kernel's answers.

    pack_message(type, flags, seq, payload)  a request: struct nlmsghdr + payload
    messages(buf)                            walk one datagram: Message(type, flags, seq, pid,
                                             body) per netlink message
    error_of(body) / check_error(body)       an NLMSG_ERROR body -> errno (0: an ACK) / raise
    pack_attr(type, payload)                 one struct nlattr, padded
    attrs(buf)                               walk an attribute stream: (type, payload)
    attr_uint(v) / attr_str(v)               an attribute's payload as an integer / as text
    genl_request(family, cmd, attrs, ...)    a generic netlink request (+ struct genlmsghdr)
    genl_header(body)                        (cmd, version, attributes) of a generic message
    nlctrl_family(attrs)                     the nlctrl answer about a family: id, name, groups

Sockets and the protocols on top (NET_DM in drops/netdm.py, sock_diag in ipstats/sockdiag.py)
are their callers'. Input that does not fit raises :class:`~netevents.errors.NetlinkError`
naming the offset; an NLMSG_ERROR with an error raises it with ``errno`` set (check_error).
Nothing here raises IndexError or struct.error on short input.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from netevents.errors import NetlinkError

# include/uapi/linux/netlink.h
NETLINK_SOCK_DIAG = 4
NETLINK_GENERIC = 16
NLMSG_HDR = struct.Struct("=IHHII")  # nlmsg_len, nlmsg_type, nlmsg_flags, nlmsg_seq, nlmsg_pid
NLMSG_HDRLEN = NLMSG_HDR.size
NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_MIN_TYPE = 0x10  # below: control messages; from here: the protocol's own
NLMSGERR = struct.Struct("=i")       # struct nlmsgerr { int error; struct nlmsghdr msg; ... }
NLA_HDR = struct.Struct("=HH")       # nla_len, nla_type
NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000
NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xFFFF
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1

# include/uapi/linux/genetlink.h
GENL_HDR = struct.Struct("=BBH")     # cmd, version, reserved
GENL_ID_CTRL = NLMSG_MIN_TYPE
CTRL_CMD_NEWFAMILY = 1
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
CTRL_ATTR_MCAST_GROUPS = 7
CTRL_ATTR_MCAST_GRP_NAME = 1
CTRL_ATTR_MCAST_GRP_ID = 2

_UINT = {1: struct.Struct("=B"), 2: struct.Struct("=H"), 4: struct.Struct("=I"),
         8: struct.Struct("=Q")}


def align(n: int) -> int:
    """NLMSG_ALIGN / NLA_ALIGN: netlink pads messages and attributes to 4 bytes."""
    return (n + 3) & ~3


# -- messages ------------------------------------------------------------------------------------

class Message(NamedTuple):
    type: int
    flags: int
    seq: int
    pid: int
    body: memoryview   # the payload after the nlmsghdr, exactly nlmsg_len - 16 bytes


def pack_message(msg_type: int, flags: int, seq: int, payload: bytes = b"", pid: int = 0) -> bytes:
    """One netlink message: the header (nlmsg_len counts it) and ``payload``."""
    return NLMSG_HDR.pack(NLMSG_HDRLEN + len(payload), msg_type, flags, seq, pid) + payload


def messages(buf: bytes | bytearray | memoryview) -> Iterator[Message]:
    """Every netlink message of one datagram, in order.

    Raises:
        NetlinkError: a message whose length is shorter than its header or runs past the
            buffer, or bytes left over after the last message.
    """
    mv = memoryview(buf)
    end = len(mv)
    off = 0
    while off + NLMSG_HDRLEN <= end:
        length, msg_type, flags, seq, pid = NLMSG_HDR.unpack_from(mv, off)
        if length < NLMSG_HDRLEN or off + length > end:
            raise NetlinkError(f"netlink message at offset {off} claims {length} bytes, "
                               f"{end - off} available")
        yield Message(msg_type, flags, seq, pid, mv[off + NLMSG_HDRLEN:off + length])
        off += align(length)
    if off < end:
        raise NetlinkError(f"{end - off} trailing bytes after the last netlink message")


def error_of(body: bytes | memoryview) -> int:
    """The errno of an NLMSG_ERROR message's body (positive; 0 is an acknowledgement).

    Raises:
        NetlinkError: the body is too short to hold the error code.
    """
    if len(body) < NLMSGERR.size:
        raise NetlinkError(f"NLMSG_ERROR of {len(body)} bytes has no error code")
    return -NLMSGERR.unpack_from(body)[0]


def check_error(body: bytes | memoryview, what: str = "netlink") -> None:
    """Raise for an NLMSG_ERROR body that carries an error; return for an ACK.

    Raises:
        NetlinkError: with ``errno`` set (named in the message, after ``what``), or without
            it when the body is truncated.
    """
    err = error_of(body)
    if err:
        raise NetlinkError.from_errno(err, what)


# -- attributes ----------------------------------------------------------------------------------

def pack_attr(attr_type: int, payload: bytes = b"") -> bytes:
    """One attribute: struct nlattr, ``payload``, padding to 4 bytes."""
    n = NLA_HDR.size + len(payload)
    return NLA_HDR.pack(n, attr_type) + payload + b"\0" * ((-n) % 4)


def attrs(data: bytes | memoryview, where: str = "netlink") -> Iterator[tuple[int, memoryview]]:
    """(type without the NESTED/NET_BYTEORDER flags, payload) of each attribute in ``data``.

    Raises:
        NetlinkError: an attribute whose length is shorter than its header or runs past the
            end (``where`` names the stream in the message).
    """
    mv = memoryview(data)
    off = 0
    end = len(mv)
    while off + NLA_HDR.size <= end:
        nla_len, nla_type = NLA_HDR.unpack_from(mv, off)
        if nla_len < NLA_HDR.size or off + nla_len > end:
            raise NetlinkError(f"{where}: attribute type {nla_type & NLA_TYPE_MASK} at offset {off} "
                               f"has length {nla_len} (only {end - off} bytes left)")
        yield nla_type & NLA_TYPE_MASK, mv[off + NLA_HDR.size:off + nla_len]
        off += align(nla_len)


def attr_uint(v: bytes | memoryview, what: str = "attribute") -> int:
    """An unsigned integer attribute of 1, 2, 4 or 8 bytes (host order).

    Raises:
        NetlinkError: any other length.
    """
    s = _UINT.get(len(v))
    if s is None:
        raise NetlinkError(f"{what}: integer of {len(v)} bytes")
    return s.unpack_from(v)[0]


def attr_str(v: bytes | memoryview) -> str:
    """A string attribute: up to the first NUL, undecodable bytes replaced."""
    return bytes(v).split(b"\0", 1)[0].decode("utf-8", "replace")


# -- generic netlink -----------------------------------------------------------------------------

def genl_request(family: int, cmd: int, attributes: bytes = b"", *, seq: int, version: int = 1,
                 flags: int = NLM_F_REQUEST | NLM_F_ACK) -> bytes:
    """A generic netlink request to ``family`` (its id): nlmsghdr, genlmsghdr, attributes."""
    return pack_message(family, flags, seq, GENL_HDR.pack(cmd, version, 0) + attributes)


def genl_header(body: memoryview, where: str = "generic netlink") -> tuple[int, int, memoryview]:
    """(cmd, version, attribute bytes) of a generic netlink message's body.

    Raises:
        NetlinkError: the body is shorter than struct genlmsghdr.
    """
    if len(body) < GENL_HDR.size:
        raise NetlinkError(f"{where} message of {len(body)} bytes has no genl header")
    cmd, version, _ = GENL_HDR.unpack_from(body)
    return cmd, version, body[GENL_HDR.size:]


@dataclass(slots=True)
class Family:
    """What nlctrl says about a generic netlink family."""

    id: int | None = None
    name: str | None = None
    groups: dict[str, int] = field(default_factory=dict)
    """Multicast group name -> id."""


def nlctrl_family(attributes: memoryview) -> Family:
    """The attributes of an nlctrl CTRL_CMD_NEWFAMILY (an answer to GETFAMILY, or an
    announcement) -> :class:`Family`.

    Raises:
        NetlinkError: a malformed attribute.
    """
    fam = Family()
    for t, v in attrs(attributes, "nlctrl"):
        if t == CTRL_ATTR_FAMILY_ID:
            fam.id = attr_uint(v, "CTRL_ATTR_FAMILY_ID")
        elif t == CTRL_ATTR_FAMILY_NAME:
            fam.name = attr_str(v)
        elif t == CTRL_ATTR_MCAST_GROUPS:
            for _i, grp in attrs(v, "nlctrl groups"):
                name, gid = None, None
                for gt, gv in attrs(grp, "nlctrl group"):
                    if gt == CTRL_ATTR_MCAST_GRP_NAME:
                        name = attr_str(gv)
                    elif gt == CTRL_ATTR_MCAST_GRP_ID:
                        gid = attr_uint(gv, "CTRL_ATTR_MCAST_GRP_ID")
                if name is not None and gid is not None:
                    fam.groups[name] = gid
    return fam

"""Packet fingerprints: what of a frame stays the same on every hop, so that a frame seen leaving
one host's capture can be matched with the same frame arriving at another's."""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Mapping
from typing import Any

# sll_pkttype values (include/uapi/linux/if_packet.h): PACKET_HOST 0, BROADCAST 1,
# MULTICAST 2, OTHERHOST 3, OUTGOING 4.
PACKET_OUTGOING = 4
ARRIVING = (0, 1, 2)

# Ethernet / IP constants (include/uapi/linux/if_ether.h, in.h).
ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_8021AD = 0x0800, 0x86DD, 0x8100, 0x88A8
IPPROTO_TCP, IPPROTO_UDP = 6, 17
MAX_FRAME = 1522
"""Longest standard Ethernet frame (1500 MTU + header + one VLAN tag). A longer TCP frame at a
tap is a segmentation-offload super-packet (or a jumbo frame): see paths.Departure.offload."""
PAYLOAD_HASHED = 32
"""Bytes of L4 payload hashed into the fingerprint (both captures must have kept them)."""


def _l4_payload(head: bytes | None, l4: int | None) -> bytes:
    """The bytes after the L3 and L4 headers present in ``head`` (at most PAYLOAD_HASHED).

    TTL / hop limit and the IP and L4 checksums change per hop (and the L4 checksum with NAT),
    so the headers are skipped: the invariant header fields are already in the fingerprint. For
    protocols without ports (ICMP) the L4 header past type/code/checksum is kept (echo id, seq).
    """
    if not isinstance(head, (bytes, bytearray, memoryview)) or len(head) < 14:
        return b""   # no head, or a value no schema allows
    et = (head[12] << 8) | head[13]
    off = 14
    while et in (ETH_P_8021Q, ETH_P_8021AD) and len(head) >= off + 4:
        et = (head[off + 2] << 8) | head[off + 3]
        off += 4
    if et == ETH_P_IP and len(head) >= off + 20:
        off += (head[off] & 0x0F) * 4
    elif et == ETH_P_IPV6 and len(head) >= off + 40:
        off += 40  # extension headers are hashed along: they do not change per hop
    else:
        return b""
    if l4 == IPPROTO_TCP and len(head) >= off + 13:
        off += (head[off + 12] >> 4) * 4
    elif l4 == IPPROTO_UDP:
        off += 8
    else:
        off += 4
    return bytes(head[off:off + PAYLOAD_HASHED])


def fingerprint(src: bytes | None, dst: bytes | None, l4: int | None, sport: int | None,
                dport: int | None, ip_id: int | None, tcp_seq: int | None,
                head: bytes | None) -> int | None:
    """The key of what stays the same on every hop (addresses, L4 protocol and ports, IP ID,
    TCP sequence number, the first :data:`PAYLOAD_HASHED` bytes of L4 payload); None for
    frames without L3 keys.

    A 64-bit hash of those fields (Python's hash of their bytes, :func:`_key`: SipHash, keyed
    per process), so a key is only ever compared within one correlator process -- which is
    all it is for (its maps of departures, arrivals and dropped packets). Two of the ~10^5
    frames waiting at a time share a key with a probability of the order of 10^-9; a
    cryptographic digest per frame (every frame of the fleet, twice) was a third of the
    matching's cost, and :func:`fingerprints` hashes a whole batch's columns in one call."""
    if not src or not dst or l4 is None:
        return None
    return _key(src, dst, l4, sport, dport, ip_id, tcp_seq, _l4_payload(head, l4))


_INTS = struct.Struct("<qqqqqB")


def _key(src: Any, dst: Any, l4: Any, sport: Any, dport: Any, ip_id: Any, tcp_seq: Any,
         payload: bytes) -> int:
    """``hash()`` of the frame's fields as bytes: the lengths and bytes of the addresses, the
    five numbers as int64 (little-endian), a byte flagging which of the last four are None,
    then the payload. What ``_cfinger.fingerprints`` hashes, byte for byte (hash(bytes) and
    the C function share CPython's ``_Py_HashBytes``), so a frame has one key whichever path
    made it."""
    try:
        src, dst = bytes(src), bytes(dst)
        flags = (sport is None) | (dport is None) << 1 | (ip_id is None) << 2 | (tcp_seq is None) << 3
        return hash(b"".join((bytes((len(src),)), src, bytes((len(dst),)), dst, _INTS.pack(
            l4, sport or 0, dport or 0, ip_id or 0, tcp_seq or 0, flags), payload)))
    except (TypeError, ValueError, struct.error, OverflowError):
        # a value no schema allows (a list, an address of 256 bytes ...): its text then
        return hash(repr((src, dst, l4, sport, dport, ip_id, tcp_seq, payload)))


def fingerprints(src_c: list, dst_c: list, l4_c: list, sp_c: list, dp_c: list, id_c: list,
                 seq_c: list, head_c: list) -> list[int | None]:
    """:func:`fingerprint` of every frame of a batch's columns (the same keys).

    Hot path (every frame of the fleet, twice: leaving and arriving): in C
    (``_cfinger.fingerprints``) for columns of the types the codec gives; in Python, frame
    by frame, for anything else (or without the extension)."""
    if _cfingerprints is not None:
        keys = _cfingerprints(src_c, dst_c, l4_c, sp_c, dp_c, id_c, seq_c, head_c)
        if keys is not None:
            return keys
    return list(map(fingerprint, src_c, dst_c, l4_c, sp_c, dp_c, id_c, seq_c, head_c))


try:
    from ._cfinger import fingerprints as _cfingerprints
except ImportError:  # built without a C compiler: the same keys in Python
    _cfingerprints = None


def dropped_packet_fingerprint(event: dict) -> int | None:
    """The :func:`fingerprint` of the packet a sampled drop event carries, or None.

    Only the eBPF source's per-packet events qualify: their ``payload`` starts at the network
    header (an Ethernet header is put in front, as the capture saw it) and their ``flow`` has
    the IP ID and TCP sequence number the frames are matched by.
    """
    flow = event.get("flow")
    payload = event.get("payload")
    if event.get("source") != "ebpf" or not isinstance(flow, Mapping) or not isinstance(payload, bytes):
        return None
    src, dst = flow.get("src"), flow.get("dst")
    if not isinstance(src, str) or not isinstance(dst, str):
        return None
    family, ethertype = (socket.AF_INET6, ETH_P_IPV6) if ":" in src else (socket.AF_INET, ETH_P_IP)
    try:
        raw_src, raw_dst = socket.inet_pton(family, src), socket.inet_pton(family, dst)
    except OSError:
        return None
    head = b"\0" * 12 + ethertype.to_bytes(2, "big") + payload
    return fingerprint(raw_src, raw_dst, flow.get("l4"), flow.get("sport"), flow.get("dport"),
                       flow.get("ip_id"), flow.get("tcp_seq"), head)


_ADDR_CACHE: dict[bytes, str | None] = {}


def addr_text(raw: Any) -> str | None:
    """An address in a frame column (4 or 16 bytes) as text; cached (ipaddress is slow)."""
    if raw is None:
        return None
    if isinstance(raw, str):
        return raw
    raw = bytes(raw)
    text = _ADDR_CACHE.get(raw)
    if text is None and raw not in _ADDR_CACHE:
        try:
            text = str(ipaddress.ip_address(raw))
        except ValueError:
            text = None
        if len(_ADDR_CACHE) >= 65536:
            _ADDR_CACHE.clear()
        _ADDR_CACHE[raw] = text
    return text

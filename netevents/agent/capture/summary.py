"""Frame summaries, column-wise: the ``frame`` kind's columns and the L3/L4 key parser (sans-IO).

A summary is what the ring gave us (timestamp with its provenance, lengths, direction, rxhash,
VLAN) plus the flow keys parsed from the captured head (Ethernet, 802.1Q/802.1ad tags, IPv4,
IPv6 with extension headers, TCP/UDP/SCTP/UDP-Lite ports, IPv4 ID, TCP sequence number).
Fields the head does not reach (short snap length, non-first fragment) are ``None``.
"""

from __future__ import annotations

# Column names in the order of netevents.events.FrameEvent.
COLUMNS = ("ts", "ts_src", "caplen", "len", "dir", "queue", "rxhash", "vlan", "ethertype",
           "src", "dst", "l4", "sport", "dport", "ip_id", "tcp_seq", "head")

TS_FALLBACK, TS_SOFTWARE, TS_HARDWARE = 0, 1, 2

# include/uapi/linux/if_ether.h
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
# include/uapi/linux/in.h (IPPROTO_*)
IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP, IPPROTO_UDPLITE = 6, 17, 132, 136
_PORTED = frozenset({IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP, IPPROTO_UDPLITE})
# IPv6 extension headers that can sit between the fixed header and L4 (RFC 8200)
_IPV6_EXT = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options
_IPV6_FRAG = 44

L3L4 = tuple[int | None, bytes | None, bytes | None, int | None, int | None, int | None,
             int | None, int | None]
_NO_KEYS: L3L4 = (None, None, None, None, None, None, None, None)


def parse_l3l4(head: bytes) -> L3L4:
    """Flow keys of one Ethernet frame head.

    Returns ``(ethertype, src, dst, l4, sport, dport, ip_id, tcp_seq)``; never raises on short
    or odd input (missing parts are ``None``).
    """
    n = len(head)
    if n < 14:
        return _NO_KEYS
    et = (head[12] << 8) | head[13]
    off = 14
    while (et == ETH_P_8021Q or et == ETH_P_8021AD) and n >= off + 4:
        et = (head[off + 2] << 8) | head[off + 3]
        off += 4
    if et == ETH_P_IP:
        if n < off + 20:
            return (et, None, None, None, None, None, None, None)
        ihl = (head[off] & 0x0F) * 4
        ip_id = (head[off + 4] << 8) | head[off + 5]
        frag = ((head[off + 6] & 0x1F) << 8) | head[off + 7]
        l4 = head[off + 9]
        src = head[off + 12:off + 16]
        dst = head[off + 16:off + 20]
        if frag or ihl < 20:
            return (et, src, dst, l4, None, None, ip_id, None)
        p = off + ihl
    elif et == ETH_P_IPV6:
        if n < off + 40:
            return (et, None, None, None, None, None, None, None)
        l4 = head[off + 6]
        src = head[off + 8:off + 24]
        dst = head[off + 24:off + 40]
        ip_id = None
        p = off + 40
        while l4 in _IPV6_EXT or l4 == _IPV6_FRAG:
            if n < p + 8:
                return (et, src, dst, l4, None, None, None, None)
            nxt = head[p]
            if l4 == _IPV6_FRAG:
                ip_id = int.from_bytes(head[p + 4:p + 8], "big")
                if ((head[p + 2] << 8) | head[p + 3]) & 0xFFF8:  # not the first fragment
                    return (et, src, dst, nxt, None, None, ip_id, None)
                p += 8
            else:
                p += (head[p + 1] + 1) * 8
            l4 = nxt
    else:
        return (et, None, None, None, None, None, None, None)
    if l4 not in _PORTED or n < p + 4:
        return (et, src, dst, l4, None, None, ip_id, None)
    sport = (head[p] << 8) | head[p + 1]
    dport = (head[p + 2] << 8) | head[p + 3]
    seq = int.from_bytes(head[p + 4:p + 8], "big") if l4 == IPPROTO_TCP and n >= p + 8 else None
    return (et, src, dst, l4, sport, dport, ip_id, seq)


# What the block walk records per frame, in this order (queue is per ring, added per batch),
# and the flow keys it records in a second list (parse_l3l4's tuple).
ROW_FIELDS = ("ts", "ts_src", "caplen", "len", "dir", "rxhash", "vlan", "head")
KEY_FIELDS = ("ethertype", "src", "dst", "l4", "sport", "dport", "ip_id", "tcp_seq")


def columns(rows: list[tuple], keys: list[tuple], queue: int | None = None) -> dict[str, list]:
    """Rows and keys from the block walk as the ``frame`` batch's columns (one C-level
    transpose per list)."""
    n = len(rows)
    cols: dict[str, list] = {}
    for names, table in ((ROW_FIELDS, rows), (KEY_FIELDS, keys)):
        if table:
            cols.update(zip(names, map(list, zip(*table, strict=True)), strict=True))
        else:
            cols.update((name, []) for name in names)
    cols["queue"] = [queue] * n
    return {name: cols[name] for name in COLUMNS}

"""The classic BPF program the ring's socket runs: the snap length and the bus's own traffic.

The kernel shortens a frame in the ring only to what the socket filter returns
(``tpacket_rcv``: ``snaplen = run_filter(...)``); with no filter the whole frame is copied. So
the ring always gets a program, and every accepting ``ret`` in it returns at most the snap
length:

- no ``--filter``: ``ret #snaplen``;
- a ``--filter``: its program with every ``ret #k`` (k > 0) turned into ``ret #min(k,
  snaplen)`` and every ``ret A`` into a jump to ``A > snaplen ? ret #snaplen : ret A``.

Cutting in the kernel costs one instruction per frame and saves copying the rest of the frame
into the ring (and ring space); cutting in the walker would copy every byte first. ``bench/
capture.py --snap-compare`` measures both.

The bus's own traffic (:func:`bus_exclusion`) is a prefix that refuses TCP frames to or from
the bus server's client port (with the server's address, or any address when the server is on
this host), then falls through to the rest. Sans-IO but for resolving the bus's address.
Layouts: ``linux/filter.h`` (BPF_* codes), Ethernet framing as ``tcpdump -y EN10MB``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from urllib.parse import urlsplit

Insn = tuple[int, int, int, int]

RET_K, RET_A = 0x06, 0x16
LDH_ABS, LDB_ABS, LD_W_ABS, LDH_IND = 0x28, 0x30, 0x20, 0x48
LDXB_MSH = 0xB1
JEQ_K, JGT_K, JSET_K, JA = 0x15, 0x25, 0x45, 0x05
MAX_INSNS = 4096


def snap_program(prog: list[Insn] | None, snaplen: int) -> list[Insn]:
    """``prog`` (or accept-all) with every accepted frame cut to ``snaplen`` bytes."""
    if not prog:
        return [(RET_K, 0, 0, snaplen)]
    out: list[Insn] = []
    ret_a = [i for i, ins in enumerate(prog) if ins[0] == RET_A]
    tail = len(prog)  # where the clamp for ``ret A`` goes
    for i, (code, jt, jf, k) in enumerate(prog):
        if code == RET_K and k:
            out.append((code, jt, jf, min(k, snaplen)))
        elif code == RET_A:
            out.append((JA, 0, 0, tail - i - 1))
        else:
            out.append((code, jt, jf, k))
    if ret_a:
        out += [(JGT_K, 0, 1, snaplen), (RET_K, 0, 0, snaplen), (RET_A, 0, 0, 0)]
    return out


def exclude_tcp(endpoints: list[tuple[str | None, int]]) -> list[Insn]:
    """A program prefix refusing TCP (IPv4, IPv6 without extension headers) frames whose source
    or destination is one of ``endpoints`` ((address, port); address None = any address).
    Whatever it does not refuse continues at the instruction after the prefix."""
    if not endpoints:
        return []
    # Symbolic program: jump targets are labels, resolved at the end. A jump is
    # ("j", code, k, true_label, false_label); a label is ("L", name); else an instruction.
    p: list[tuple] = [(LDH_ABS, 0, 0, 12), ("j", JEQ_K, 0x0800, "v4", "v6?")]
    p += [("L", "v6?"), ("j", JEQ_K, 0x86DD, "v6", "pass")]
    # IPv4: TCP, not a later fragment; X = header length; ports at X+14, X+16.
    p += [("L", "v4"), (LDB_ABS, 0, 0, 23), ("j", JEQ_K, 6, "v4tcp", "pass"),
          ("L", "v4tcp"), (LDH_ABS, 0, 0, 20), ("j", JSET_K, 0x1FFF, "pass", "v4ok"),
          ("L", "v4ok"), (LDXB_MSH, 0, 0, 14)]
    for n, (addr, port) in enumerate(endpoints):
        ip = ipaddress.ip_address(addr) if addr else None
        if ip is not None and ip.version != 4:
            continue
        for side, (port_off, addr_off) in enumerate(((14, 26), (16, 30))):
            nxt = f"v4n{n}{side}"
            p += [(LDH_IND, 0, 0, port_off), ("j", JEQ_K, port, f"v4a{n}{side}", nxt),
                  ("L", f"v4a{n}{side}")]
            if ip is not None:
                p += [(LD_W_ABS, 0, 0, addr_off), ("j", JEQ_K, int(ip), "drop", nxt)]
            else:
                p += [("j", JA, 0, "drop", "drop")]
            p += [("L", nxt)]
    p += [("j", JA, 0, "pass", "pass")]
    # IPv6: next header TCP right after the fixed header; ports at 54, 56.
    p += [("L", "v6"), (LDB_ABS, 0, 0, 20), ("j", JEQ_K, 6, "v6tcp", "pass"), ("L", "v6tcp")]
    for n, (addr, port) in enumerate(endpoints):
        ip = ipaddress.ip_address(addr) if addr else None
        if ip is not None and ip.version != 6:
            continue
        for side, (port_off, addr_off) in enumerate(((54, 22), (56, 38))):
            nxt = f"v6n{n}{side}"
            p += [(LDH_ABS, 0, 0, port_off), ("j", JEQ_K, port, f"v6a{n}{side}", nxt),
                  ("L", f"v6a{n}{side}")]
            if ip is not None:
                packed = ip.packed
                for w in range(4):
                    word = int.from_bytes(packed[4 * w:4 * w + 4], "big")
                    ok = f"v6a{n}{side}w{w}"
                    p += [(LD_W_ABS, 0, 0, addr_off + 4 * w),
                          ("j", JEQ_K, word, "drop" if w == 3 else ok, nxt), ("L", ok)]
            else:
                p += [("j", JA, 0, "drop", "drop")]
            p += [("L", nxt)]
    p += [("j", JA, 0, "pass", "pass"), ("L", "drop"), (RET_K, 0, 0, 0), ("L", "pass")]
    return _assemble(p)


def _assemble(sym: list[tuple]) -> list[Insn]:
    labels: dict[str, int] = {}
    n = 0
    for item in sym:
        if item[0] == "L":
            labels[item[1]] = n
        else:
            n += 1
    out: list[Insn] = []
    for item in sym:
        if item[0] == "L":
            continue
        here = len(out)
        if item[0] == "j":
            _j, code, k, t, f = item
            if code == JA:
                out.append((JA, 0, 0, labels[t] - here - 1))
                continue
            jt, jf = labels[t] - here - 1, labels[f] - here - 1
            if not (0 <= jt <= 255 and 0 <= jf <= 255):
                raise ValueError("capture filter: bus exclusion too long for a conditional jump")
            out.append((code, jt, jf, k))
        else:
            out.append(item)
    return out


def bus_endpoints(urls: str) -> list[tuple[str | None, int]]:
    """The (address, port) pairs of the bus servers in ``urls`` (comma-separated): address
    None (any) for a server on this host, whose client port is then left out whoever
    connects to it. Unresolvable hosts are skipped (the connection will say why)."""
    out: list[tuple[str | None, int]] = []
    for url in urls.split(","):
        parts = urlsplit(url.strip() if "://" in url else f"nats://{url.strip()}")
        port = parts.port or 4222
        try:
            infos = socket.getaddrinfo(parts.hostname or "127.0.0.1", port, type=socket.SOCK_STREAM)
        except OSError:
            continue
        for family, _t, _p, _c, sa in infos:
            addr = sa[0]
            entry = (None, port) if _is_local(family, addr) else (addr, port)
            if entry not in out:
                out.append(entry)
    if any(a is None for a, _p in out):
        out = [(a, p) for a, p in out if a is None or (None, p) not in out]
    return out


def _is_local(family: int, addr: str) -> bool:
    """True if ``addr`` is an address of this host (loopback, or one a socket can bind)."""
    if ipaddress.ip_address(addr.split("%")[0]).is_loopback:
        return True
    with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((addr, 0))
        return True
    return False


def ring_program(user: list[Insn] | None, snaplen: int,
                 exclude: list[tuple[str | None, int]] | None = None) -> list[Insn]:
    """The whole program for a ring: the exclusion prefix, then ``user`` (or accept-all), every
    accepted frame cut to ``snaplen``."""
    prog = exclude_tcp(exclude or []) + snap_program(user, snaplen)
    if len(prog) > MAX_INSNS:
        raise ValueError(f"capture filter: {len(prog)} BPF instructions (the kernel takes {MAX_INSNS})")
    return prog

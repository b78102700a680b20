"""Sans-IO per-socket accounting and per-peer aggregation of TCP counters.

    PeerAccountant.destroyed(socks)   final counters of sockets the kernel destroyed
    PeerAccountant.window(dump)       closes a window with a full dump -> Window (events ready to
                                      publish, the overflow, what was attributed to peers);
                                      window_samples(chunks) the same from a streamed dump
    residual(mib_deltas, window)      host-wide MIB deltas minus what the published peers carry

Accounting rules:
- Every socket is keyed on its ``idiag_cookie`` (unique per boot, never reused). Its counters
  are cumulative; the window gets the difference to the socket's previous sample. u32 counters
  wrap modulo 2**32, tcpi_total_rto (u16) modulo 2**16.
- The first dump is the baseline: the history of the sockets it finds is not counted.
- A socket first seen in a later dump was born in this window (the previous dump has every
  full TCP socket of the namespace), and a socket first seen in its destroy message opened and
  closed inside the window: everything they counted happened in the window, so their full
  counters are counted. (Taking their first sample as a baseline would hand whatever they did
  before it, often most of a short transfer, to the residual.) The one thing they may carry in
  from earlier is the SYN-ACK retransmits of the request socket an accepted socket came from.
- A socket that left the dump without a destroy message is kept for ``grace`` windows (the
  kernel sends destroy messages from a workqueue, a little after the socket left its tables);
  then it is given up and counted in ``unseen_closes`` (its last counters are in the residual).
- ``tcpi_lost`` is a gauge (packets marked lost right now, ``tp->lost_out``); ``lost`` counts
  its increases between samples, a lower bound of the packets newly marked lost.
- Gauges (rtt, rttvar, cwnd, retransmits) come from live sockets of the closing dump only.
- Resets are not in sock_diag: ``resets`` (sent) and ``resets_in`` (received) per peer come
  from the reset tracepoints (``resets.py``, :meth:`PeerAccountant.resets`); without them they
  stay 0 and the host-wide resets are all residual.

Levels: ``default`` publishes one event per peer with a red flag (retransmits, timeouts,
losses, resets) and a small field set; ``diagnostics`` one event per (local, peer) pair with
every field, flagged or not. At most ``max_peers`` events per window, worst first; the rest is
counted in ``Window.overflow``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .sockdiag import S_COOKIE, S_DST, S_FAMILY, S_INFO, S_SRC, TcpSock

LEVELS = ("default", "diagnostics")

U16 = 0xFFFF
U32 = 0xFFFFFFFF
U64 = (1 << 64) - 1

# (event field, TcpSock field, modulus mask): cumulative counters and their widths in tcp_info.
COUNTERS: tuple[tuple[str, str, int], ...] = (
    ("retrans_segs", "total_retrans", U32),
    ("bytes_retrans", "bytes_retrans", U64),
    ("segs_out", "segs_out", U32),
    ("segs_in", "segs_in", U32),
    ("bytes_sent", "bytes_sent", U64),
    ("bytes_acked", "bytes_acked", U64),
    ("bytes_received", "bytes_received", U64),
    ("dsack_dups", "dsack_dups", U32),
)

# Accumulator slots per (peer, local) in one window.
_FIELDS = ("sockets", "opened", "closed", *(c[0] for c in COUNTERS), "lost", "timeouts", "resets",
           "resets_in")
_SLOT = {name: i for i, name in enumerate(_FIELDS)}
_N = len(_FIELDS)
_S_SOCKETS, _S_OPENED, _S_CLOSED = _SLOT["sockets"], _SLOT["opened"], _SLOT["closed"]

DEFAULT_FIELDS = ("peer", "level", "sockets", "opened", "closed", "retrans_segs", "bytes_retrans",
                  "lost", "timeouts", "resets", "resets_in", "rtt_us", "retransmits", "flags")
"""The small field set of the default level."""

_V4MAPPED = b"\x00" * 10 + b"\xff\xff"


def address(family: int, raw: bytes) -> str:
    """The text form of a sock_diag address; IPv4-mapped IPv6 peers read as IPv4 (one peer)."""
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if raw[:12] == _V4MAPPED:
        return socket.inet_ntop(socket.AF_INET, raw[12:16])
    return socket.inet_ntop(socket.AF_INET6, raw[:16])


def _raw(text: str) -> tuple[int, bytes]:
    """A text address as sock_diag keys it: (family, 16 bytes, IPv4 in the first 4)."""
    if ":" in text:
        return socket.AF_INET6, socket.inet_pton(socket.AF_INET6, text)
    return socket.AF_INET, socket.inet_pton(socket.AF_INET, text) + b"\0" * 12


def flags_of(ev: dict[str, Any]) -> list[str]:
    """The red flags an event raises."""
    out = []
    if ev.get("retrans_segs", 0) > 0:
        out.append("retransmits")
    if ev.get("timeouts", 0) > 0 or (ev.get("retransmits") or 0) > 0:
        out.append("timeouts")
    if ev.get("lost", 0) > 0:
        out.append("losses")
    if ev.get("resets", 0) > 0 or ev.get("resets_in", 0) > 0:
        out.append("resets")
    return out


@dataclass(slots=True)
class Window:
    """One closed window: what to publish and how it was accounted."""

    events: list[dict[str, Any]] = field(default_factory=list)
    level: str = "default"
    baseline: bool = False
    """True for the first window: every socket became a baseline, nothing is published."""
    overflow: int = 0
    """Events (peers or pairs) left out by the ``max_peers`` cap."""
    attributed: dict[str, int] = field(default_factory=dict)
    """Sums over the published events: retrans_segs, timeouts, resets (for the residual)."""
    peers_total: int = 0
    sockets: int = 0
    unseen_closes: int = 0
    """Sockets given up in this window: they left the dump and no destroy message came."""


def _sort_key(ev: dict[str, Any]) -> tuple:
    return (ev.get("retrans_segs", 0), ev.get("timeouts", 0), ev.get("lost", 0),
            ev.get("resets", 0) + ev.get("resets_in", 0),
            ev.get("bytes_sent", 0) + ev.get("bytes_received", 0))


# Hot path (every socket, every window, 100k sockets per sample): unrolled index arithmetic
# with literal indices. Slots: see _FIELDS. A socket's counters are its ``info`` tuple
# (``TcpSock[9:]``, sockdiag.Sample): the baselines keep only that. A kernel whose tcp_info
# ends before tcpi_total_rto reads it as 0 in every sample, so its timeouts stay 0. The
# asserts keep the literals honest.
assert _FIELDS[3:14] == ("retrans_segs", "bytes_retrans", "segs_out", "segs_in", "bytes_sent",
                         "bytes_acked", "bytes_received", "dsack_dups", "lost", "timeouts", "resets")
assert TcpSock._fields[9:24] == (
    "retransmits", "lost", "retrans", "rtt", "rttvar", "cwnd", "total_retrans",
    "bytes_acked", "bytes_received", "segs_out", "segs_in", "bytes_sent", "bytes_retrans",
    "dsack_dups", "total_rto")
_G = _N  # gauge slots after the counters in a window slot: rtt, rttvar, cwnd, retransmits
assert (S_FAMILY, S_SRC, S_DST, S_COOKIE, S_INFO) == (2, 3, 4, 5, 8)


def _add_full(acc: list[int], f: tuple) -> None:
    """A socket whose whole life is in the window: its counters as they are."""
    acc[3] += f[6]     # retrans_segs   <- total_retrans
    acc[4] += f[12]    # bytes_retrans
    acc[5] += f[9]     # segs_out
    acc[6] += f[10]    # segs_in
    acc[7] += f[11]    # bytes_sent
    acc[8] += f[7]     # bytes_acked
    acc[9] += f[8]     # bytes_received
    acc[10] += f[13]   # dsack_dups
    acc[11] += f[1]    # lost           <- lost_out gauge
    acc[12] += f[14]   # timeouts       <- total_rto


def _add_change(acc: list[int], new: tuple, old: tuple) -> None:
    """Differences to the previous sample; u32 counters modulo 2**32, total_rto modulo 2**16."""
    if new[6:] == old[6:] and new[1] <= old[1]:
        return  # idle socket (the common case on a big host): nothing moved
    acc[3] += (new[6] - old[6]) & 0xFFFFFFFF
    acc[4] += (new[12] - old[12]) & U64
    acc[5] += (new[9] - old[9]) & 0xFFFFFFFF
    acc[6] += (new[10] - old[10]) & 0xFFFFFFFF
    acc[7] += (new[11] - old[11]) & U64
    acc[8] += (new[7] - old[7]) & U64
    acc[9] += (new[8] - old[8]) & U64
    acc[10] += (new[13] - old[13]) & 0xFFFFFFFF
    d = new[1] - old[1]
    if d > 0:
        acc[11] += d
    acc[12] += (new[14] - old[14]) & 0xFFFF


class PeerAccountant:
    """Per-socket baselines and per-window per-peer sums. Plain class: no I/O, no clock.

    Raises (constructor and :meth:`set_level`):
        ValueError: for an unknown level or a ``max_peers`` below 1.
    """

    def __init__(self, level: str = "default", max_peers: int = 1000, grace: int = 2) -> None:
        self.level = self._check_level(level)
        if max_peers < 1:
            raise ValueError(f"max_peers must be at least 1, not {max_peers}")
        self.max_peers = max_peers
        self.grace = grace
        self.baselines: dict[int, tuple] = {}
        """cookie -> the socket's last counters (its ``info`` tuple, ``TcpSock[9:]``)."""
        self._missing: dict[int, int] = {}     # cookie -> windows since it left the dump
        self._tombstones: dict[int, int] = {}  # destroyed cookie -> window it was destroyed in
        self._acc: dict[tuple, list[int]] = {}
        self._windows = 0
        self.unseen_closes = 0
        self.ignored_before_baseline = 0

    @staticmethod
    def _check_level(level: str) -> str:
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r} (levels: {', '.join(LEVELS)})")
        return level

    def set_level(self, level: str) -> str:
        self.level = self._check_level(level)
        return self.level

    # -- accumulation ---------------------------------------------------------------------------
    def _slot(self, s: TcpSock) -> list[int]:
        key = (s.family, s.dst, s.src)
        acc = self._acc.get(key)
        if acc is None:
            acc = self._acc[key] = [0] * _N
        return acc

    @staticmethod
    def _add_delta(acc: list[int], new: tuple, old: tuple | None) -> None:
        if old is None:
            _add_full(acc, new)
        else:
            _add_change(acc, new, old)

    def resets(self, counts: dict[tuple[str, str, str], int]) -> None:
        """Add the window's resets: ``{(kind, local, peer): n}`` with kind ``sent`` or
        ``received`` and text addresses (``resets.ResetCounter``). Before the baseline they are
        history, like the sockets' counters, and are not counted."""
        if self._windows == 0:
            return
        for (kind, local, peer), n in counts.items():
            key = (*_raw(peer), _raw(local)[1])
            acc = self._acc.get(key)
            if acc is None:
                acc = self._acc[key] = [0] * _N
            acc[_SLOT["resets" if kind == "sent" else "resets_in"]] += n

    def __contains__(self, cookie: object) -> bool:
        """Is ``cookie`` one of the sockets this accountant follows (the namespace's own)?
        A live answer (no copy), safe to ask from another thread between windows."""
        return cookie in self.baselines or cookie in self._tombstones

    def destroyed(self, socks: Iterable[TcpSock]) -> None:
        """Account the final counters of destroyed sockets (from the destroy multicast)."""
        window = self._windows
        for s in socks:
            if window == 0:
                self.ignored_before_baseline += 1  # part of the history the first dump baselines
                continue
            cookie = s.cookie
            if cookie in self._tombstones:
                continue  # a duplicate (the kernel never sends two; be safe anyway)
            old = self.baselines.pop(cookie, None)
            self._missing.pop(cookie, None)
            acc = self._slot(s)
            if old is None:
                acc[_S_OPENED] += 1  # opened and closed inside this window
            self._add_delta(acc, s[9:], old)
            acc[_S_CLOSED] += 1
            self._tombstones[cookie] = window

    def window(self, dump: Iterable[TcpSock]) -> Window:
        """Close the current window with a full dump taken at its end (see :meth:`window_samples`).
        """
        return self.window_samples([[(0, 0, s[1], s[3], s[5], s[0], 0, 0, *s[9:]) for s in dump]])

    def window_samples(self, chunks: Iterable[list[tuple]]) -> Window:
        """Close the current window with a full dump, as chunks of sockdiag.Sample tuples
        (``DiagSocket.sample_chunks()`` streams them, so the whole dump is never held).

        Call :meth:`destroyed` with the destroy messages received so far first, so a socket is
        never counted as both gone and new. Iterating ``chunks`` may raise (the dump failed):
        then nothing of this dump is kept and the window stays open, to be closed by the next.
        """
        first = self._windows == 0
        baselines = self.baselines
        tombstones = self._tombstones
        slots: dict[tuple, list[int]] = {}   # this dump's own: counters, then gauges (_G)
        seen: dict[int, tuple] = {}
        count = 0
        add_full, add_change, n_acc = _add_full, _add_change, _N
        for chunk in chunks:
            count += len(chunk)
            if first:
                for t in chunk:
                    if t[5] not in tombstones:
                        seen[t[5]] = t[8:]
                continue
            for t in chunk:
                # Hot loop: literal sockdiag.Sample indices (2 family, 3 src, 4 dst, 5 cookie,
                # 8: info), info indices 0 retransmits, 3 rtt, 4 rttvar, 5 cwnd (_add_full).
                cookie = t[5]
                if cookie in tombstones:
                    continue  # dumped just before its destroy message was read: already final
                info = t[8:]
                key = (t[2], t[4], t[3])
                acc = slots.get(key)
                if acc is None:
                    acc = slots[key] = [0] * n_acc + [info[3], info[4], info[5], info[0]]
                else:
                    if info[3] > acc[n_acc]:
                        acc[n_acc] = info[3]
                    if info[4] > acc[n_acc + 1]:
                        acc[n_acc + 1] = info[4]
                    if info[5] < acc[n_acc + 2]:
                        acc[n_acc + 2] = info[5]
                    if info[0] > acc[n_acc + 3]:
                        acc[n_acc + 3] = info[0]
                acc[0] += 1  # sockets
                old = baselines.get(cookie)
                if old is None:
                    acc[1] += 1  # opened: born in this window, the previous dump did not have it
                    add_full(acc, info)
                    seen[cookie] = info
                elif info == old:
                    seen[cookie] = old  # idle: keep the one tuple (memory)
                else:
                    add_change(acc, info, old)
                    seen[cookie] = info
        # The dump is complete: from here the window closes.
        self._windows += 1
        window = self._windows
        gauges: dict[tuple, list[int]] = {}
        accs = self._acc
        for key, slot in slots.items():
            gauges[key] = slot[n_acc:]
            acc = accs.get(key)
            if acc is None:
                accs[key] = slot[:n_acc]
            else:
                for i in range(n_acc):
                    acc[i] += slot[i]

        # Sockets that left the dump: wait for their destroy message, then give up.
        unseen = 0
        for cookie, old in baselines.items():
            if cookie in seen:
                continue
            n = self._missing.get(cookie, 0) + 1
            if n > self.grace:
                self._missing.pop(cookie, None)
                unseen += 1
            else:
                self._missing[cookie] = n
                seen[cookie] = old  # keep the old baseline while waiting
        self.unseen_closes += unseen
        self.baselines = seen
        # Tombstones only need to outlive one more dump.
        self._tombstones = {c: w for c, w in tombstones.items() if w >= window - 1}

        acc_map, self._acc = self._acc, {}
        if first:
            return Window(level=self.level, baseline=True, sockets=count)
        return self._publish(acc_map, gauges, count, unseen)

    # -- publishing ------------------------------------------------------------------------------
    def _publish(self, acc_map: dict[tuple, list[int]], gauges: dict[tuple, list[int]],
                 sockets: int, unseen: int) -> Window:
        diagnostics = self.level == "diagnostics"
        # Collapse (peer, local) pairs per peer at the default level.
        groups: dict[tuple, tuple[list[int], list[int] | None]] = {}
        for key, acc in acc_map.items():
            family, dst, src = key
            gkey = key if diagnostics else (address(family, dst),)
            g = gauges.get(key)
            cur = groups.get(gkey)
            if cur is None:
                groups[gkey] = (list(acc), list(g) if g else None)
                continue
            tot, gg = cur
            for i in range(_N):
                tot[i] += acc[i]
            if g:
                if gg is None:
                    groups[gkey] = (tot, list(g))
                else:
                    gg[0] = max(gg[0], g[0])
                    gg[1] = max(gg[1], g[1])
                    gg[2] = min(gg[2], g[2])
                    gg[3] = max(gg[3], g[3])

        events: list[dict[str, Any]] = []
        for gkey, (tot, g) in groups.items():
            ev: dict[str, Any] = dict(zip(_FIELDS, tot, strict=True))
            if diagnostics:
                family, dst, src = gkey
                ev["peer"] = address(family, dst)
                ev["local"] = address(family, src)
            else:
                ev["peer"] = gkey[0]
            ev["level"] = self.level
            if g is not None:
                ev["rtt_us"], ev["rttvar_us"], ev["cwnd"], ev["retransmits"] = g
            ev["flags"] = flags_of(ev)
            if not diagnostics:
                if not ev["flags"]:
                    continue
                ev = {k: ev[k] for k in DEFAULT_FIELDS if k in ev}
            events.append(ev)

        overflow = 0
        if len(events) > self.max_peers:
            events.sort(key=_sort_key, reverse=True)
            overflow = len(events) - self.max_peers
            del events[self.max_peers:]
        attributed = {k: sum(e.get(k, 0) for e in events)
                      for k in ("retrans_segs", "timeouts", "resets", "resets_in")}
        return Window(events=events, level=self.level, overflow=overflow, attributed=attributed,
                      peers_total=len(groups), sockets=sockets, unseen_closes=unseen)


# -- residual -------------------------------------------------------------------------------------

RESIDUAL_MIB: dict[str, tuple[str, str, str | None]] = {
    # residual field: (MIB group, counter, the per-peer field attributed against it)
    "retrans_segs": ("Tcp", "RetransSegs", "retrans_segs"),
    "timeouts": ("TcpExt", "TCPTimeouts", "timeouts"),
    "out_rsts": ("Tcp", "OutRsts", "resets"),
    "estab_resets": ("Tcp", "EstabResets", None),
}
"""Host-wide counters (/proc/net/snmp, /proc/net/netstat) the residual is computed from."""


def residual(mib_deltas: dict[str, dict[str, int]], window: Window) -> dict[str, int]:
    """Host-wide MIB deltas minus what the published events carry, per residual field.

    By construction ``sum(event[f]) + residual[f]`` equals the host-wide delta of the window.
    The residual can be negative in one window and positive in the next: the MIB and the dump
    are not read at the same instant, and counters a socket carries in from before it was
    first seen (SYN-ACK retransmits of its request socket) count in the kernel earlier.
    Fields whose MIB counter is missing are left out.
    """
    out: dict[str, int] = {}
    for name, (group, counter, attributed) in RESIDUAL_MIB.items():
        value = mib_deltas.get(group, {}).get(counter)
        if value is not None:
            out[name] = value - (window.attributed.get(attributed, 0) if attributed else 0)
    return out

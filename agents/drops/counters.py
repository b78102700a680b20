"""Counter-derived drops (source ``counter``): what hosts without NET_DM or tracefs still report.

The kernel counts many drops without saying which packet: interface rx/tx dropped and missed
(link stats64), qdisc drops, softnet ``dropped`` (backlog full), UDP ``RcvbufErrors`` and
``InErrors``. Their increases become drop events whose ``reason`` is named after the counter and
whose ``location`` is the counter (``Udp:RcvbufErrors``, ``link:rx_dropped``, ...).

    parse_snmp_drops(text)     /proc/net/snmp (and snmp6) -> {counter: value}   sans-IO
    parse_softnet(text)        /proc/net/softnet_stat -> {cpu: dropped}          sans-IO
    DropCounterDeltas          baseline, u32 wrap and reset handling              sans-IO
    CounterDrops               the collector: reads in one worker thread, which can enter
                               another network namespace (``netns``) so tests and containers
                               can be watched without moving the agent

These are minimal private readers; once ``agents/netstat/parse.py`` lands on main they should
be replaced by its parsers and its ``CounterDeltas``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import time
from typing import Any

from netevents.errors import CapabilityError, ConfigError

# (group, counter) in /proc/net/snmp and snmp6 -> drop reason name.
SNMP_DROPS: dict[tuple[str, str], str] = {
    ("Udp", "RcvbufErrors"): "UDP_RCVBUF_ERRORS",
    ("Udp", "InErrors"): "UDP_IN_ERRORS",
    ("Udp6", "RcvbufErrors"): "UDP6_RCVBUF_ERRORS",
    ("Udp6", "InErrors"): "UDP6_IN_ERRORS",
}
# rtnl_link_stats64 field (include/uapi/linux/if_link.h) -> reason name.
LINK_DROPS: dict[str, str] = {
    "rx_dropped": "LINK_RX_DROPPED",
    "tx_dropped": "LINK_TX_DROPPED",
    "rx_missed_errors": "LINK_RX_MISSED",
}
U32 = 1 << 32


def parse_snmp_drops(text: str) -> dict[str, int]:
    """``Group: names`` / ``Group: values`` pairs (snmp) or ``Udp6InErrors 3`` lines (snmp6)
    -> ``{"Udp:RcvbufErrors": n, ...}`` for the counters in :data:`SNMP_DROPS`.

    Never raises: malformed lines are skipped.
    """
    out: dict[str, int] = {}
    lines = text.splitlines()
    header: dict[str, list[str]] = {}
    for line in lines:
        group, sep, rest = line.partition(":")
        if sep:
            fields = rest.split()
            if group in header:
                for name, value in zip(header.pop(group), fields, strict=False):
                    if (group, name) in SNMP_DROPS:
                        with contextlib.suppress(ValueError):
                            out[f"{group}:{name}"] = int(value)
            else:
                header[group] = fields
            continue
        parts = line.split()
        if len(parts) == 2 and parts[0].startswith("Udp6"):
            name = parts[0][4:]
            if ("Udp6", name) in SNMP_DROPS:
                with contextlib.suppress(ValueError):
                    out[f"Udp6:{name}"] = int(parts[1])
    return out


def parse_softnet(text: str) -> dict[int, int]:
    """/proc/net/softnet_stat -> {cpu: dropped} (2nd hex column; the line index when the
    kernel does not print the cpu id in column 13)."""
    out: dict[int, int] = {}
    for i, line in enumerate(text.splitlines()):
        cols = line.split()
        if len(cols) < 2:
            continue
        try:
            cpu = int(cols[12], 16) if len(cols) > 12 else i
            out[cpu] = int(cols[1], 16)
        except ValueError:
            continue
    return out


class DropCounterDeltas:
    """Cumulative counters -> increases. First sight is a baseline (no delta); a decrease is a
    wrap for 32-bit counters when plausible, otherwise a reset (new baseline, no delta)."""

    def __init__(self) -> None:
        self._last: dict[tuple, int] = {}
        self.resets = 0

    def update(self, key: tuple, value: int, bits: int = 64) -> int:
        prev = self._last.get(key)
        self._last[key] = value
        if prev is None:
            return 0
        if value >= prev:
            return value - prev
        if bits == 32 and prev - value > (U32 >> 1):
            return value + U32 - prev
        self.resets += 1
        return 0


CLONE_NEWNET = 0x40000000  # include/uapi/linux/sched.h


def _setns(name: str) -> None:
    """Move the calling thread into the named network namespace (os.setns is 3.12+).

    Raises:
        OSError: no such namespace, or no CAP_SYS_ADMIN.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into netns {name!r}: {os.strerror(err)}")
    finally:
        os.close(fd)


class CounterDrops:
    """Collector: every ``interval`` s, the increase of each drop counter as a drop event.

    ``netns`` (a name under /run/netns) makes the reader thread enter that namespace.
    """

    name = "drops.counter"
    source = "counter"

    def __init__(self, *, interval: float = 1.0, netns: str | None = None,
                 proc_net: str = "/proc/thread-self/net") -> None:
        if interval <= 0:
            raise ConfigError("drops.counter_interval must be > 0")
        self.interval = interval
        self.netns = netns
        self.proc_net = proc_net
        self.deltas = DropCounterDeltas()
        self.netns_inode: int | None = None
        self._ipr: Any = None
        self._init_error: OSError | None = None

    # -- runs in the reader thread (possibly inside another netns) -----------------------------
    def _init_thread(self) -> None:
        if self.netns:
            try:
                _setns(self.netns)
            except OSError as exc:
                self._init_error = exc
                raise
        with contextlib.suppress(OSError):
            self.netns_inode = os.stat("/proc/thread-self/ns/net").st_ino

    def _read(self) -> list[tuple[tuple, int, int, dict]]:
        """(key, value, bits, event fields) for every drop counter, read now."""
        rows: list[tuple[tuple, int, int, dict]] = []
        for fname in ("snmp", "snmp6"):
            try:
                with open(f"{self.proc_net}/{fname}") as f:
                    text = f.read()
            except OSError:
                continue
            for name, value in parse_snmp_drops(text).items():
                group, _, counter = name.partition(":")
                rows.append((("snmp", name), value, 64,
                             {"reason": SNMP_DROPS[(group, counter)], "location": name}))
        with contextlib.suppress(OSError):
            with open(f"{self.proc_net}/softnet_stat") as f:
                for cpu, dropped in parse_softnet(f.read()).items():
                    rows.append((("softnet", cpu), dropped, 32,
                                 {"reason": "SOFTNET_DROPPED", "location": "softnet:dropped"}))
        rows.extend(self._read_links())
        return rows

    def _read_links(self) -> list[tuple[tuple, int, int, dict]]:
        rows: list[tuple[tuple, int, int, dict]] = []
        try:
            if self._ipr is None:
                from pyroute2 import IPRoute
                self._ipr = IPRoute()  # opened in this thread: lives in its netns
            names: dict[int, str] = {}
            for link in self._ipr.get_links():
                idx = link["index"]
                name = link.get_attr("IFLA_IFNAME")
                names[idx] = name
                st = link.get_attr("IFLA_STATS64") or {}
                for field, reason in LINK_DROPS.items():
                    if field in st:
                        rows.append((("link", idx, field), int(st[field]), 64,
                                     {"reason": reason, "location": f"link:{field}",
                                      "iface": name, "ifindex": idx}))
            for q in self._ipr.get_qdiscs():
                s2 = q.get_attr("TCA_STATS2")
                qs = s2.get_attr("TCA_STATS_QUEUE") if s2 is not None else None
                if not qs:
                    continue
                idx = q["index"]
                handle = q["handle"]
                kind = q.get_attr("TCA_KIND")
                rows.append((("qdisc", idx, handle, kind), int(qs["drops"]), 32,
                             {"reason": "QDISC_DROPS", "location": f"qdisc:{kind}:drops",
                              "iface": names.get(idx), "ifindex": idx}))
        except Exception:  # pyroute2 missing or netlink refused: proc counters still count
            self._ipr = None
        return rows

    def sample(self) -> list[dict[str, Any]]:
        """One reading -> drop events for the counters that increased (sans loop)."""
        now = time.time_ns()
        events = []
        for key, value, bits, fields in self._read():
            d = self.deltas.update(key, value, bits)
            if d > 0:
                ev = {"count": d, "source": self.source, "last_ts": now, **fields}
                if self.netns_inode is not None:
                    ev["netns"] = self.netns_inode
                events.append({k: v for k, v in ev.items() if v is not None})
        return events

    async def run(self, sink: Any) -> None:
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, initializer=self._init_thread,
                                                     thread_name_prefix="drops-counter")
        loop = asyncio.get_running_loop()
        try:
            try:
                await loop.run_in_executor(pool, self.sample)  # baseline
            except (OSError, concurrent.futures.BrokenExecutor) as exc:
                why = self._init_error or exc
                raise CapabilityError("netns", f"cannot read drop counters: {why}") from exc
            last = time.time_ns()
            while True:
                await asyncio.sleep(self.interval)
                events = await loop.run_in_executor(pool, self.sample)
                now = time.time_ns()
                for e in events:
                    e.setdefault("first_ts", last)
                    sink.emit("drop", e, t0=last, t1=now)
                last = now
        finally:
            if self._ipr is not None:
                pool.submit(self._ipr.close)
            pool.shutdown(wait=False, cancel_futures=False)

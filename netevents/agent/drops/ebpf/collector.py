"""EbpfDrops: the kfree_skb BPF program as a drop source (flow + network namespace).

Every ``tick`` (50 ms by default): flip ``ctl.active`` so the programs count into the other hash,
wait for programs still running on the old one (they are short; 2 ms is far more than one
run), then read and delete the old hash (BPF_MAP_LOOKUP_AND_DELETE_BATCH) — so no increment
races a delete and counts are exact. Sampled records come through the ring buffer
(``loop.add_reader`` on libbpf's epoll fd) and become per-packet events (count 1, flow with
IP ID / TCP seq, payload from the network header); their drops are also in the aggregate, so
each record is subtracted from its aggregate row (carried to the next window when the row
arrives later) and the sum of ``count`` over all events equals the drops counted.

Publication follows the aggregator's rule (:class:`~..aggregate.Holds`): a row whose signature
was quiet goes out at once, so a lone drop reaches subscribers in about a tick; a busy one is
held, its repeats summed, with a hold doubling from ``tick`` to ``interval``, so a storm costs one
event per signature per interval once its hold has ramped up.

Own losses: ``ebpf.ringbuf_full`` (records that found the ring full; their drops are still
counted in the aggregates) and ``ebpf.map_full`` (drops not counted: the hash was full).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import struct
import time
from collections import Counter
from typing import Any

from netevents.errors import CapabilityError, ConfigError

from ...kernel.kallsyms import Kallsyms
from ...kernel.netns import NetnsNames, resolve, scan
from ...kernel.tracefs import boottime_offset_ns
from ..aggregate import Holds
from . import layout as L
from . import libbpf
from .filter import DropFilter
from .prebuilt import PrebuiltError, prebuilt

log = logging.getLogger("netevents.agent.drops.ebpf")

PROGRAMS = ("kfree_skb_btf", "kfree_skb_raw")   # tp_btf first, raw_tp fallback
FLIP_WAIT = 0.002
RING_MIN_KB = 4


def per_cpu_total(value: bytes, ncpu: int, vsize: int) -> tuple[int, int | None, int | None]:
    """(count, first_ts, last_ts) of a row over its per-CPU values (CLOCK_BOOTTIME ns).

    The CPU that creates a row sets its first_ts; the other CPUs' values start zeroed
    (kernel/bpf/hashtab.c pcpu_init_value) and count from there without a first_ts of their
    own: a first_ts of 0 is no time, and the creator's is the row's first."""
    count, first, last = 0, None, None
    for cpu in range(ncpu):
        c, f, la = L.VAL.unpack_from(value, cpu * vsize)
        if c:
            count += c
            if f and (first is None or f < first):
                first = f
            if last is None or la > last:
                last = la
    if first is None:
        first = last
    return count, first, last


def flow_of_key(family: int, src: bytes, dst: bytes, l4: int, sport: int,
                dport: int) -> dict[str, Any] | None:
    """The wire ``flow`` dict of a key's L3/L4 fields (None when the packet had no IP keys)."""
    if family == 4:
        flow: dict[str, Any] = {"src": str(ipaddress.IPv4Address(src[:4])),
                                "dst": str(ipaddress.IPv4Address(dst[:4])), "l4": l4}
    elif family == 6:
        flow = {"src": str(ipaddress.IPv6Address(src)), "dst": str(ipaddress.IPv6Address(dst)),
                "l4": l4}
    else:
        return None
    if l4 in (6, 17, 132):
        flow["sport"], flow["dport"] = sport, dport
    return flow


class EbpfDrops:
    """Collector: drops with flow and namespace from the kfree_skb BPF program.

    Options: ``interval`` (s), ``tick`` (s between drains), ``filter`` (a parsed :class:`DropFilter`), ``sample_every``
    (0: no per-packet records; N: one record per N passing drops per CPU), ``ring_kb`` (ring
    buffer size, a power of two >= 4), ``map_entries`` (aggregation hash size),
    ``netns_refresh`` (s between namespace name scans), ``program`` (``auto``, ``btf``, ``raw``).
    """

    name = "drops.ebpf"
    source = "ebpf"

    def __init__(self, *, interval: float = 1.0, filter: DropFilter | None = None,
                 sample_every: int = 0, ring_kb: int = 256, map_entries: int = 16384,
                 netns_refresh: float = 5.0, program: str = "auto", tick: float = 0.05) -> None:
        self.interval = interval
        self.tick = min(tick, interval)
        self._holds = Holds(self.tick, interval)
        self._held: dict[bytes, dict[str, Any]] = {}  # key -> its row, summed while held
        self._t0 = time.time_ns()  # the start of the next batch's window
        self.filter = filter or DropFilter()
        self.sample_every = sample_every
        self.ring_kb = max(RING_MIN_KB, 1 << (max(ring_kb, 1) - 1).bit_length())
        self.map_entries = map_entries
        self.netns_refresh = netns_refresh
        self.program = program
        self.netns = NetnsNames()
        self.ready = asyncio.Event()
        """Set once the program is attached (tests and benchmarks wait on it)."""
        self.attached: str | None = None
        """The program that is attached: kfree_skb_btf or kfree_skb_raw."""
        self.obj: libbpf.BpfObject | None = None
        self.ring: libbpf.RingBuffer | None = None
        self.reasons: dict[int, str] = {}
        self.kallsyms = Kallsyms([])
        self._locations: dict[int, str] = {}
        self._ifaces: dict[int, str] = {}
        self._own_netns = own_netns()
        self._ncpu = 1
        self._fds: dict[str, int] = {}
        self._active = 0
        self._clock = boottime_offset_ns()
        self._packets: list[dict[str, Any]] = []
        self._credit: Counter[bytes] = Counter()
        self._loss_seen = [0, 0]
        self._last_error = ""
        self._scanned = 0.0
        self.totals = Counter()
        """Drops/records/losses over the collector's life: counted, records, map_full, ringbuf_full."""

    # -- setup (blocking: runs in a thread) ---------------------------------------------------
    def open(self) -> None:
        """Load and attach the shipped program (prebuilt.py), names from the kernel's BTF.

        Raises:
            CapabilityError: no BTF, a missing or stale object, no libbpf, no CAP_BPF/CAP_PERFMON, or the kernel
                refuses the program (the message is the one line the agent prints).
        """
        try:
            built = prebuilt()
        except PrebuiltError as exc:
            raise CapabilityError("ebpf", str(exc)) from None
        self.reasons = built.reasons
        numbers = {v: k for k, v in built.reasons.items()}
        try:
            kernel_filter = self.filter.compile(numbers) if self.filter else bytes(L.FILTER.size)
        except ConfigError as exc:
            raise CapabilityError("ebpf", str(exc)) from None
        try:
            libbpf.load_library()
            self._ncpu = libbpf.possible_cpus()
        except OSError as exc:
            raise CapabilityError("ebpf", str(exc)) from None
        order = {"auto": PROGRAMS, "btf": PROGRAMS[:1], "raw": PROGRAMS[1:]}[self.program]
        errors = []
        for prog in order:
            obj = None
            try:
                obj = libbpf.BpfObject(str(built.obj))
                for other in PROGRAMS:
                    obj.set_autoload(other, other == prog)
                obj.set_max_entries("records", self.ring_kb * 1024)
                obj.set_max_entries("agg0", self.map_entries)
                obj.set_max_entries("agg1", self.map_entries)
                obj.load()
                self._fds = {m: obj.map_fd(m) for m in ("agg0", "agg1", "ctl", "filter", "losses",
                                                         "records")}
                libbpf.update(self._fds["filter"], b"\0\0\0\0", kernel_filter)
                libbpf.update(self._fds["ctl"], b"\0\0\0\0", L.CTL.pack(0, self.sample_every))
                obj.attach(prog)
            except OSError as exc:
                errors.append(f"{prog}: {exc.strerror or exc}")
                if obj is not None:
                    obj.close()
                continue
            self.obj, self.attached = obj, prog
            break
        if self.obj is None:
            perm = any("not permitted" in e or "denied" in e for e in errors)
            hint = " (needs CAP_BPF and CAP_PERFMON, or root)" if perm else ""
            raise CapabilityError("ebpf", f"cannot load the kfree_skb program{hint}: "
                                  + "; ".join(errors))
        if self.sample_every:
            try:
                self.ring = libbpf.RingBuffer(self._fds["records"], self.on_record)
            except OSError as exc:
                self.close()
                raise CapabilityError("ebpf", f"ring buffer: {exc.strerror or exc}") from None
        self.kallsyms = Kallsyms.load()
        scan(self.netns)

    def close(self) -> None:
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        if self.obj is not None:
            self.obj.close()
            self.obj = None

    # -- reading --------------------------------------------------------------------------------
    def _location(self, pc: int) -> str:
        loc = self._locations.get(pc)
        if loc is None:
            loc = self._locations[pc] = self.kallsyms.resolve(pc)
        return loc

    def _base(self, key: bytes) -> tuple[dict[str, Any], bool]:
        """The event fields of an aggregation key, and whether the user-space filter passes."""
        (loc, netns, reason, ifindex, proto, l4, family, src, dst, sport, dport,
         _pad) = L.KEY.unpack(key)
        name = self.reasons.get(reason, f"0x{reason:x}")
        event: dict[str, Any] = {"source": self.source, "reason": name, "pc": loc,
                                 "location": self._location(loc)}
        if netns:
            event["netns"] = netns  # netns_name is added in collect(), after any rescan
        if ifindex:
            event["ifindex"] = ifindex
            if netns == self._own_netns:
                iface = self._ifaces.get(ifindex)
                if iface is None:
                    iface = self._ifaces[ifindex] = iface_name(ifindex) or ""
                if iface:
                    event["iface"] = iface
        if proto:
            event["proto"] = proto
        flow = flow_of_key(family, src, dst, l4, sport, dport)
        if flow:
            event["flow"] = flow
        ok = True
        if self.filter:
            f = flow or {}
            ok = self.filter.match(name, netns or None, ifindex or None, f.get("l4"),
                                   f.get("src"), f.get("dst"), f.get("sport"), f.get("dport"))
        return event, ok

    def on_record(self, data: bytes) -> None:
        """One ring-buffer record -> a per-packet event (count 1); its aggregate gets a credit.

        Called from libbpf's ring_buffer__consume through ctypes, where an exception would only
        be printed: a record that cannot be read is counted (``bad_records``) instead.
        """
        try:
            self._record(data)
        except (ValueError, struct.error) as exc:
            self.totals["bad_records"] += 1
            log.debug("ebpf: bad record: %s", exc)

    def _record(self, data: bytes) -> None:
        if len(data) < L.RECORD_SIZE:
            raise ValueError(f"record of {len(data)} bytes, expected {L.RECORD_SIZE}")
        key, ts, orig_len, tcp_seq, ip_id, caplen, _pad = L.RECORD_HEAD.unpack_from(data)
        self._credit[key] += 1
        self.totals["records"] += 1
        event, ok = self._base(key)
        if not ok:
            return
        event["count"] = 1
        event["first_ts"] = event["last_ts"] = ts + self._clock
        event["orig_len"] = orig_len
        event["payload"] = bytes(data[L.RECORD_HEAD.size:L.RECORD_HEAD.size + min(caplen,
                                                                              L.PAYLOAD_MAX)])
        flow = event.get("flow")
        if flow is not None:
            if flow.get("l4") is not None and ":" not in flow["src"]:
                flow["ip_id"] = ip_id
            if flow.get("l4") == 6:
                flow["tcp_seq"] = tcp_seq
        self._packets.append(event)

    def _consume(self) -> None:
        if self.ring is not None:
            self.ring.consume()

    def _losses(self) -> tuple[int, int]:
        """New (map_full, ringbuf_full) since the last call, summed over CPUs."""
        new = []
        for idx in (L.LOSS_MAP_FULL, L.LOSS_RINGBUF_FULL):
            raw = libbpf.lookup(self._fds["losses"], idx.to_bytes(4, "little"), 8 * self._ncpu)
            total = sum(int.from_bytes(raw[i * 8:(i + 1) * 8], "little")
                        for i in range(self._ncpu)) if raw else 0
            new.append(total - self._loss_seen[idx])
            self._loss_seen[idx] = total
        return new[0], new[1]

    async def collect(self) -> tuple[list[dict[str, Any]], int, int]:
        """One window: (events, map_full, ringbuf_full). Flips, waits, drains, consumes."""
        rows, map_full, ring_full = await self._drain()
        return [e for _k, e in rows], map_full, ring_full

    async def _drain(self) -> tuple[list[tuple[bytes | None, dict[str, Any]]], int, int]:
        """One window as (key, event) rows (key None: a per-packet record), and the losses."""
        old = self._active
        self._active ^= 1
        libbpf.update(self._fds["ctl"], b"\0\0\0\0", L.CTL.pack(self._active, self.sample_every))
        await asyncio.sleep(FLIP_WAIT)
        vsize = L.VAL.size  # already a multiple of 8: per-CPU values are packed by 8
        rows = libbpf.drain(self._fds[f"agg{old}"], L.KEY.size, vsize * self._ncpu)
        self._consume()  # every record of a drop counted in the old hash is in the ring now
        out: list[tuple[bytes | None, dict[str, Any]]] = []
        for key, value in rows:
            count, first, last = per_cpu_total(value, self._ncpu, vsize)
            self.totals["counted"] += count
            credit = self._credit.pop(key, 0)
            if credit > count:
                self._credit[key] = credit - count  # records ahead of their aggregate
                credit = count
            count -= credit
            if count <= 0:
                continue
            event, ok = self._base(key)
            if not ok:
                continue
            event["count"] = count
            event["first_ts"] = first + self._clock
            event["last_ts"] = last + self._clock
            out.append((key, event))
        out.extend((None, e) for e in self._packets)
        self._packets = []
        await self._name_namespaces([e for _k, e in out])
        map_full, ring_full = self._losses()
        self.totals["map_full"] += map_full
        self.totals["ringbuf_full"] += ring_full
        return out, map_full, ring_full

    async def _name_namespaces(self, events: list[dict[str, Any]]) -> None:
        """Set ``netns_name``; a namespace not seen before triggers a rescan (at most 1/s)."""
        names = self.netns.names
        if any(e.get("netns") not in names for e in events if "netns" in e) and (
                time.monotonic() - self._scanned > 1.0):
            self._scanned = time.monotonic()
            await asyncio.to_thread(scan, self.netns)
            names = self.netns.names
        for e in events:
            name = names.get(e.get("netns"))
            if name:
                e["netns_name"] = name

    async def _refresh_names(self) -> None:
        while True:
            await asyncio.sleep(self.netns_refresh)
            try:
                await asyncio.to_thread(scan, self.netns)
                self._scanned = time.monotonic()
            except OSError as exc:  # a vanished /proc entry mid-scan is not worth more
                log.debug("netns scan: %s", exc)

    async def run(self, sink: Any) -> None:
        for place in ("ebpf.ringbuf_full", "ebpf.map_full"):
            sink.declare_loss(place)
        if self.filter.netns:
            self.filter.resolve_netns(resolve)
        await asyncio.to_thread(self.open)
        loop = asyncio.get_running_loop()
        try:
            if self.ring is not None:
                loop.add_reader(self.ring.fd, self._consume)
            log.info("ebpf: %s attached (ring %d KiB, %s)", self.attached, self.ring_kb,
                     f"1 packet in {self.sample_every} sampled" if self.sample_every
                     else "no packet sampling: counts only")
            self.ready.set()
            async with asyncio.TaskGroup() as tg:
                names = tg.create_task(self._refresh_names())
                try:
                    self._t0 = time.time_ns()
                    while True:
                        await asyncio.sleep(self.tick)
                        try:
                            await self._emit(sink)
                        except OSError as exc:
                            # A map syscall failed: what was not drained stays in the map
                            # and is read next window. Said once per distinct error.
                            if str(exc) != self._last_error:
                                log.warning("ebpf: reading the maps: %s", exc)
                                self._last_error = str(exc)
                            continue
                finally:
                    names.cancel()
        finally:
            if self.ring is not None:
                loop.remove_reader(self.ring.fd)
            try:
                if self.obj is not None:
                    await asyncio.shield(self._emit(sink, final=True))  # last window
            except Exception as exc:  # noqa: BLE001 - closing must happen whatever the last read did
                log.debug("ebpf: last window: %s", exc)
            self.close()

    async def _emit(self, sink: Any, final: bool = False) -> None:
        """Drain one tick; publish what is due (everything when ``final``) as one batch at
        once, covering the time since the previous batch."""
        rows, map_full, ring_full = await self._drain()
        now = time.monotonic()
        held, events = self._held, []
        for key, e in rows:
            if key is None:
                events.append(e)
                continue
            h = held.get(key)
            if h is None:
                held[key] = e
            else:
                h["count"] += e["count"]
                h["first_ts"] = min(h["first_ts"], e["first_ts"])
                h["last_ts"] = max(h["last_ts"], e["last_ts"])
        for key in list(held):
            if final or self._holds.ready(key, now):
                events.append(held.pop(key))
        self._holds.sweep(now, held)
        if events:
            t1 = time.time_ns()
            sink.emit_batch("drop", events, t0=self._t0, t1=t1)
            self._t0 = t1
        if map_full:
            sink.lost("ebpf.map_full", map_full)
        if ring_full:
            sink.lost("ebpf.ringbuf_full", ring_full)


def iface_name(ifindex: int) -> str | None:
    """Name of an interface of the agent's own namespace (others' indexes mean nothing here)."""
    try:
        return socket.if_indextoname(ifindex)
    except OSError:
        return None


def own_netns() -> int | None:
    try:
        return os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return None

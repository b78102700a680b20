"""Sans-IO drop aggregation: a storm of a million freed packets becomes a handful of events.

Every source (tracepoint, NET_DM, dwdump captures, counters) turns what it reads into
:class:`DropSample` records (or, on the tracepoint's hot path, a key tuple and a timestamp) and
hands them to one :class:`DropAggregator`. Per window the aggregator keeps one row per
signature ``(location, reason, iface, ifindex, proto, netns, origin, hw_trap, hw_group, pc)``
with ``count``, ``first_ts`` and ``last_ts``; :meth:`DropAggregator.flush` returns the rows as
wire dicts (``DropEvent`` fields) and starts a new window.

Packet mode (NET_DM packet mode, or a ``packet_filter`` asking for it): samples carrying a
payload become per-packet events (``count`` 1, ``payload``, ``orig_len``, ``flow``) up to
``packet_cap`` per window. Packets over the cap fold into their aggregate row (so the sum of
``count`` over all events stays exact) and are counted in ``packet_overflow``: the detail that
was not kept, for the collector to report as its own loss.

Publication (:meth:`DropAggregator.due`, called every ``tick``): a signature that was quiet goes
out at the next tick, so a lone drop reaches subscribers in about ``tick`` (50 ms by default);
while a signature keeps dropping, its hold doubles on every publication that finds it busy
again, from ``tick`` up to ``interval``, and its repeats are summed meanwhile. Under a storm a
signature is therefore published at most ``1 + log2(interval / tick)`` times while its hold
ramps up and then once per ``interval`` -- the bus load is bounded by the number of signatures,
never by the drop rate -- and the sum of ``count`` stays exact.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any

# Ethertypes (include/uapi/linux/if_ether.h).
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_HLEN = 14

# The aggregation key, in this order (kept a plain tuple: it is hashed once per drop).
KEY_FIELDS = ("location", "reason", "iface", "ifindex", "proto", "netns", "origin",
              "hw_trap", "hw_group", "pc")
DropKey = tuple


@dataclass(slots=True)
class DropSample:
    """One observed drop (or ``count`` identical ones) as a source saw it."""

    reason: str = "NOT_SPECIFIED"
    location: str | None = None
    pc: int | None = None
    iface: str | None = None
    ifindex: int | None = None
    proto: int | None = None
    netns: int | None = None
    origin: str = "sw"
    hw_trap: str | None = None
    hw_group: str | None = None
    ts: int | None = None
    count: int = 1
    payload: bytes | None = None
    orig_len: int | None = None

    def key(self) -> DropKey:
        return (self.location, self.reason, self.iface, self.ifindex, self.proto, self.netns,
                self.origin, self.hw_trap, self.hw_group, self.pc)


class Holds:
    """When a signature may be published again (the rule of :meth:`DropAggregator.due`, also
    the eBPF source's, which aggregates in the kernel and drains every tick).

    A signature never seen (or quiet) is ready at once; one published less than its hold ago
    is held; publishing one that was busy all along (its previous publication at most a tick
    after its hold ended) doubles its hold, up to ``interval``; a quiet one starts again at
    ``tick``. Signatures quiet for two intervals are forgotten, so the state stays bounded.
    Times are the caller's monotonic clock, in seconds.
    """

    def __init__(self, tick: float, interval: float) -> None:
        self.tick, self.interval = tick, interval
        self._holds: dict[Any, list[float]] = {}  # key -> [last publication, hold]
        self._swept = 0.0

    def ready(self, key: Any, now: float) -> bool:
        h = self._holds.get(key)
        if h is None:
            self._holds[key] = [now, self.tick]
            return True
        since = now - h[0]
        if since < h[1] - self.tick / 2:  # ticks come a little late, never early
            return False
        h[1] = min(h[1] * 2, self.interval) if since <= h[1] + 1.5 * self.tick else self.tick
        h[0] = now
        return True

    def sweep(self, now: float, keep: Container[Any]) -> bool:
        """Once per ``interval``: forget quiet signatures (not those in ``keep``, still held).
        True when it swept (a new window begins)."""
        if now - self._swept < self.interval:
            return False
        self._swept = now
        top = self.interval
        self._holds = {k: h for k, h in self._holds.items() if now - h[0] < 2 * top or k in keep}
        return True


class DropAggregator:
    """Aggregates drops per signature and window; optionally keeps packets (bounded).

    ``source`` is the ``source`` field of every event (``tracepoint``, ``netdm``, ...).
    ``packet_filter(sample) -> bool`` selects which samples with a payload are kept as
    per-packet events (default: all of them when ``packet_mode`` is on, none otherwise).
    """

    def __init__(self, source: str, *, packet_mode: bool = False, packet_cap: int = 256,
                 packet_filter: Callable[[DropSample], bool] | None = None,
                 tick: float = 0.05, interval: float = 1.0) -> None:
        if packet_cap < 0:
            raise ValueError("packet_cap must be >= 0")
        if not 0 < tick <= interval:
            raise ValueError(f"tick must be > 0 and <= interval, got {tick} and {interval}")
        self.tick = tick
        self.interval = interval
        self._holds = Holds(tick, interval)
        self._kept = 0  # packets kept in this window (packet_cap), published or not
        self.source = source
        self.packet_mode = packet_mode or packet_filter is not None
        self.packet_cap = packet_cap
        self.packet_filter = packet_filter
        # key -> [count, first_ts, last_ts]; a list so the hot path mutates in place.
        self._rows: dict[DropKey, list] = {}
        self._packets: list[dict[str, Any]] = []
        self.packet_overflow = 0
        """Packets of this window folded into aggregates because of ``packet_cap``."""
        self.total = 0
        """Drops added over the aggregator's life (sum of counts)."""

    def __len__(self) -> int:
        return len(self._rows) + len(self._packets)

    def add_key(self, key: DropKey, ts: int | None, count: int = 1,
                last_ts: int | None = None) -> None:
        """Hot path: count ``count`` drops of signature ``key`` seen from ``ts`` to ``last_ts``."""
        last = ts if last_ts is None else last_ts
        row = self._rows.get(key)
        if row is None:
            self._rows[key] = [count, ts, last]
        else:
            row[0] += count
            if ts is not None and (row[1] is None or ts < row[1]):
                row[1] = ts
            if last is not None and (row[2] is None or last > row[2]):
                row[2] = last
        self.total += count

    def add(self, sample: DropSample) -> None:
        """Count one sample; keep it as a per-packet event when packet mode asks for it."""
        if sample.payload is not None and self.packet_mode and (
                self.packet_filter is None or self.packet_filter(sample)):
            if self._kept < self.packet_cap and sample.count == 1:
                self._packets.append(self._packet_event(sample))
                self._kept += 1
                self.total += 1
                return
            self.packet_overflow += sample.count
        self.add_key(sample.key(), sample.ts, sample.count)

    def _packet_event(self, s: DropSample) -> dict[str, Any]:
        event = self._event(s.key(), 1, s.ts, s.ts)
        event["payload"] = bytes(s.payload or b"")
        if s.orig_len is not None:
            event["orig_len"] = s.orig_len
        flow = flow_of(event["payload"], s.proto)
        if flow:
            event["flow"] = flow
        return event

    def _event(self, key: DropKey, count: int, first: int | None, last: int | None) -> dict[str, Any]:
        event: dict[str, Any] = {"count": count, "source": self.source}
        for name, value in zip(KEY_FIELDS, key, strict=True):
            if value is not None:
                event[name] = value
        if first is not None:
            event["first_ts"] = first
        if last is not None:
            event["last_ts"] = last
        return event

    def flush(self) -> list[dict[str, Any]]:
        """The window's events (aggregates first, then kept packets); starts a new window.

        ``packet_overflow`` is reset too: read it before flushing.
        """
        events = [self._event(k, r[0], r[1], r[2]) for k, r in self._rows.items()]
        events.extend(self._packets)
        self._rows = {}
        self._packets = []
        self._kept = 0
        self.packet_overflow = 0
        return events

    def due(self, now: float) -> list[dict[str, Any]]:
        """The rows whose signature may be published at ``now`` (a monotonic clock, seconds),
        and the kept packets; held rows stay for a later call (or :meth:`flush`).

        A signature published less than its hold ago is held. Publishing one whose previous
        publication was at most one tick after its hold ended (it was busy all along) doubles
        its hold, up to ``interval``; a signature that was quiet starts again at ``tick``.
        Signatures quiet for two intervals are forgotten (the state stays bounded).
        """
        ready = self._holds.ready
        events: list[dict[str, Any]] = []
        held: dict[DropKey, list] = {}
        for key, r in self._rows.items():
            if not ready(key, now):
                held[key] = r
                continue
            events.append(self._event(key, r[0], r[1], r[2]))
        self._rows = held
        if self._packets:
            events.extend(self._packets)
            self._packets = []
        if self._holds.sweep(now, held):  # a new packet_cap window
            self._kept = 0
        return events

    def take_overflow(self) -> int:
        """Packets folded into aggregates since the last call (for ``sink.lost``)."""
        n, self.packet_overflow = self.packet_overflow, 0
        return n


# ---------------------------------------------------------------------------------------------
# Flow keys of a dropped packet's payload (the fingerprint frame summaries also carry).

def flow_of(payload: bytes, proto: int | None) -> dict[str, Any] | None:
    """L3/L4 keys of a payload that starts at the Ethernet or the network header, or None.

    Never raises: a truncated or unknown payload gives the keys that could be read.
    """
    data = memoryview(payload)
    off = 0
    version = data[0] >> 4 if len(data) else 0
    # NET_DM copies from the MAC header on receive and the network header on transmit: accept
    # both, and trust an Ethernet header only when its ethertype is the one the kernel named.
    if len(data) >= ETH_HLEN + 20:
        ethertype = struct.unpack_from("!H", data, 12)[0]
        if ethertype == ETH_P_8021Q and len(data) >= ETH_HLEN + 24:
            ethertype = struct.unpack_from("!H", data, 16)[0]
            skip = ETH_HLEN + 4
        else:
            skip = ETH_HLEN
        if ethertype in (ETH_P_IP, ETH_P_IPV6) and (proto is None or proto == ethertype
                                                      or version not in (4, 6)):
            off = skip
    try:
        version = data[off] >> 4
        if version == 4 and len(data) >= off + 20:
            ihl = (data[off] & 0x0F) * 4
            ip_id, = struct.unpack_from("!H", data, off + 4)
            l4 = data[off + 9]
            flow: dict[str, Any] = {
                "src": str(ipaddress.IPv4Address(bytes(data[off + 12:off + 16]))),
                "dst": str(ipaddress.IPv4Address(bytes(data[off + 16:off + 20]))),
                "l4": l4, "ip_id": ip_id}
            l4off = off + ihl
        elif version == 6 and len(data) >= off + 40:
            l4 = data[off + 6]
            flow = {"src": str(ipaddress.IPv6Address(bytes(data[off + 8:off + 24]))),
                    "dst": str(ipaddress.IPv6Address(bytes(data[off + 24:off + 40]))),
                    "l4": l4}
            l4off = off + 40
        else:
            return None
        if l4 in (6, 17) and len(data) >= l4off + 4:
            flow["sport"], flow["dport"] = struct.unpack_from("!HH", data, l4off)
            if l4 == 6 and len(data) >= l4off + 8:
                flow["tcp_seq"], = struct.unpack_from("!I", data, l4off + 4)
        return flow
    except (IndexError, struct.error):
        return None

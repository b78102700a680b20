"""Correlate across hosts: drop storms, path loss between hosts, peer views -> ``incident`` events.

Sans-IO core: :class:`Correlator` is fed decoded batches (``feed``) and the clock (``tick``) and
returns :class:`~netevents.events.IncidentEvent` records; it never touches a socket or a loop.
Every piece of state is bounded and what is evicted is counted (``evicted``). The thin asyncio
shell :func:`run_correlate` subscribes, feeds, ticks and publishes ``incident`` batches
(``netevents correlate``).

Three incident types:

drop_storm
    The same (reason, location) seen on >= ``storm_hosts`` hosts within ``window`` seconds:
    one incident listing the hosts, their counts and first/last seen (re-published only when
    more hosts join the same episode, with the same ``episode`` id).
path_loss
    Frame summaries seen leaving host A (``dir`` 4, outgoing) and arriving at host B are matched
    by a fingerprint of fields no hop changes (see :func:`fingerprint`). After ``grace`` seconds
    an unmatched departure is judged: *unknown* when B's capture had a gap (or B's frame batches
    a sequence hole) covering its time, else *lost*; a loss that coincides with a drop event
    attributed to B (or machine-wide on B's machine) names that reason. A departure is judged
    only once B's capture is known past it: B's frames published a grace period later, *and*
    every gap record B's ring had made by then (frame batches count them in ``gaps_before``;
    gap records travel in their own batches and can arrive after the frames that follow them).
peer
    Host A's per-IP retransmits toward B's address next to B's drops and B's per-IP view of A.

Drop attribution. Counter-derived drops (``source`` counter) are read from one namespace's
``/proc/net`` and belong to the host that published them. Kernel-wide sources (tracepoint,
NET_DM, eBPF, dwdump) see every namespace of a machine: a drop is given to a namespace host
only when the event says which (``netns_name`` equal to a host token, or a ``netns`` inode that
host's own counter events carry); otherwise it is *machine-wide*, keyed by the boot id of the
machine (several agents on one machine report the same drop: they are not added up).
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import logging
import socket
import time
import zlib
from collections import Counter, OrderedDict, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from ..codec import Batch
from ..errors import ConfigError
from ..events import IncidentEvent, ring_key
from .ringorder import Released, RingOrderHold, gaps_owed

log = logging.getLogger("netevents.correlate")

KERNEL_WIDE = frozenset({"tracepoint", "netdm", "ebpf", "dwdump"})
NS = 1_000_000_000

# sll_pkttype values (include/uapi/linux/if_packet.h): PACKET_HOST 0, BROADCAST 1,
# MULTICAST 2, OTHERHOST 3, OUTGOING 4.
PACKET_OUTGOING = 4
_ARRIVING = (0, 1, 2)

# Ethernet / IP constants (include/uapi/linux/if_ether.h, in.h).
ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_8021AD = 0x0800, 0x86DD, 0x8100, 0x88A8
IPPROTO_TCP, IPPROTO_UDP = 6, 17
MAX_FRAME = 1522
"""Longest standard Ethernet frame (1500 MTU + header + one VLAN tag). A longer TCP frame at a
tap is a segmentation-offload super-packet (or a jumbo frame): see Departure.offload."""
PAYLOAD_HASHED = 32
"""Bytes of L4 payload hashed into the fingerprint (both captures must have kept them)."""


# ---------------------------------------------------------------------------------------------
# fingerprint

def _l4_payload(head: bytes | None, l4: int | None) -> bytes:
    """The bytes after the L3 and L4 headers present in ``head`` (at most PAYLOAD_HASHED).

    TTL / hop limit and the IP and L4 checksums change per hop (and the L4 checksum with NAT),
    so the headers are skipped: the invariant header fields are already in the fingerprint. For
    protocols without ports (ICMP) the L4 header past type/code/checksum is kept (echo id, seq).
    """
    if not head or len(head) < 14:
        return b""
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
                head: bytes | None) -> bytes | None:
    """A 16-byte digest of what stays the same on every hop; None for frames without L3 keys."""
    if not src or not dst or l4 is None:
        return None
    return hashlib.blake2b(b"".join((bytes(src), bytes(dst), repr((l4, sport, dport, ip_id, tcp_seq)).encode(),
                                     _l4_payload(head, l4))), digest_size=16).digest()


def dropped_packet_fingerprint(event: dict) -> bytes | None:
    """The :func:`fingerprint` of the packet a sampled drop event carries, or None.

    Only the eBPF source's per-packet events qualify: their ``payload`` starts at the network
    header (an Ethernet header is put in front, as the capture saw it) and their ``flow`` has
    the IP ID and TCP sequence number the frames are matched by.
    """
    flow = event.get("flow")
    payload = event.get("payload")
    if event.get("source") != "ebpf" or not isinstance(flow, dict) or not isinstance(payload, bytes):
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


# Which drop reasons can explain a frame seen leaving A's capture and missing from B's. The
# captures are AF_PACKET taps: on egress after the qdisc (dev_queue_xmit_nit), on ingress in
# __netif_receive_skb_core before tc/netfilter ingress and the IP stack. So a drop inside B
# explains a missing frame only if it happens before B's tap (device, ring, backlog, XDP);
# a drop elsewhere on the machine (a bridge or router namespace on the path, or machine-wide
# when the namespace is not known) also through qdiscs, tc and netfilter. Socket and protocol
# drops on B (SOCKET_RCVBUFF, NO_SOCKET, TCP_*, ...) happen after B saw the frame: never.
_BEFORE_RX_TAP = ("LINK_RX", "LINK_", "DEV_", "FULL_RING", "CPU_BACKLOG", "SOFTNET", "XDP", "MAC_",
                  "NOMEM", "PFMEMALLOC", "TAP_", "SKB_CSUM", "HDR_TRUNC")
_ON_THE_PATH = _BEFORE_RX_TAP + ("QDISC", "NETFILTER", "TC_", "BRIDGE", "NEIGH", "TUNNEL", "IP_TUNNEL",
                                 "VXLAN", "CAKE", "FQ_", "DUALPI2", "QUEUE_PURGE", "RECURSION",
                                 "NO_TX_TARGET", "IP_OUTNOROUTES", "IP_INNOROUTES", "OTHERHOST",
                                 "PKT_TOO_BIG", "BPF_CGROUP_EGRESS", "SECURITY_HOOK", "LINK_TX")


def can_explain_path_loss(reason: str, scope: str) -> bool:
    """Could a drop of ``reason`` (at ``scope``: "host" = inside the receiver) hide a frame
    between the sender's and the receiver's capture taps?"""
    return reason.startswith(_BEFORE_RX_TAP if scope == "host" else _ON_THE_PATH)


def _quantile(values: list[int], q: float) -> int | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# ---------------------------------------------------------------------------------------------
# state records

@dataclass(slots=True)
class Departure:
    host: str
    ts: int
    ts_src: int
    dst: str | None
    src: str | None = None
    offload: bool = False
    """A TCP frame longer than any Ethernet frame: a segmentation-offload (GSO/TSO) super-packet
    as the sender's tap saw it, which a qdisc, a device or the NIC may cut into segments on
    the way: its absence at the receiver proves nothing."""


@dataclass(slots=True)
class Arrival:
    host: str
    ts: int
    ts_src: int


@dataclass
class PairStats:
    """Path A -> B: cumulative counts, the reasons losses coincided with, recent delays."""

    delivered: int = 0
    lost: int = 0
    unknown: int = 0
    unknown_offload: int = 0
    """Of ``unknown``: offload super-packets that did not arrive whole (see Departure.offload)."""
    delays_ns: deque = field(default_factory=lambda: deque(maxlen=2048))
    ts_sources: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    named_by_packet: int = 0
    """Losses whose reason is the drop event of that very packet (a sampled drop), not a vote."""
    first_ts: int | None = None
    last_ts: int | None = None
    reported_lost: int = 0
    reported_unknown: int = 0

    def seen(self, ts: int) -> None:
        self.first_ts = ts if self.first_ts is None else min(self.first_ts, ts)
        self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)


@dataclass
class StormEntry:
    count_by_reporter: Counter = field(default_factory=Counter)
    first_ts: int = 0
    last_ts: int = 0
    how: str = ""

    @property
    def count(self) -> int:
        # Several agents on one machine report the same kernel-wide drops: not added up.
        return max(self.count_by_reporter.values(), default=0)


@dataclass
class Storm:
    entities: dict[str, StormEntry] = field(default_factory=dict)
    episode: int = 0
    reported: frozenset = frozenset()
    last_report: int = 0
    dirty: bool = False
    """More hosts joined since the last report; re-reported after report_interval (tick)."""


def partition_of(key: bytes, n: int) -> int:
    """The member (0 .. n-1) of ``n`` partitioned correlators that owns ``key`` (stable across
    processes and machines: crc32, not Python's salted hash)."""
    return zlib.crc32(key) % n


def parse_partition(text: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N).

    Raises:
        ConfigError: if it is not two integers with 0 <= K < N.
    """
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--partition must look like K/N (e.g. 0/2), got {text!r}") from None
    if not 0 <= k < n:
        raise ConfigError(f"--partition {text}: K must be 0 .. N-1")
    return k, n


SOURCE_NAMES = {0: "fallback", 1: "software", 2: "hardware"}


# ---------------------------------------------------------------------------------------------
# the correlator

class Correlator:
    """Sans-IO cross-host correlation.

    Args:
        window: seconds a drop storm's evidence stays together; also the peer-incident window.
        storm_hosts: hosts on which the same (reason, location) must rise to make a storm.
        grace: seconds a departed frame waits for its arrival before it is judged -- and the
            receiver's capture must have published frames that much later than it (or the
            frame waits up to max(10 s, 5 x grace); a receiver that never got past it makes the
            frame unknown).
        max_frames: frames waiting for their match (departures and arrivals each); the oldest
            is evicted past that and counted in ``evicted["frames"]`` -- it is never judged.
        max_keys: storms, pairs, hosts, drop records kept; evictions counted by place.
        report_interval: seconds between two path_loss incidents of one pair.
        peer_min_retrans: retransmits toward a peer in one ipstat window that make a peer incident.
        gap_slack: seconds a capture gap's edges are widened by (block placement uncertainty):
            a missing frame that close to a gap is unknown, not lost.
        partition: ``(k, n)``: this instance is member ``k`` of ``n`` correlators that each see
            the whole stream and share the work by key (see :func:`partition_of`): path loss
            by the pair of addresses (both directions of a path stay together), drop storms by
            (reason, location), peer incidents by (host, peer). Every member keeps what it
            needs to explain its own incidents (addresses, capture progress and gaps, recent
            drops, the peer views). ``(0, 1)``: one correlator does everything.

    Raises:
        ConfigError: for a partition that is not ``0 <= k < n``.
    """

    def __init__(self, *, window: float = 10.0, storm_hosts: int = 2, grace: float = 3.0,
                 max_frames: int = 200_000, max_keys: int = 10_000, report_interval: float = 5.0,
                 peer_min_retrans: int = 1, gap_slack: float = 0.2,
                 partition: tuple[int, int] = (0, 1)) -> None:
        k, n = partition
        if not (isinstance(k, int) and isinstance(n, int) and 0 <= k < n):
            raise ConfigError(f"partition must be K/N with 0 <= K < N, got {k}/{n}")
        self.part_k, self.part_n = k, n
        self.window_ns = int(window * NS)
        self.storm_hosts = storm_hosts
        self.grace_ns = int(grace * NS)
        self.max_wait_ns = int(max(10.0, 5 * grace) * NS)
        self.gap_slack_ns = int(gap_slack * NS)
        self.max_frames = max_frames
        self.max_keys = max_keys
        self.report_ns = int(report_interval * NS)
        self.peer_min_retrans = peer_min_retrans
        self.evicted: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self.stream_time = 0
        """The latest batch end time fed (ns): the correlator's clock (see :meth:`tick`)."""
        # where hosts are: address -> host, host -> boot id, netns inode -> host
        self.addr_host: OrderedDict[str, str] = OrderedDict()
        self.host_boot: dict[str, str] = {}
        self.boot_hosts: dict[str, set[str]] = {}
        self.netns_host: dict[int, str] = {}
        # inputs: batches missed per (host, kind), from the subscription's sequence tracker
        self.missed: Counter[tuple[str, str]] = Counter()
        # drop storms and recent drops per entity
        self.storms: OrderedDict[tuple[str, str], Storm] = OrderedDict()
        self.recent_drops: OrderedDict[str, deque[tuple]] = OrderedDict()
        """Per machine (boot id of the reporting agent, else its host): recent drop records
        (last_ts, entity, machine, reason, location, how, count, (flow src, dst) or None), so
        judging a loss on B reads B's machine only. At most ``max_recent_drops`` records in
        all; the oldest of the least recently active machine goes first (counted)."""
        self.max_recent_drops = 200_000
        self._recent_total = 0
        self.drop_totals: OrderedDict[tuple[str, str, str], list] = OrderedDict()
        # path loss
        self.departures: OrderedDict[bytes, Departure] = OrderedDict()
        self.arrivals: OrderedDict[bytes, Arrival] = OrderedDict()
        self.dropped_packets: OrderedDict[bytes, tuple[str, str, str]] = OrderedDict()
        """Fingerprint of a packet a sampled drop event carries -> (entity, machine, reason)."""
        self.pairs: dict[tuple[str, str], PairStats] = {}
        self.pair_reported_at: dict[tuple[str, str], int] = {}
        self.capture_gaps: dict[str, deque[tuple[int, int | None, str]]] = defaultdict(
            lambda: deque(maxlen=1024))
        self.frame_progress: dict[str, int] = {}
        """Per host: the time up to which its captured frames and its capture gaps are known
        (the newest ring's progress, held back by any ring still waiting for gap records)."""
        self.ring_progress: dict[str, OrderedDict[tuple, int]] = {}
        """Per host, per capture ring (host, run, iface, worker): the end of its latest frame
        batch that is not waiting for gap records."""
        self.gap_hold = RingOrderHold(self.max_wait_ns)
        """Frame batches (host, t0, t1) that wait for the gap records they announce; stamped
        with their end time and expired against the stream's clock."""
        # peer view: latest ipstat event per (host, peer address)
        self.ipstat: OrderedDict[tuple[str, str], tuple[int, dict]] = OrderedDict()
        self.peer_reported_at: dict[tuple[str, str], int] = {}
        self._episodes = itertools.count(1)
        self.incidents: deque[IncidentEvent] = deque(maxlen=1000)
        """The latest incidents made (for views)."""

    # -- bookkeeping ---------------------------------------------------------------------------
    def _learn_addr(self, addr: str | None, host: str) -> None:
        if not addr or self.addr_host.get(addr) == host:
            return
        if addr in self.addr_host:
            self.addr_host.move_to_end(addr)
        elif len(self.addr_host) >= self.max_keys:
            self.addr_host.popitem(last=False)
            self.evicted["addresses"] += 1
        self.addr_host[addr] = host

    def missing_for(self, hosts: list[str] | set[str], kinds: list[str]) -> dict[str, int]:
        """``{"host/kind": batches missed}`` for every host and kind an incident used."""
        return {f"{h}/{k}": self.missed[(h, k)] for h in sorted(hosts) for k in kinds}

    def attribute(self, batch: Batch, event: dict) -> tuple[str, str]:
        """(entity, how) a drop event belongs to: a host token, or ``machine:<boot>``."""
        source = event.get("source")
        if source not in KERNEL_WIDE:
            netns = event.get("netns")
            if isinstance(netns, int) and netns not in self.netns_host:
                if len(self.netns_host) >= self.max_keys:
                    self.netns_host.pop(next(iter(self.netns_host)))
                    self.evicted["netns"] += 1
                self.netns_host[netns] = batch.host
            return batch.host, f"{source}: counters of {batch.host}'s own namespace"
        name = event.get("netns_name")
        if isinstance(name, str) and name in self.host_boot:
            return name, f"{source}: netns_name {name}"
        netns = event.get("netns")
        if isinstance(netns, int) and netns in self.netns_host:
            return self.netns_host[netns], f"{source}: netns inode {netns}"
        if isinstance(name, str) and name and name != "root":
            # a namespace that is no host of the fleet (a router or bridge on the path)
            return f"netns:{name}", f"{source}: netns_name {name} (not a fleet host)"
        boot = self.host_boot.get(batch.host) or batch.host
        sharing = self.boot_hosts.get(boot, ())
        if len(sharing) <= 1:
            return batch.host, f"{source}: kernel-wide, the only host seen on its machine"
        return f"machine:{boot[:8]}", (f"{source}: machine-wide (kernel-wide source, namespace not "
                                      f"told; machine of {', '.join(sorted(sharing))})")

    def _machine_of(self, host: str) -> str:
        boot = self.host_boot.get(host) or host
        return f"machine:{boot[:8]}"

    # -- feeding -------------------------------------------------------------------------------
    def feed(self, batch: Batch) -> list[IncidentEvent]:
        """Take one batch; returns the incidents it completes (most come from :meth:`tick`)."""
        self.counts[batch.kind] += 1
        if batch.t1 > self.stream_time:
            self.stream_time = batch.t1
        known = self.host_boot.get(batch.host)
        # A batch without a boot id (older agents, consumers' own batches) keeps what is known.
        boot = str(batch.fields.get("boot") or known or batch.host)
        if known != boot:
            if known is None and len(self.host_boot) >= self.max_keys:
                self.evicted["hosts"] += 1
            else:
                if known is not None:
                    self.boot_hosts.get(known, set()).discard(batch.host)
                self.host_boot[batch.host] = boot
                self.boot_hosts.setdefault(boot, set()).add(batch.host)
        if batch.missed:
            self.missed[(batch.host, batch.kind)] += batch.missed
        if batch.kind == "drop":
            return self._feed_drops(batch)
        if batch.kind == "gap":
            for e in batch.events:
                after, before = e.get("after_ts"), e.get("before_ts")
                start = after if after is not None else batch.t0
                self.capture_gaps[batch.host].append((int(start), before, str(e.get("iface"))))
                ring = ring_key(batch.host, batch.run, e.get("iface"), e.get("worker"))
                self._follow(batch.host, ring)
                self.gap_hold.gap(ring)
            self._progress(self.gap_hold.release())
            if batch.events:
                self._host_progress(batch.host)
            return []
        if batch.kind == "frame":
            self._feed_frames(batch)
            return []
        if batch.kind == "ipstat":
            return self._feed_ipstat(batch)
        return []

    def _feed_drops(self, batch: Batch) -> list[IncidentEvent]:
        out = []
        for e in batch.events:
            count = int(e.get("count") or 0)
            if count <= 0:
                continue
            entity, how = self.attribute(batch, e)
            reason = str(e.get("reason") or "NOT_SPECIFIED")
            location = str(e.get("location") or "?")
            first = int(e.get("first_ts") or batch.t0)
            last = int(e.get("last_ts") or batch.t1)
            machine = self._machine_of(batch.host)
            flow = e.get("flow") if isinstance(e.get("flow"), dict) else None
            pair = (flow.get("src"), flow.get("dst")) if flow else None
            self._remember_drop(self.host_boot.get(batch.host) or batch.host,
                                (last, entity, machine, reason, location, how, count, pair))
            if count == 1 and flow is not None and e.get("payload"):
                fp = dropped_packet_fingerprint(e)
                if fp is not None:
                    if len(self.dropped_packets) >= self.max_frames:
                        self.dropped_packets.popitem(last=False)
                        self.evicted["dropped_packets"] += 1
                    self.dropped_packets[fp] = (entity, machine, reason)
            self._tally_drop(entity, reason, location, how, count)
            key = (reason, location)
            if self.part_n > 1 and partition_of(f"{reason}|{location}".encode(), self.part_n) != self.part_k:
                continue  # another member's storm (the drop is remembered for path loss above)
            storm = self.storms.get(key)
            if storm is None:
                if len(self.storms) >= self.max_keys:
                    self.storms.popitem(last=False)
                    self.evicted["storms"] += 1
                storm = self.storms[key] = Storm()
            self.storms.move_to_end(key)
            entry = storm.entities.get(entity)
            joined = entry is None or last - entry.last_ts > self.window_ns
            if joined:
                entry = storm.entities[entity] = StormEntry(first_ts=first, last_ts=last, how=how)
            entry.count_by_reporter[batch.host] += count
            entry.first_ts = min(entry.first_ts, first)
            entry.last_ts = max(entry.last_ts, last)
            if not joined and entity in storm.reported:
                continue  # counts grow in an episode already reported: no new incident
            if storm.reported and last - storm.last_report < self.report_ns:
                storm.dirty = True  # a host joined a reported storm: one update per interval
                continue
            inc = self._storm_check(key, storm, last)
            if inc is not None:
                out.append(inc)
        return out

    STORM_LISTED = 50
    """Hosts of a storm detailed in ``details.per_host`` (the largest counts)."""
    STORM_HOSTS = 500
    """Hosts of a storm named in ``hosts`` (``details.hosts_total`` counts them all)."""

    def _storm_check(self, key: tuple[str, str], storm: Storm, now: int) -> IncidentEvent | None:
        live = {h: en for h, en in storm.entities.items() if now - en.last_ts <= self.window_ns}
        for h in [h for h in storm.entities if h not in live]:
            del storm.entities[h]
        if len(live) < self.storm_hosts:
            if not live:
                storm.reported = frozenset()
            return None
        hosts = frozenset(live)
        if hosts <= storm.reported:
            return None
        was = storm.reported
        if not was:
            storm.episode = next(self._episodes)
        storm.reported = was | hosts
        storm.last_report, storm.dirty = now, False
        reason, location = key
        reporters = sorted({r for en in live.values() for r in en.count_by_reporter})
        # An incident stays readable (and under the batch size limit) in a storm over 1000s of
        # hosts: the top STORM_LISTED hosts by count are detailed, all are counted.
        top = sorted(live.items(), key=lambda kv: (-kv[1].count, kv[0]))[:self.STORM_LISTED]
        per_host = {h: {"count": en.count, "first_ts": en.first_ts, "last_ts": en.last_ts,
                        "attribution": en.how, "reported_by": sorted(en.count_by_reporter)[:8]}
                    for h, en in top}
        total = sum(en.count for en in live.values())
        machine_wide = sorted(h for h in live if h.startswith("machine:"))
        names = sorted(live)
        shown = ", ".join(names[:8]) + (f", ... {len(names) - 8} more" if len(names) > 8 else "")
        summary = (f"drop storm: {reason} at {location} on {len(live)} hosts "
                   f"({shown}), {total} drops")
        if machine_wide:
            summary += " (machine-wide entries: namespace not told by the source)"
        inc = IncidentEvent(
            type="drop_storm", summary=summary, hosts=names[:self.STORM_HOSTS],
            first_ts=min(en.first_ts for en in live.values()),
            last_ts=max(en.last_ts for en in live.values()),
            details={"reason": reason, "location": location, "per_host": per_host,
                     "total": total, "episode": storm.episode,
                     "update": bool(was),
                     "machine_wide": machine_wide, "window_s": self.window_ns / NS,
                     "hosts_total": len(names)},
            inputs=["drop"], missing_input=self.missing_for(set(reporters[:self.STORM_HOSTS]), ["drop"]))
        return self._made(inc)

    def _made(self, inc: IncidentEvent) -> IncidentEvent:
        self.counts[f"incident.{inc.type}"] += 1
        self.incidents.append(inc)
        return inc

    def _feed_frames(self, batch: Batch) -> None:
        cols = batch.events
        if not isinstance(cols, dict):
            return
        n = len(batch)
        get = cols.get
        ts_c, src_c, dst_c, l4_c = get("ts") or [], get("src") or [None] * n, get("dst") or [None] * n, get("l4") or [None] * n
        sp_c, dp_c = get("sport") or [None] * n, get("dport") or [None] * n
        id_c, seq_c = get("ip_id") or [None] * n, get("tcp_seq") or [None] * n
        head_c, dir_c = get("head") or [None] * n, get("dir") or [0] * n
        tss_c = get("ts_src") or [0] * n
        len_c = get("len") or [0] * n
        host = batch.host
        if batch.missed:  # frame batches of this host we never saw: their time is a hole
            prev = self.frame_progress.get(host, batch.t0)
            self.capture_gaps[host].append((prev, batch.t0, "missed-batches"))
        ring = ring_key(host, batch.run, batch.fields.get("iface"), batch.fields.get("worker"))
        self._follow(host, ring)
        # an agent without gaps_before (older) is taken at its word: it owes nothing
        self.gap_hold.hold(ring, gaps_owed(batch.fields), batch.t1, (host, batch.t0, batch.t1))
        self._progress(self.gap_hold.release())
        if self.gap_hold.waiting(ring):
            self.counts["frame_batches_held_for_gaps"] += 1
        self._host_progress(host)
        part_n, part_k = self.part_n, self.part_k
        for i in range(n):
            if part_n > 1:
                a, b = src_c[i], dst_c[i]
                if not a or not b or partition_of(a + b if a < b else b + a, part_n) != part_k:
                    continue  # another member's path (both directions of a pair go together)
            fp = fingerprint(src_c[i], dst_c[i], l4_c[i], sp_c[i], dp_c[i], id_c[i], seq_c[i], head_c[i])
            if fp is None:
                continue
            ts, tss, d = int(ts_c[i]), int(tss_c[i] or 0), dir_c[i]
            if d == PACKET_OUTGOING:
                src_t = addr_text(src_c[i])
                self._learn_addr(src_t, host)
                arr = self.arrivals.pop(fp, None)
                if arr is not None:
                    self._delivered(host, arr.host, ts, tss, arr.ts, arr.ts_src)
                    continue
                if fp in self.departures:
                    self.counts["duplicate_fingerprints"] += 1
                    continue
                if len(self.departures) >= self.max_frames:
                    self.departures.popitem(last=False)
                    self.evicted["frames"] += 1
                self.departures[fp] = Departure(host, ts, tss, addr_text(dst_c[i]), src_t,
                                                l4_c[i] == IPPROTO_TCP and (len_c[i] or 0) > MAX_FRAME)
            elif d in _ARRIVING:
                if d == 0:
                    self._learn_addr(addr_text(dst_c[i]), host)
                dep = self.departures.get(fp)
                if dep is not None and dep.host != host:
                    del self.departures[fp]
                    self._delivered(dep.host, host, dep.ts, dep.ts_src, ts, tss)
                    continue
                if len(self.arrivals) >= self.max_frames:
                    self.arrivals.popitem(last=False)
                    self.evicted["frames"] += 1
                self.arrivals[fp] = Arrival(host, ts, tss)

    MAX_RINGS_PER_HOST = 64
    """Capture rings (run, iface, worker) followed per host; the oldest is evicted past it."""

    def _follow(self, host: str, ring: tuple) -> None:
        rings = self.ring_progress.get(host)
        if rings is None:
            rings = self.ring_progress[host] = OrderedDict()
        if ring not in rings:
            if len(rings) >= self.MAX_RINGS_PER_HOST:
                self.gap_hold.forget(rings.popitem(last=False)[0])
                self.evicted["capture_rings"] += 1
            rings[ring] = 0

    def _progress(self, released: list[Released]) -> set[str]:
        """Frame batches out of the gap hold move their ring's progress. One that waited
        ``max_wait`` for gap records that never came (a gap batch lost on the way, or dropped
        on the agent): the time it covers becomes a hole of the receiver's capture -- its frames
        missing there are unknown. Returns the hosts whose rings moved."""
        hosts = set()
        for r in released:
            host, t0, t1 = r.item
            rings = self.ring_progress[host]
            if r.expired:
                self.counts["gap_records_never_seen"] += r.missing
                self.capture_gaps[host].append((rings[r.ring] or t0, t1, "gap-records-missing"))
            rings[r.ring] = max(rings[r.ring], t1)
            hosts.add(host)
        return hosts

    def _host_progress(self, host: str) -> None:
        best, cap = 0, None
        for ring, progress in self.ring_progress.get(host, {}).items():
            best = max(best, progress)
            if self.gap_hold.waiting(ring):
                cap = progress if cap is None else min(cap, progress)
        self.frame_progress[host] = best if cap is None else min(best, cap)

    def _pair(self, a: str, b: str) -> PairStats:
        p = self.pairs.get((a, b))
        if p is None:
            if len(self.pairs) >= self.max_keys:
                self.pairs.pop(next(iter(self.pairs)))
                self.evicted["pairs"] += 1
            p = self.pairs[(a, b)] = PairStats()
        return p

    def _delivered(self, a: str, b: str, ts_a: int, src_a: int, ts_b: int, src_b: int) -> None:
        p = self._pair(a, b)
        p.delivered += 1
        p.delays_ns.append(ts_b - ts_a)
        p.ts_sources[f"{SOURCE_NAMES.get(src_a, src_a)}->{SOURCE_NAMES.get(src_b, src_b)}"] += 1
        p.seen(ts_a)

    def _feed_ipstat(self, batch: Batch) -> list[IncidentEvent]:
        out = []
        for e in batch.events:
            peer = e.get("peer")
            if not isinstance(peer, str):
                continue
            if e.get("local"):
                self._learn_addr(str(e["local"]), batch.host)
            key = (batch.host, peer)
            if key not in self.ipstat and len(self.ipstat) >= self.max_keys:
                self.ipstat.popitem(last=False)
                self.evicted["ipstat"] += 1
            self.ipstat[key] = (batch.t1, e)
            self.ipstat.move_to_end(key)
            retrans = int(e.get("retrans_segs") or 0)
            if retrans < self.peer_min_retrans:
                continue
            if self.part_n > 1 and partition_of(f"{batch.host}|{peer}".encode(), self.part_n) != self.part_k:
                continue  # another member's peer incident (the view is kept for its lookups)
            inc = self._peer_incident(batch.host, peer, batch.t0, batch.t1, e)
            if inc is not None:
                out.append(inc)
        return out

    def _peer_incident(self, a: str, peer: str, t0: int, t1: int, e: dict) -> IncidentEvent | None:
        b = self.addr_host.get(peer)
        key = (a, peer)
        last = self.peer_reported_at.get(key)
        if last is not None and t1 - last < self.window_ns:
            return None
        self.peer_reported_at[key] = t1
        hosts = [a] + ([b] if b else [])
        details: dict[str, Any] = {
            "from": a, "peer": peer, "peer_host": b,
            "retrans_segs": int(e.get("retrans_segs") or 0), "lost": int(e.get("lost") or 0),
            "timeouts": int(e.get("timeouts") or 0), "segs_out": int(e.get("segs_out") or 0),
            "resets": int(e.get("resets") or 0), "resets_in": int(e.get("resets_in") or 0),
            "rtt_us": e.get("rtt_us"), "flags": list(e.get("flags") or [])}
        inputs = ["ipstat"]
        if b:
            drops = self._drops_at(b, t0 - self.window_ns, t1 + NS)
            details["peer_drops"] = drops
            if drops:
                inputs.append("drop")
            a_addrs = [ad for ad, h in self.addr_host.items() if h == a]
            view = None
            for ad in a_addrs:
                got = self.ipstat.get((b, ad))
                if got is not None:
                    view = {"peer": ad, **{k: got[1].get(k) for k in (
                        "retrans_segs", "lost", "timeouts", "segs_in", "segs_out", "rtt_us", "flags")}}
            details["peer_view_of_sender"] = view
        summary = (f"peer: {a} -> {b or peer} ({peer}): {details['retrans_segs']} retransmits, "
                   f"{details['timeouts']} timeouts")
        if details.get("peer_drops"):
            top = max(details["peer_drops"], key=lambda d: d["count"])
            where = "" if top["scope"] == "host" else f", {top['scope']}"
            summary += f"; {b} dropped {top['count']} ({top['reason']}{where})"
        inc = IncidentEvent(type="peer", summary=summary, hosts=hosts, first_ts=t0, last_ts=t1,
                            details=details, inputs=inputs,
                            missing_input=self.missing_for(set(hosts), inputs))
        return self._made(inc)

    def _tally_drop(self, entity: str, reason: str, location: str, how: str, count: int) -> None:
        key = (entity, reason, location)
        row = self.drop_totals.get(key)
        if row is None:
            if len(self.drop_totals) >= self.max_keys:
                self.drop_totals.popitem(last=False)
                self.evicted["drop_totals"] += 1
            row = self.drop_totals[key] = [0, how]
        row[0] += count

    def drop_table(self) -> list[dict[str, Any]]:
        """Drops per (entity, reason, location) with how they were attributed, largest first."""
        rows = [{"entity": e, "reason": r, "location": loc, "count": n, "how": how}
                for (e, r, loc), (n, how) in self.drop_totals.items()]
        return sorted(rows, key=lambda d: -d["count"])

    def _remember_drop(self, machine_key: str, record: tuple) -> None:
        recent = self.recent_drops.get(machine_key)
        if recent is None:
            recent = self.recent_drops[machine_key] = deque()
        else:
            self.recent_drops.move_to_end(machine_key)
        recent.append(record)
        self._recent_total += 1
        while self._recent_total > self.max_recent_drops:
            key, oldest = next(iter(self.recent_drops.items()))
            oldest.popleft()
            self._recent_total -= 1
            self.evicted["recent_drops"] += 1
            if not oldest:
                del self.recent_drops[key]

    def _drops_at(self, host: str, t0: int, t1: int,
                  flow: tuple[str | None, str | None] | None = None) -> list[dict[str, Any]]:
        """Drops attributed to ``host``, or on its machine without a host (machine-wide, or a
        namespace that is not a fleet host: on the path), with last_ts in [t0, t1].

        Only the records reported from ``host``'s machine are read: a host's drops, its
        machine's and its namespaces' are all seen by agents on that machine."""
        machine = self._machine_of(host)
        agg: Counter[tuple[str, str, str, str]] = Counter()
        recent = self.recent_drops.get(self.host_boot.get(host) or host, ())
        for ts, entity, mach, reason, location, how, count, pair in reversed(recent):
            if ts < t0 - 60 * NS:
                break
            if not t0 <= ts <= t1:
                continue
            if flow is not None and pair is not None and pair != flow:
                continue  # the drop event names its packet's addresses: another flow
            if entity == host:
                scope = "host"
            elif entity.startswith("machine:") and entity == machine:
                scope = "machine-wide"
            elif entity.startswith("netns:") and mach == machine:
                scope = f"path ({entity[6:]})"
            else:
                continue
            agg[(reason, location, scope, how)] += count
        return [{"reason": r, "location": loc, "scope": s, "attribution": how, "count": n}
                for (r, loc, s, how), n in agg.most_common(8)]

    # -- the clock -----------------------------------------------------------------------------
    def tick(self, now: int, *, flush: bool = False) -> list[IncidentEvent]:
        """Judge departures older than ``grace``; emit path_loss incidents. ``now``: the
        caller's wall clock in ns (time.time_ns() in the shell; the core reads no clock).

        Frames are judged against the stream's clock, ``min(now, stream_time)``: a consumer
        that runs behind must not call a frame lost whose arrival is still in its backlog.
        ``flush`` (at shutdown) judges against ``now`` alone.
        """
        if not flush:
            now = min(now, self.stream_time)
        for host in self._progress(self.gap_hold.release(now)):
            self._host_progress(host)
        judged: set[tuple[str, str]] = set()
        waiting: list[bytes] = []
        for fp, dep in list(self.departures.items()):
            if now - dep.ts < self.grace_ns:
                break
            b = self.addr_host.get(dep.dst) if dep.dst else None
            if b is not None and b != dep.host and not flush:
                # B's capture has not yet published frames a grace period past this one (it
                # is behind, or stalled): its frames -- or the gap record saying it was blind
                # -- may still come. Wait, up to max_wait.
                if (self.frame_progress.get(b, 0) < dep.ts + self.grace_ns
                        and now - dep.ts < self.max_wait_ns):
                    waiting.append(fp)
                    continue
            del self.departures[fp]
            if b is None or b == dep.host:
                self.counts["departures_unjudged"] += 1  # not addressed to a host we capture
                continue
            p = self._pair(dep.host, b)
            p.seen(dep.ts)
            delays = p.delays_ns
            expected = dep.ts + (sorted(delays)[len(delays) // 2] if delays else 0)
            if self._in_gap(b, expected):
                p.unknown += 1
            elif dep.offload:
                p.unknown += 1  # cut into segments on the way, most likely: not a loss
                p.unknown_offload += 1
            elif self.frame_progress.get(b, 0) < dep.ts:
                p.unknown += 1  # B's capture never got past this time: it cannot tell
                self.counts["unknown_receiver_silent"] += 1
            else:
                p.lost += 1
                hit = self.dropped_packets.pop(fp, None)
                if hit is not None:  # the drop event of this very packet (sampled) names it
                    entity, mach, reason = hit
                    p.reasons[self._label(b, entity, mach, reason)] += 1
                    p.named_by_packet += 1
                    judged.add((dep.host, b))
                    continue
                # the drop volumes near the loss vote (a host's own drops before machine-wide)
                near = self._drops_at(b, dep.ts - 2 * NS, dep.ts + 2 * NS, (dep.src, dep.dst))
                near = [d for d in near if can_explain_path_loss(d["reason"], d["scope"])]
                own = [d for d in near if d["scope"] == "host"] or near
                if own:
                    d = max(own, key=lambda d: d["count"])
                    label = d["reason"] if d["scope"] == "host" else f"{d['reason']} ({d['scope']})"
                    p.reasons[label] += 1
            judged.add((dep.host, b))
        for fp in reversed(waiting):  # back to the front, in their order
            self.departures.move_to_end(fp, last=False)
        # arrivals without a departure after 2 x grace: sender not captured or departure evicted
        while self.arrivals:
            fp, arr = next(iter(self.arrivals.items()))
            if now - arr.ts < 2 * self.grace_ns:
                break
            del self.arrivals[fp]
            self.counts["arrivals_unmatched"] += 1
        out = []
        for key, storm in list(self.storms.items()):
            if storm.dirty and now - storm.last_report >= self.report_ns:
                inc = self._storm_check(key, storm, now)
                storm.dirty = False
                if inc is not None:
                    out.append(inc)
        for key, p in list(self.pairs.items()):
            if p.lost == p.reported_lost and p.unknown == p.reported_unknown:
                continue
            last = self.pair_reported_at.get(key)
            if last is not None and now - last < self.report_ns:
                continue
            out.append(self._path_incident(key, p, now))
        return out

    def _label(self, b: str, entity: str, machine: str, reason: str) -> str:
        """How a drop at ``entity`` reads next to a loss toward ``b`` (as :meth:`_drops_at`)."""
        if entity == b:
            return reason
        if entity.startswith("machine:"):
            return f"{reason} (machine-wide)"
        if entity.startswith("netns:") and machine == self._machine_of(b):
            return f"{reason} (path ({entity[6:]}))"
        return f"{reason} (at {entity})"

    def _in_gap(self, host: str, ts: int) -> bool:
        """Was ``host``'s capture blind at ``ts`` (expected arrival time)?

        A gap record sits at a ring block boundary, and two counted races can move it by a
        block (agents/capture/gaps.py), so its edges are widened by ``gap_slack``.
        """
        slack = self.gap_slack_ns
        for start, end, _iface in self.capture_gaps.get(host, ()):
            if start - slack <= ts and (end is None or ts <= end + slack):
                return True
        return False

    def _path_incident(self, key: tuple[str, str], p: PairStats, now: int) -> IncidentEvent:
        a, b = key
        self.pair_reported_at[key] = now
        new_lost, new_unknown = p.lost - p.reported_lost, p.unknown - p.reported_unknown
        p.reported_lost, p.reported_unknown = p.lost, p.unknown
        judged = p.delivered + p.lost
        pct = 100.0 * p.lost / judged if judged else 0.0
        delays = list(p.delays_ns)
        p50, p99 = _quantile(delays, 0.5), _quantile(delays, 0.99)
        reason = p.reasons.most_common(1)[0][0] if p.reasons else None
        summary = f"path {a} -> {b}: {p.lost} lost of {judged} ({pct:.1f}%)"
        if p.unknown - p.unknown_offload:
            summary += f", {p.unknown - p.unknown_offload} unknown (capture gap on {b})"
        if p.unknown_offload:
            summary += f", {p.unknown_offload} unknown (offload super-packets, cut up on the way)"
        if reason:
            summary += f"; coincides with drops on {b}: {reason}"
        if p50 is not None:
            summary += f"; one-way delay p50 {p50 / 1e6:.3f} ms p99 {p99 / 1e6:.3f} ms"
        inputs = ["frame", "gap"] + (["drop"] if p.reasons else [])
        inc = IncidentEvent(
            type="path_loss", summary=summary, hosts=[a, b], first_ts=p.first_ts, last_ts=p.last_ts,
            details={"from": a, "to": b, "delivered": p.delivered, "lost": p.lost,
                     "unknown": p.unknown, "new_lost": new_lost, "new_unknown": new_unknown,
                     "loss_pct": round(pct, 3), "reasons": dict(p.reasons),
                     "reasons_by_packet": p.named_by_packet,
                     "unknown_offload": p.unknown_offload,
                     "delay_ns": {"p50": p50, "p99": p99, "samples": len(delays),
                                  "min": min(delays) if delays else None},
                     "ts_src": dict(p.ts_sources),
                     "ts_note": "one-way delay = arrival stamp on B - departure stamp on A; "
                                "clocks of different machines add their offset",
                     "grace_s": self.grace_ns / NS, "frames_evicted": self.evicted["frames"]},
            inputs=inputs, missing_input=self.missing_for({a, b}, ["frame", "gap"]))
        return self._made(inc)

    def path_table(self) -> list[dict[str, Any]]:
        """Per pair: delivered, lost, unknown, p50/p99 delay (for views and metrics)."""
        rows = []
        for (a, b), p in self.pairs.items():
            delays = list(p.delays_ns)
            rows.append({"from": a, "to": b, "delivered": p.delivered, "lost": p.lost,
                         "unknown": p.unknown, "p50_ns": _quantile(delays, 0.5),
                         "p99_ns": _quantile(delays, 0.99),
                         "reason": p.reasons.most_common(1)[0][0] if p.reasons else None})
        return sorted(rows, key=lambda r: (-r["lost"], -r["unknown"], r["from"], r["to"]))


# ---------------------------------------------------------------------------------------------
# asyncio shell: netevents correlate

INPUT_KINDS = ("drop", "gap", "frame", "ipstat", "status")


async def run_correlate(url: str | None, *, window: float = 10.0, grace: float = 3.0,
                        queue_group: str | None = None, stop: Any = None, site: str = "local",
                        token: str | None = None, correlator: Correlator | None = None,
                        tick_interval: float = 0.5, on_incident: Any = None,
                        ready: Any = None, credentials: Any = None,
                        partition: tuple[int, int] = (0, 1)) -> Correlator:
    """Subscribe to the inputs, feed the correlator, publish its incidents until ``stop``.

    Incidents go out as ``incident`` batches from host ``token`` (default
    ``correlator-<hostname>``, with ``-p<K>of<N>`` for a member of a partitioned set) with
    their own run id and sequence numbers.

    ``queue_group`` shares the stream per message (each batch to one member): right for drop
    storms and peers, but the frames of one path then land on different members, which cannot
    match them -- to scale path loss out, run ``partition`` members instead (each reads the
    whole stream and judges its share of the paths).

    Raises:
        BusError: if the bus cannot be reached.
    """
    import asyncio
    import os

    from ..bus import connect
    from ..subjects import default_host

    stop = stop or asyncio.Event()
    corr = correlator or Correlator(window=window, grace=grace, partition=partition)
    if token is None:
        token = f"correlator-{default_host()}"
        if corr.part_n > 1:
            token += f"-p{corr.part_k}of{corr.part_n}"
    run = os.urandom(8).hex()
    seq = 0
    async with connect(url, name=f"netevents-{token}", streams=True, credentials=credentials) as bus:
        sub = bus.subscribe(INPUT_KINDS, queue=queue_group)
        async with sub:
            if ready is not None:
                ready.set()
            loop = asyncio.get_running_loop()
            next_tick = loop.time() + tick_interval

            async def publish(incidents: list[IncidentEvent]) -> None:
                nonlocal seq
                if not incidents:
                    return
                seq += 1
                now = time.time_ns()
                batch = Batch(kind="incident", site=site, host=token, run=run, seq=seq,
                              t0=min((i.first_ts or now) for i in incidents), t1=now,
                              events=list(incidents))
                for inc in incidents:
                    log.info("%s", inc.summary)
                    if on_incident is not None:
                        on_incident(inc)
                await bus.publish(batch)

            while not stop.is_set():
                batch = await sub.next(timeout=tick_interval)
                if batch is not None:
                    try:
                        made = corr.feed(batch)
                    except (KeyError, TypeError, ValueError) as exc:  # one bad batch, counted
                        corr.counts["bad_batches"] += 1
                        log.warning("batch %s from %s not correlated: %s", batch.kind, batch.host, exc)
                        made = []
                    await publish(made)
                if loop.time() >= next_tick:
                    next_tick = loop.time() + tick_interval
                    await publish(corr.tick(time.time_ns()))
            await publish(corr.tick(time.time_ns(), flush=True))
            corr.counts["rejected"] = sum(sub.rejected.values())
            corr.counts["dropped_by_queue"] = sub.dropped
            corr.counts["unreceived"] = sub.unreceived  # announced by status, never received
            await bus.flush()
    return corr

"""The drop ledger: what the fleet's kernels dropped, kept to explain other evidence.

Per machine, the recent drop records (a loss on host B reads B's machine only); per (entity,
reason, location), the totals; per fingerprint, the packets sampled drop events carry (the eBPF
source's per-packet records), which name the loss of that very packet. Attribution of a drop to
an entity is the directory's (:meth:`.directory.HostDirectory.attribute`).
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Mapping
from typing import Any, NamedTuple

from ...codec import Batch
from ...wire import EventRow
from .directory import HostDirectory
from .fingerprint import dropped_packet_fingerprint

NS = 1_000_000_000

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



_read_drop = EventRow.reader("count", "reason", "location", "first_ts", "last_ts", "flow", "payload",
                             "source", "netns", "netns_name")
"""The fields of a drop event :meth:`DropLedger.record_batch` reads (with those that place it)."""
_ABSENT = EventRow.ABSENT


class Drop(NamedTuple):
    """One drop event as the ledger took it."""

    entity: str
    how: str
    reason: str
    location: str
    first_ts: int
    last_ts: int
    count: int


class DropLedger:
    """Recent drops per machine, drop totals, sampled dropped packets; all bounded, evictions
    counted in ``evicted``.

    Args:
        directory: where hosts are (attribution, machines).
        max_keys: totals kept (per entity, reason, location).
        max_packets: sampled dropped packets kept (by fingerprint).
        max_recent: recent drop records kept over all machines; the oldest of the least
            recently active machine goes first.
    """

    def __init__(self, directory: HostDirectory, *, max_keys: int, max_packets: int,
                 evicted: Counter[str], max_recent: int = 200_000) -> None:
        self.directory = directory
        self.max_keys = max_keys
        self.max_packets = max_packets
        self.max_recent = max_recent
        self.evicted = evicted
        self.recent: OrderedDict[str, deque[tuple]] = OrderedDict()
        """Per machine (boot id of the reporting agent, else its host): recent drop records
        (last_ts, entity, machine, reason, location, how, count, (flow src, dst) or None)."""
        self._recent_total = 0
        self.totals: OrderedDict[tuple[str, str, str], list] = OrderedDict()
        self.packets: OrderedDict[int, tuple[str, str, str]] = OrderedDict()
        """Fingerprint of a packet a sampled drop event carries -> (entity, machine, reason)."""

    def record_batch(self, batch: Batch) -> list[tuple[Drop, Any]]:
        """Take the drop events of ``batch``: (the drop as taken, the event's ``flow`` or None)
        for each that counts a drop and is in scope."""
        # Hot path (every drop event of the fleet): what is the batch's worked out once, each
        # event's fields read in one call (ABSENT, like None, is false; it is no Mapping).
        d = self.directory
        host, t0, t1 = batch.host, batch.t0, batch.t1
        machine_key, machine = d.machine_key(host), d.machine_of(host)
        place, remember, tally, packets = d.attribute_of, self._remember, self._tally, self.packets
        out = []
        for e in batch.events:
            count, reason, location, first, last, flow, payload, source, netns, name = _read_drop(e)
            count = int(count or 0)
            if count <= 0:
                continue
            entity, how = place(host, source, netns, name, count)
            if entity is None:  # a namespace outside the correlator's scope (counted there)
                continue
            reason = str(reason or "NOT_SPECIFIED")
            location = str(location or "?")
            first = int(first or t0)
            last = int(last or t1)
            # ABSENT first: the check of a Mapping is a Python call (an ABC)
            if flow is _ABSENT or (flow is not None and not isinstance(flow, Mapping)):
                flow = None
            pair = (flow.get("src"), flow.get("dst")) if flow else None
            remember(machine_key, (last, entity, machine, reason, location, how, count, pair))
            if count == 1 and flow is not None and payload:
                fp = dropped_packet_fingerprint(e)
                if fp is not None:
                    if len(packets) >= self.max_packets:
                        packets.popitem(last=False)
                        self.evicted["dropped_packets"] += 1
                    packets[fp] = (entity, machine, reason)
            tally(entity, reason, location, how, count)
            out.append((tuple.__new__(Drop, (entity, how, reason, location, first, last, count)),
                        flow))
        return out

    def _tally(self, entity: str, reason: str, location: str, how: str, count: int) -> None:
        key = (entity, reason, location)
        row = self.totals.get(key)
        if row is None:
            if len(self.totals) >= self.max_keys:
                self.totals.popitem(last=False)
                self.evicted["drop_totals"] += 1
            row = self.totals[key] = [0, how]
        row[0] += count

    def table(self) -> list[dict[str, Any]]:
        """Drops per (entity, reason, location) with how they were attributed, largest first."""
        rows = [{"entity": e, "reason": r, "location": loc, "count": n, "how": how}
                for (e, r, loc), (n, how) in self.totals.items()]
        return sorted(rows, key=lambda d: -d["count"])

    def _remember(self, machine_key: str, record: tuple) -> None:
        recent = self.recent.get(machine_key)
        if recent is None:
            recent = self.recent[machine_key] = deque()
        else:
            self.recent.move_to_end(machine_key)
        recent.append(record)
        self._recent_total += 1
        while self._recent_total > self.max_recent:
            key, oldest = next(iter(self.recent.items()))
            oldest.popleft()
            self._recent_total -= 1
            self.evicted["recent_drops"] += 1
            if not oldest:
                del self.recent[key]

    def near(self, host: str, t0: int, t1: int,
             flow: tuple[str | None, str | None] | None = None) -> list[dict[str, Any]]:
        """Drops attributed to ``host``, or on its machine without a host (machine-wide, or a
        namespace that is not a fleet host: on the path), with last_ts in [t0, t1].

        Only the records reported from ``host``'s machine are read: a host's drops, its
        machine's and its namespaces' are all seen by agents on that machine."""
        machine = self.directory.machine_of(host)
        agg: Counter[tuple[str, str, str, str]] = Counter()
        recent = self.recent.get(self.directory.machine_key(host), ())
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

    def explain_loss(self, fp: int, receiver: str, ts: int,
                     flow: tuple[str | None, str | None]) -> tuple[str | None, bool]:
        """The drop reason a frame (fingerprint ``fp``, sent at ``ts`` toward ``receiver``)
        that never arrived is put down to, and whether it is the drop event of that very
        packet (a sampled drop) rather than the vote of the drop volumes near it (the
        receiver's own drops before machine-wide ones). (None, False) when nothing fits."""
        hit = self.packets.pop(fp, None)
        if hit is not None:
            entity, machine, reason = hit
            return self._label(receiver, entity, machine, reason), True
        near = self.near(receiver, ts - 2 * NS, ts + 2 * NS, flow)
        near = [d for d in near if can_explain_path_loss(d["reason"], d["scope"])]
        own = [d for d in near if d["scope"] == "host"] or near
        if not own:
            return None, False
        d = max(own, key=lambda d: d["count"])
        return (d["reason"] if d["scope"] == "host" else f"{d['reason']} ({d['scope']})"), False

    def _label(self, b: str, entity: str, machine: str, reason: str) -> str:
        """How a drop at ``entity`` reads next to a loss toward ``b`` (as :meth:`near`)."""
        if entity == b:
            return reason
        if entity.startswith("machine:"):
            return f"{reason} (machine-wide)"
        if entity.startswith("netns:") and machine == self.directory.machine_of(b):
            return f"{reason} (path ({entity[6:]}))"
        return f"{reason} (at {entity})"

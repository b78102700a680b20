"""Peer incidents: host A's per-IP retransmits toward B's address (``ipstat``), next to B's
drops in that window and B's own per-IP view of A."""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any

from ...codec import Batch
from ...events import IncidentEvent
from .directory import HostDirectory
from .ledger import DropLedger
from .partition import Partition

NS = 1_000_000_000


class PeerViews:
    """The latest ipstat event per (host, peer address) -- at most ``max_keys``, evictions
    counted in ``evicted["ipstat"]`` -- and the peer incidents they make: at most one per
    (host, peer) per ``window``, for the (host, peer) keys ``partition`` owns."""

    def __init__(self, directory: HostDirectory, drops: DropLedger, partition: Partition, *,
                 window_ns: int, min_retrans: int, max_keys: int, evicted: Counter[str]) -> None:
        self.directory = directory
        self.drops = drops
        self.partition = partition
        self.window_ns = window_ns
        self.min_retrans = min_retrans
        self.max_keys = max_keys
        self.evicted = evicted
        self.ipstat: OrderedDict[tuple[str, str], tuple[int, dict]] = OrderedDict()
        self.reported_at: dict[tuple[str, str], int] = {}

    def feed(self, batch: Batch) -> list[IncidentEvent]:
        """Take an ``ipstat`` batch; returns the peer incidents it makes."""
        out = []
        for e in batch.events:
            peer = e.get("peer")
            if not isinstance(peer, str):
                continue
            if e.get("local"):
                self.directory.learn_addr(str(e["local"]), batch.host)
            key = (batch.host, peer)
            if key not in self.ipstat and len(self.ipstat) >= self.max_keys:
                self.ipstat.popitem(last=False)
                self.evicted["ipstat"] += 1
            self.ipstat[key] = (batch.t1, e)
            self.ipstat.move_to_end(key)
            retrans = int(e.get("retrans_segs") or 0)
            if retrans < self.min_retrans:
                continue
            if not self.partition.owns(f"{batch.host}|{peer}".encode()):
                continue  # another member's peer incident (the view is kept for its lookups)
            inc = self._incident(batch.host, peer, batch.t0, batch.t1, e)
            if inc is not None:
                out.append(inc)
        return out

    def _incident(self, a: str, peer: str, t0: int, t1: int, e: dict) -> IncidentEvent | None:
        b = self.directory.host_at(peer)
        key = (a, peer)
        last = self.reported_at.get(key)
        if last is not None and t1 - last < self.window_ns:
            return None
        self.reported_at[key] = t1
        hosts = [a] + ([b] if b else [])
        details: dict[str, Any] = {
            "from": a, "peer": peer, "peer_host": b,
            "retrans_segs": int(e.get("retrans_segs") or 0), "lost": int(e.get("lost") or 0),
            "timeouts": int(e.get("timeouts") or 0), "segs_out": int(e.get("segs_out") or 0),
            "resets": int(e.get("resets") or 0), "resets_in": int(e.get("resets_in") or 0),
            "rtt_us": e.get("rtt_us"), "flags": list(e.get("flags") or [])}
        inputs = ["ipstat"]
        if b:
            drops = self.drops.near(b, t0 - self.window_ns, t1 + NS)
            details["peer_drops"] = drops
            if drops:
                inputs.append("drop")
            view = None
            for ad in self.directory.addresses_of(a):
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
        return IncidentEvent(type="peer", summary=summary, hosts=hosts, first_ts=t0, last_ts=t1,
                             details=details, inputs=inputs,
                             missing_input=self.directory.missing_for(set(hosts), inputs))

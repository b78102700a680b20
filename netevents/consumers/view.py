"""FleetView: a sans-IO tally of what arrives on the bus, rendered as text.

Fed batch by batch (``feed``), it keeps bounded per-host and per-kind totals, the top drop
sites, the busiest host counters, the worst peers, and each agent's own health and losses from
its ``status``; ``render`` draws it for ``netevents top`` / ``netevents up``, ``summary`` is
the closing report of ``up --duration``.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from ..codec import Batch

# Host counters that say something about loss, shown first in the netstat view.
LOSS_COUNTERS = (
    ("Tcp", "RetransSegs"), ("Tcp", "InErrs"), ("Tcp", "OutRsts"), ("TcpExt", "TCPTimeouts"),
    ("TcpExt", "ListenDrops"), ("TcpExt", "TCPBacklogDrop"), ("Udp", "RcvbufErrors"),
    ("Udp", "InErrors"), ("Udp", "NoPorts"), ("Ip", "InDiscards"), ("softnet", "dropped"),
    ("link", "rx_dropped"), ("link", "tx_dropped"), ("link", "rx_missed_errors"), ("qdisc", "drops"),
)


@dataclass
class AgentHealth:
    run: str = ""
    last_seen: float = 0.0
    status: dict[str, Any] = field(default_factory=dict)


class FleetView:
    VIEWS = ("hosts", "drops", "counters", "peers")

    def __init__(self, max_keys: int = 10_000) -> None:
        self.max_keys = max_keys
        self.batches: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.per_host: dict[str, Counter[str]] = defaultdict(Counter)
        self.drop_sites: Counter[tuple[str, str, str]] = Counter()   # (host, reason, location)
        self.counters: Counter[tuple[str, str]] = Counter()          # (group, name) summed deltas
        self.peers: Counter[tuple[str, str]] = Counter()             # (host, peer) retransmits
        self.agents: dict[tuple[str, str], AgentHealth] = {}
        """(host, run) -> the last status of that agent run (capture workers are runs too)."""
        self.missed: Counter[tuple[str, str]] = Counter()
        self.evicted = 0
        self.started = time.monotonic()
        self.unclean_ends: dict[str, list[str]] = {}
        """host -> runs that ended without a final status (killed), seen when a new run began."""
        self.lag: dict[str, int] = {}
        """This viewer's own backlog (Subscription.lag()), refreshed by the feeding loop."""

    def _bounded(self, counter: Counter, key: Any, n: int) -> None:
        if key not in counter and len(counter) >= self.max_keys:
            self.evicted += 1
            return
        counter[key] += n

    def feed(self, batch: Batch) -> None:
        n = len(batch)
        self.batches[batch.kind] += 1
        self.events[batch.kind] += n
        self.per_host[batch.host][batch.kind] += n
        if batch.missed:
            self.missed[(batch.host, batch.kind)] += batch.missed
        if batch.kind == "status":
            for e in batch.events:
                key = (batch.host, batch.run)
                if key not in self.agents:
                    # A new run of a host whose previous run never said goodbye: that run was
                    # killed (or its final status is lost); what it made after its last status
                    # cannot be known, and the view says so instead of staying silent.
                    for (host, run), health in self.agents.items():
                        if host == batch.host and not health.status.get("final") \
                                and run not in self.unclean_ends.get(host, ()):
                            self.unclean_ends.setdefault(host, []).append(run)
                self.agents[key] = AgentHealth(batch.run, time.monotonic(), e)
        elif batch.kind == "drop":
            for e in batch.events:
                key = (batch.host, str(e.get("reason")), str(e.get("location") or "?"))
                self._bounded(self.drop_sites, key, int(e.get("count", 0)))
        elif batch.kind == "netstat":
            for e in batch.events:
                for name, d in (e.get("deltas") or {}).items():
                    self._bounded(self.counters, (e.get("group", "?"), name), int(d))
        elif batch.kind == "ipstat":
            for e in batch.events:
                self._bounded(self.peers, (batch.host, str(e.get("peer"))), int(e.get("retrans_segs", 0)))

    # -- accounting ----------------------------------------------------------------------------
    def agent_losses(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (host, _run), a in self.agents.items():
            mine = out.setdefault(host, {})
            for place, n in (a.status.get("lost") or {}).items():
                mine[place] = mine.get(place, 0) + n
        return out

    def final_seen(self, host: str) -> bool:
        """Whether some run of ``host`` has published its final status."""
        return any(h == host and a.status.get("final") for (h, _r), a in self.agents.items())

    def unexplained(self) -> int:
        """Batches missed (sequence holes) for which the agent reported no loss of that kind."""
        total = 0
        for (host, kind), n in self.missed.items():
            lost = self.agent_losses().get(host, {})
            if not lost.get(f"publish.{kind}"):
                total += n
        return total

    # -- text ----------------------------------------------------------------------------------
    def render(self, view: str = "hosts", rows: int = 12) -> str:
        up = time.monotonic() - self.started
        head = (f"netevents  {len(self.per_host)} host(s)  up {up:5.0f}s  "
                + "  ".join(f"{k}:{v}" for k, v in sorted(self.events.items()))
                + f"  missed batches:{sum(self.missed.values())}")
        if any(self.lag.values()):
            head += (f"\nTHIS VIEW IS BEHIND: {self.lag.get('queued', 0)} batches queued, "
                     f"{self.lag.get('pending', 0)} pending, "
                     f"{self.lag.get('slow_consumer_drops', 0)} dropped as a slow consumer")
        lines = [head, "views: [h]osts [d]rops [c]ounters [p]eers   q quits", ""]
        if view == "drops":
            lines.append(f"{'drops':>10}  {'host':<16} {'reason':<22} location")
            for (host, reason, loc), n in self.drop_sites.most_common(rows):
                lines.append(f"{n:>10}  {host:<16} {reason:<22} {loc}")
        elif view == "counters":
            lines.append(f"{'delta':>12}  counter")
            shown = [(g, c) for g, c in LOSS_COUNTERS if self.counters.get((g, c))]
            rest = [k for k, _ in self.counters.most_common(rows) if k not in shown]
            for g, c in (shown + rest)[:rows]:
                lines.append(f"{self.counters[(g, c)]:>12}  {g}.{c}")
        elif view == "peers":
            lines.append(f"{'retrans':>10}  {'host':<16} peer")
            for (host, peer), n in self.peers.most_common(rows):
                lines.append(f"{n:>10}  {host:<16} {peer}")
        else:
            lines.append(f"{'host':<18} {'run':<17} {'sources':<34} own losses")
            for (host, _run), health in sorted(self.agents.items()):
                st = health.status
                sources = ",".join(f"{k}:{(v or {}).get('state', '?')[:4]}"
                                   for k, v in (st.get("sources") or {}).items())
                lost = {k: v for k, v in (st.get("lost") or {}).items() if v}
                lost_s = ", ".join(f"{k}={v}" for k, v in lost.items()) or "none"
                lines.append(f"{host:<18} {health.run:<17} {sources:<34} {lost_s}")
        return "\n".join(lines)

    def summary(self) -> str:
        lines = ["events seen per kind:"]
        for kind in sorted(self.events):
            lines.append(f"  {kind:<9} {self.events[kind]:>8} events in {self.batches[kind]:>6} batches")
        if not self.events:
            lines.append("  (none)")
        lines.append("agents' own losses (from their status):")
        losses = self.agent_losses()
        for host, lost in sorted(losses.items()):
            total = sum(lost.values())
            detail = ", ".join(f"{k}={v}" for k, v in sorted(lost.items()) if v) or "nothing lost"
            lines.append(f"  {host}: {total} ({detail}; {len(lost)} places accounted)")
        if not losses:
            lines.append("  (no status received)")
        for host, runs in sorted(self.unclean_ends.items()):
            lines.append(f"  {host}: {len(runs)} run(s) ended without a final status "
                         f"({', '.join(runs)}): killed; their last batches may be missing")
        missed = sum(self.missed.values())
        lines.append(f"batches missed by this viewer: {missed}; unexplained losses: {self.unexplained()}")
        if self.lag.get("slow_consumer_drops"):
            lines.append(f"this viewer fell behind: {self.lag['slow_consumer_drops']} messages "
                         "dropped as a slow consumer")
        return "\n".join(lines)

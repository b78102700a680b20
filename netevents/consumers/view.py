"""FleetView: a sans-IO tally of what arrives on the bus, rendered as text.

Fed batch by batch (``feed``), it keeps bounded per-host and per-kind totals, the top drop
sites, the busiest host counters, the worst peers, and each agent's own health and losses from
its ``status``; ``render`` draws it for ``netevents top`` / ``netevents up``, ``summary`` is
the closing report of ``up --duration``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..codec import Batch
from ..wire import EventRow
from .correlate.directory import HostDirectory

# Host counters that say something about loss, shown first in the netstat view.
LOSS_COUNTERS = (
    ("Tcp", "RetransSegs"), ("Tcp", "InErrs"), ("Tcp", "OutRsts"), ("TcpExt", "TCPTimeouts"),
    ("TcpExt", "ListenDrops"), ("TcpExt", "TCPBacklogDrop"), ("Udp", "RcvbufErrors"),
    ("Udp", "InErrors"), ("Udp", "NoPorts"), ("Ip", "InDiscards"), ("softnet", "dropped"),
    ("link", "rx_dropped"), ("link", "tx_dropped"), ("link", "rx_missed_errors"), ("qdisc", "drops"),
)


ABSENT = EventRow.ABSENT
_read_drop = EventRow.reader("reason", "location", "count", "flow")
_read_ipstat = EventRow.reader("peer", "retrans_segs", "timeouts", "resets", "resets_in")
"""The fields of the events :meth:`FleetView.feed` tallies (ABSENT: not in the event)."""

STATE_ABBREV = {"running": "ok", "starting": "starting", "unavailable": "n/a", "failed": "FAILED", "stopped": "stopped"}
"""How the hosts view writes a source's state (the reason of one that is not running follows
the table)."""


def _count(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0


def path_details(d: Any) -> dict[str, Any] | None:
    """The parts of a path_loss incident's details the view shows, checked (details are free
    form on the wire): from, to, delivered, lost, unknown, delay_ns {p50, p99}, reasons
    {reason: count}; None when it names no path."""
    if not isinstance(d, dict) or not d.get("from") or not d.get("to"):
        return None
    delay = d.get("delay_ns") if isinstance(d.get("delay_ns"), dict) else {}
    reasons = d.get("reasons") if isinstance(d.get("reasons"), dict) else {}
    return {"from": str(d["from"]), "to": str(d["to"]), "delivered": _count(d.get("delivered")),
            "lost": _count(d.get("lost")), "unknown": _count(d.get("unknown")),
            "delay_ns": {k: delay[k] for k in ("p50", "p99")
                         if type(delay.get(k)) in (int, float)},
            "reasons": {str(k): v for k, v in reasons.items() if type(v) is int}}


@dataclass
class AgentHealth:
    run: str = ""
    last_seen: float = 0.0
    status: dict[str, Any] = field(default_factory=dict)


PEER_SORTS = ("retrans", "drops", "timeouts", "resets", "window")
"""Orders of the peers view (``s`` in top cycles through them; ``top --sort``)."""


class FleetView:
    VIEWS = ("hosts", "drops", "counters", "peers", "paths", "incidents")
    KEYS = {"h": "hosts", "d": "drops", "c": "counters", "p": "peers", "l": "paths", "i": "incidents"}

    def __init__(self, max_keys: int = 10_000) -> None:
        self.max_keys = max_keys
        self.batches: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.per_host: dict[str, Counter[str]] = defaultdict(Counter)
        self.drop_sites: Counter[tuple[str, str, str]] = Counter()   # (host, reason, location)
        self.counters: Counter[tuple[str, str, str]] = Counter()     # (host, group, name) deltas
        self.peers: Counter[tuple[str, str]] = Counter()             # (host, peer) retransmits
        self.peer_resets: Counter[tuple[str, str, str]] = Counter()
        """(host, peer, "sent" | "received") -> TCP resets."""
        self.peer_timeouts: Counter[tuple[str, str]] = Counter()
        self.peer_span: dict[tuple[str, str], list[int]] = {}
        """(host, peer) -> [first window start, last window end] of its ipstat events."""
        self.flow_drops: dict[tuple[str, str, str], Counter[tuple[str, str]]] = {}
        """(host that dropped, flow src, flow dst) -> (reason, location) -> drops."""
        self.flow_span: dict[tuple[str, str, str], list[int]] = {}
        """(host that dropped, flow src, flow dst) -> [first, last] drop time."""
        self.directory = HostDirectory(max_keys=max_keys, evicted=Counter())
        """Which host an address is (the agents' status says), where a drop belongs."""
        self.peer_sort = "retrans"
        self.agents: dict[tuple[str, str], AgentHealth] = {}
        """(host, run) -> the last status of that agent run (capture workers are runs too)."""
        self._runs_of: dict[str, list[str]] = {}
        """host -> its runs in :attr:`agents`, in the order they came."""
        self.missed: Counter[tuple[str, str]] = Counter()
        self.evicted = 0
        self.feed_errors = 0
        """Batches the view failed on (a bug: every accepted batch should show)."""
        self.started = time.monotonic()
        self.incidents: deque[tuple[str, dict[str, Any]]] = deque(maxlen=200)
        """Latest incidents from the bus: (correlator host, incident)."""
        self.incident_counts: Counter[str] = Counter()
        self.paths: dict[tuple[str, str], dict[str, Any]] = {}
        """Per (from, to): the latest path_loss details a correlator published."""
        self.gaps: Counter[str] = Counter()
        """Frames lost by each host's capture (sum of gap.lost)."""
        self.correlator: Any = None
        """An in-process Correlator (netevents demo): its path table is shown live."""
        self.unclean_ends: dict[str, list[str]] = {}
        """host -> runs that ended without a final status (killed), seen when a new run began."""
        self.lag: dict[str, int] = {}
        """This viewer's own backlog (Subscription.lag()), refreshed by the feeding loop."""
        self.on_status: Callable[[str, dict[str, Any]], None] | None = None
        """Called with (host, status event) for every status fed: how a caller waits for an
        agent's first or final status without polling the view."""

    def _bounded(self, counter: Counter, key: Any, n: int) -> None:
        if key not in counter and len(counter) >= self.max_keys:
            self.evicted += 1
            return
        counter[key] += n

    def feed(self, batch: Batch) -> None:
        # Hot path (every batch of the fleet): locals, each event field read once.
        n = len(batch)
        kind, host = batch.kind, batch.host
        self.batches[kind] += 1
        self.events[kind] += n
        self.per_host[host][kind] += n
        if batch.missed:
            self.missed[(host, kind)] += batch.missed
        self.directory.see(batch)
        if kind == "status":
            for e in batch.events:
                key = (host, batch.run)
                if key not in self.agents:
                    # A new run of a host whose previous run never said goodbye: that run was
                    # killed (or its final status is lost); what it made after its last status
                    # cannot be known, and the view says so instead of staying silent.
                    # (The host's runs from an index: a walk of every agent for each new
                    # run was quadratic in the fleet's size.)
                    for run in self._runs_of.get(host, ()):
                        health = self.agents.get((host, run))
                        if health is not None and not health.status.get("final") \
                                and run not in self.unclean_ends.get(host, ()):
                            self.unclean_ends.setdefault(host, []).append(run)
                    self._runs_of.setdefault(host, []).append(batch.run)
                self.agents[key] = AgentHealth(batch.run, time.monotonic(), e)
                if self.on_status is not None:
                    self.on_status(host, e)
        elif kind == "drop":
            drop_sites = self.drop_sites
            for e in batch.events:
                reason, location, count, flow = _read_drop(e)
                key = (host, str(None if reason is ABSENT else reason), str(location or "?"))
                count = 0 if count is ABSENT else int(count)
                self._bounded(drop_sites, key, count)
                if flow and isinstance(flow, Mapping) and isinstance(flow.get("src"), str) \
                        and isinstance(flow.get("dst"), str):
                    entity, _how = self.directory.attribute(batch, e)
                    fkey = (str(entity), flow["src"], flow["dst"])
                    if entity is not None and (fkey in self.flow_drops
                                               or len(self.flow_drops) < self.max_keys):
                        self.flow_drops.setdefault(fkey, Counter())[(key[1], key[2])] += count
                        first, last = e.get("first_ts"), e.get("last_ts")
                        first = first if type(first) is int else batch.t0
                        last = last if type(last) is int else batch.t1
                        span = self.flow_span.setdefault(fkey, [first, last])
                        span[0], span[1] = min(span[0], first), max(span[1], last)
                    elif entity is not None:
                        self.evicted += 1
        elif kind == "netstat":
            for e in batch.events:
                for name, d in (e.get("deltas") or {}).items():
                    self._bounded(self.counters, (batch.host, e.get("group", "?"), name), int(d))
        elif kind == "ipstat":
            peers, peer_span, t0, t1 = self.peers, self.peer_span, batch.t0, batch.t1
            for e in batch.events:
                peer, retrans, timeouts, resets_out, resets_in = _read_ipstat(e)
                peer = str(None if peer is ABSENT else peer)
                pkey = (host, peer)
                self._bounded(peers, pkey, 0 if retrans is ABSENT else int(retrans))
                if timeouts:
                    self._bounded(self.peer_timeouts, pkey, int(timeouts))
                span = peer_span.get(pkey)
                if span is not None:
                    if t0 < span[0]:
                        span[0] = t0
                    if t1 > span[1]:
                        span[1] = t1
                elif pkey in peers:
                    peer_span[pkey] = [t0, t1]
                for resets, way in ((resets_out, "sent"), (resets_in, "received")):
                    if resets:
                        self._bounded(self.peer_resets, (host, peer, way), int(resets))
        elif kind == "gap":
            for e in batch.events:
                self.gaps[batch.host] += int(e.get("lost", 0))
        elif kind == "incident":
            for e in batch.events:
                self.incidents.append((batch.host, e))
                self.incident_counts[str(e.get("type"))] += 1
                d = path_details(e.get("details"))
                if e.get("type") == "path_loss" and d is not None:
                    key = (d["from"], d["to"])
                    if key in self.paths or len(self.paths) < self.max_keys:
                        self.paths[key] = d
                    else:
                        self.evicted += 1

    def path_rows(self) -> list[dict[str, Any]]:
        """Path table: the in-process correlator's if there is one, else the latest incidents'."""
        if self.correlator is not None:
            return self.correlator.path_table()
        rows = []
        for (a, b), d in self.paths.items():
            delay = d.get("delay_ns") or {}
            reasons = d.get("reasons") or {}
            rows.append({"from": a, "to": b, "delivered": d.get("delivered", 0),
                         "lost": d.get("lost", 0), "unknown": d.get("unknown", 0),
                         "p50_ns": delay.get("p50"), "p99_ns": delay.get("p99"),
                         "reason": max(reasons, key=reasons.get) if reasons else None})
        return sorted(rows, key=lambda r: (-r["lost"], -r["unknown"], r["from"], r["to"]))

    def peer_rows(self, sort: str | None = None) -> list[dict[str, Any]]:
        """Who is hurting whom, per (host, peer): the host's retransmits, timeouts and resets
        toward the peer address, and -- when the address is a fleet host's -- that host's
        drops on the flows between them (by reason and location), with the window the
        host's ipstat events and the peer's drops cover (``window_s``). Sorted by ``sort`` (one of
        :data:`PEER_SORTS`), worst first."""
        keys = set(self.peers) | set(self.peer_timeouts) | {(h, p) for h, p, _w in self.peer_resets}
        rows = []
        for host, peer in keys:
            b = self.directory.host_at(peer)
            drops: Counter[tuple[str, str]] = Counter()
            span = list(self.peer_span.get((host, peer)) or ()) or None
            if b is not None and b != host:
                for mine in self.directory.addresses_of(host):
                    for fkey in ((b, mine, peer), (b, peer, mine)):
                        drops.update(self.flow_drops.get(fkey, {}))
                        fs = self.flow_span.get(fkey)
                        if fs is not None:  # the window covers both sides' evidence
                            span = [min(span[0], fs[0]), max(span[1], fs[1])] if span else list(fs)
            rows.append({
                "host": host, "peer": peer, "peer_host": b if b != host else None,
                "retrans": self.peers.get((host, peer), 0),
                "timeouts": self.peer_timeouts.get((host, peer), 0),
                "resets_out": self.peer_resets.get((host, peer, "sent"), 0),
                "resets_in": self.peer_resets.get((host, peer, "received"), 0),
                "peer_drops": sum(drops.values()),
                "peer_drop_sites": [(r, loc, n) for (r, loc), n in drops.most_common()],
                "window_s": (span[1] - span[0]) / 1e9 if span else 0.0,
                "first_ns": span[0] if span else None, "last_ns": span[1] if span else None})
        order = sort or self.peer_sort
        measure = {"retrans": lambda r: (r["retrans"], r["peer_drops"]),
                   "drops": lambda r: (r["peer_drops"], r["retrans"]),
                   "timeouts": lambda r: (r["timeouts"], r["retrans"]),
                   "resets": lambda r: (r["resets_out"] + r["resets_in"], r["retrans"]),
                   "window": lambda r: (r["window_s"], r["retrans"])}.get(order)
        if measure is None:
            raise ValueError(f"peer sort must be one of {', '.join(PEER_SORTS)}, not {order!r}")
        return sorted(rows, key=lambda r: (tuple(-x for x in measure(r)), r["host"], r["peer"]))

    def cycle_sort(self) -> None:
        """The next order of the peers view (key ``s`` in top)."""
        self.peer_sort = PEER_SORTS[(PEER_SORTS.index(self.peer_sort) + 1) % len(PEER_SORTS)]

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
        # correlators publish incidents only: they are consumers, not hosts of the fleet
        hosts = sum(1 for kinds in self.per_host.values() if set(kinds) - {"incident"})
        head = (f"netevents  {hosts} host(s)  up {up:5.0f}s  "
                + "  ".join(f"{k}:{v}" for k, v in sorted(self.events.items()))
                + f"  missed batches:{sum(self.missed.values())}")
        if any(self.lag.get(k) for k in ("queued", "pending", "slow_consumer_drops")):
            head += (f"\nTHIS VIEW IS BEHIND: {self.lag.get('queued', 0)} batches queued, "
                     f"{self.lag.get('pending', 0)} pending, "
                     f"{self.lag.get('slow_consumer_drops', 0)} dropped as a slow consumer")
        lines = [head, "views: [h]osts [d]rops [c]ounters [p]eers path [l]oss [i]ncidents   q quits", ""]
        if view == "paths":
            lines.append(f"{'from':<16} {'to':<16} {'delivered':>9} {'lost':>6} {'loss%':>6} "
                         f"{'unknown':>7} {'p50 ms':>8} {'p99 ms':>8}  coincides with drops")
            for r in self.path_rows()[:rows]:
                judged = r["delivered"] + r["lost"]
                pct = 100.0 * r["lost"] / judged if judged else 0.0
                p50 = f"{r['p50_ns'] / 1e6:.3f}" if r.get("p50_ns") is not None else "-"
                p99 = f"{r['p99_ns'] / 1e6:.3f}" if r.get("p99_ns") is not None else "-"
                lines.append(f"{r['from']:<16} {r['to']:<16} {r['delivered']:>9} {r['lost']:>6} "
                             f"{pct:>6.1f} {r['unknown']:>7} {p50:>8} {p99:>8}  {r.get('reason') or '-'}")
            lines.append("unknown = missing while the receiver's capture had a gap, toward a host that captures "
                         "nothing (not captured at the receiver), or an offload super-packet "
                         "cut up on the way (not counted as lost)")
        elif view == "incidents":
            lines.append(f"{'type':<11} {'hosts':<34} summary")
            for _src, e in list(self.incidents)[::-1][:rows]:
                hosts = ",".join(e.get("hosts") or [])
                missing = sum((e.get("missing_input") or {}).values())
                tail = f"  [missing input: {missing} batches]" if missing else ""
                lines.append(f"{str(e.get('type')):<11} {hosts[:34]:<34} {e.get('summary')}{tail}")
        elif view == "drops":
            lines.append(f"{'drops':>10}  {'host':<16} {'reason':<22} location")
            for (host, reason, loc), n in self.drop_sites.most_common(rows):
                lines.append(f"{n:>10}  {host:<16} {reason:<22} {loc}")
        elif view == "counters":
            lines.append(f"{'delta':>12}  {'host':<16} counter")
            loss = set(LOSS_COUNTERS)  # the loss counters first, then the busiest, per host
            shown = sorted((k for k in self.counters if (k[1], k[2]) in loss and self.counters[k]),
                           key=lambda k: -self.counters[k])
            rest = [k for k, _ in self.counters.most_common(rows) if k not in shown]
            for h, g, c in (shown + rest)[:rows]:
                lines.append(f"{self.counters[(h, g, c)]:>12}  {h:<16} {g}.{c}")
        elif view == "peers":
            lines.extend(self._peers_table(rows))
        else:
            lines.extend(self._hosts_table())
        return "\n".join(lines)

    def _peers_table(self, rows: int) -> list[str]:
        """Who is hurting whom: one side's retransmits, timeouts and resets, the other side's
        drops on their flows."""
        out = [f"who is hurting whom, sorted by {self.peer_sort} ([s] changes: "
               f"{' '.join(PEER_SORTS)})",
               f"{'retrans':>8} {'timeouts':>8} {'rst out':>7} {'rst in':>6}  {'host':<14} "
               f"{'peer':<16} {'peer host':<14} {'its drops':>9} {'window':>7}  "
               "drops at the peer on their flows (reason at location)"]
        for r in self.peer_rows()[:rows]:
            sites = ", ".join(f"{n} {reason} at {loc}" for reason, loc, n in r["peer_drop_sites"][:3])
            peer_host = r["peer_host"] or "-"
            drops = str(r["peer_drops"]) if r["peer_host"] else "-"
            out.append(f"{r['retrans']:>8} {r['timeouts']:>8} {r['resets_out']:>7} "
                       f"{r['resets_in']:>6}  {r['host']:<14} {r['peer']:<16} {peer_host:<14} "
                       f"{drops:>9} {r['window_s']:>6.0f}s  {sites or '-'}")
        out.append("peer host: the fleet host whose status lists the peer address "
                   "(- : not a fleet host); window: what the host's ipstat windows and the "
                   "peer's drops cover")
        return out

    def _hosts_table(self) -> list[str]:
        """One row per agent run (a host seen before its first status: one row saying so),
        columns sized to their content; the reasons of sources that cannot run follow."""
        rows: list[tuple[str, str, str, str, str]] = []
        notes: list[str] = []
        for (host, _run), health in sorted(self.agents.items()):
            st = health.status
            parts = []
            for name, v in (st.get("sources") or {}).items():
                state = str((v or {}).get("state", "?"))
                parts.append(f"{name}:{STATE_ABBREV.get(state, state)}")
                if (v or {}).get("reason") and state != "running":
                    notes.append(f"  {host} {name}: {STATE_ABBREV.get(state, state)}: {v['reason']}")
            lost = {k: v for k, v in (st.get("lost") or {}).items() if v}
            rows.append((host, health.run, " ".join(parts) or "-", str(self.gaps[host]),
                         ", ".join(f"{k}={v}" for k, v in lost.items()) or "none"))
        with_status = {h for h, _r in self.agents}
        for host, kinds in sorted(self.per_host.items()):
            if host not in with_status and set(kinds) - {"incident"}:
                rows.append((host, "-", "waiting for status", str(self.gaps[host]), "-"))
        head = ("host", "run", "sources", "capture gaps", "own losses")
        width = [max([len(head[i])] + [len(r[i]) for r in rows]) for i in range(4)]
        fmt = (f"{{:<{width[0]}}}  {{:<{width[1]}}}  {{:<{width[2]}}}  {{:>{width[3]}}}  {{}}")
        out = [fmt.format(*head)] + [fmt.format(*r) for r in rows]
        if notes:
            out += ["", "sources that are not running (ok = running, n/a = unavailable here):"] + notes
        return out

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
        if self.lag.get("unreceived"):
            lines.append(f"batches the agents' status announced that this viewer never received "
                         f"(after its last batch of a run): {self.lag['unreceived']}")
        if self.lag.get("slow_consumer_drops"):
            lines.append(f"this viewer fell behind: {self.lag['slow_consumer_drops']} messages "
                         "dropped as a slow consumer")
        return "\n".join(lines)


async def feed_view(bus: Any, view: FleetView, stop: Any, *, ready: Any = None,
                    every: float = 1.0, on_refresh: Any = None, kinds: Any = None,
                    since: int | None = None, until: int | None = None,
                    keep: Callable[[Batch], Batch | None] | None = None) -> Any:
    """Feed ``view`` from a subscription to ``kinds`` (default every kind) until ``stop`` is
    set; every ``every`` seconds refresh ``view.lag`` (and call ``on_refresh(sub)``). Sets
    ``ready`` once subscribed. ``since``/``until`` (ns) replay the streams first; a replay that
    reaches ``until`` sets ``stop``. ``keep`` may narrow or drop a batch before the view sees it
    (client-side filters). Returns the subscription (its ``rejected`` counts)."""
    import asyncio

    sub = bus.subscribe(kinds, since=since, until=until)
    async with sub:
        if ready is not None:
            ready.set()
        loop = asyncio.get_running_loop()
        next_refresh = loop.time()
        while not stop.is_set():
            if getattr(sub, "finished", False):
                stop.set()
                break
            batch = await sub.next(timeout=0.2)
            if batch is not None and keep is not None:
                batch = keep(batch)
            if batch is not None:
                try:
                    view.feed(batch)
                except Exception:  # a bug of ours must not end the view: counted, logged once
                    view.feed_errors += 1
                    if view.feed_errors == 1:
                        logging.getLogger("netevents.view").exception(
                            "cannot show a %s batch of %s", batch.kind, batch.host)
            if loop.time() >= next_refresh:
                next_refresh = loop.time() + every
                view.lag = await sub.lag()
                if on_refresh is not None:
                    on_refresh(sub)
        view.lag = await sub.lag()
    return sub

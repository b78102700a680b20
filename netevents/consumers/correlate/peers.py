"""Peer incidents: who is hurting whom. Host A's per-IP retransmits, timeouts and resets toward
a peer address (``ipstat``) and, when the address is a fleet host B's (its status says so), B's
drops on the flows between them, by reason and location.

An incident is an *episode* of one (A, peer): it opens with the first ipstat window that raises
a flag (retransmits, timeouts, resets or losses), takes every later window of the pair while
they keep coming, and closes once the pair has been quiet for ``window``. It is published when
it opens, at most once per ``report`` while it lasts, and once more when it closes; each
publication carries the figures of its whole span so far (``first_ts`` .. ``last_ts``) and,
under ``new``, what this publication adds to the previous one -- so the closing figures of the
pair's episodes (or the sum of every publication's ``new``) add up to what A published. A
field A did not publish (``segs_out`` at the default level) is absent, never 0.

B's drops join an episode by the drop event's flow (A's address and the peer address, either
way) and its ``last_ts``: within the span, which the closing publication extends over B's
drops in the quiet time after A's last window (A's windows there raised no flag: they add no
retransmits). A publication covers the windows B's drops are known to have reached
(:meth:`~.directory.HostDirectory.drops_known_until`); past ``max_wait`` it goes out anyway
saying they are late (``drops_late``), and drops that arrive later are added to the next
publication of the episode (``late_drops``).
"""

from __future__ import annotations

import secrets
from collections import Counter, OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...codec import Batch
from ...events import IncidentEvent
from ...wire import EventRow
from .directory import HostDirectory
from .ledger import Drop, DropLedger
from .partition import Partition

NS = 1_000_000_000

SUMMED = ("retrans_segs", "timeouts", "resets", "resets_in", "lost", "bytes_retrans", "segs_out",
          "segs_in", "bytes_sent", "bytes_acked", "bytes_received", "dsack_dups", "opened",
          "closed")
"""The ipstat fields an episode adds up (only those the events carry)."""
FLAGGING = ("retrans_segs", "timeouts", "resets", "resets_in", "lost")
"""Figures that open an episode (retransmits: at least ``min_retrans``; the others: any).
The first of :data:`SUMMED`, in the same order (feed reads them there)."""
assert SUMMED[:len(FLAGGING)] == FLAGGING and FLAGGING[0] == "retrans_segs"
ABSENT = EventRow.ABSENT
_read_ipstat = EventRow.reader("peer", "local", "rtt_us", "flags", *SUMMED)
"""An ipstat event's fields :meth:`PeerViews.feed` reads (one call for a decoded row)."""
RECENT_DROPS_NS = 120 * NS
"""How long drops on a pair's flows wait for the episode they may belong to (stream time)."""


def _red_flag(summed: list | tuple, min_retrans: int) -> bool:
    """Whether an ipstat event's :data:`SUMMED` figures open an episode: retransmits at least
    ``min_retrans``, or any of the other :data:`FLAGGING` figures above 0."""
    retrans = summed[0]
    if (retrans if type(retrans) is int else 0) >= min_retrans:
        return True
    for v in summed[1:len(FLAGGING)]:
        if type(v) is int and v > 0:
            return True
    return False


@dataclass
class Episode:
    """One (A, peer) episode: its span, its sums, B's drops on their flows."""

    a: str
    peer: str
    b: str | None
    id: str
    first_ts: int
    last_ts: int
    totals: Counter = field(default_factory=Counter)
    present: set = field(default_factory=set)
    windows: int = 0
    rtt_us: int | None = None
    flags: set = field(default_factory=set)
    drops: Counter = field(default_factory=Counter)
    """(reason, location) -> B's drops on the pair's flows in the span published so far
    (``totals``, ``windows``, ``rtt_us``, ``flags``: likewise, of A's windows)."""
    pending: list = field(default_factory=list)
    """(last_ts, reason, location, count) of B's drops not yet published (later than the cut)."""
    late: int = 0
    """Drops that arrived after the publication that covered their time."""
    sent: Counter = field(default_factory=Counter)
    """Totals (ipstat fields and ``peer_dropped``) as last published."""
    cut: int | None = None
    """The span's end at the last publication."""
    published_at: int | None = None
    publications: int = 0
    queued: list = field(default_factory=list)
    """(window end, figures, rtt_us, flags) of the ipstat windows not yet published."""


class PeerViews:
    """The latest ipstat event per (host, peer address) -- at most ``max_keys``, evictions
    counted in ``evicted["ipstat"]`` -- and the peer episodes they make, for the (host, peer)
    keys ``partition`` owns.

    Args:
        window_ns: quiet time that closes an episode.
        report_ns: time between two publications of an open episode.
        max_wait_ns: how long a publication waits for the peer host's drops.
        min_retrans: retransmits in one window that open an episode (timeouts and resets
            open one too).
    """

    def __init__(self, directory: HostDirectory, drops: DropLedger, partition: Partition, *,
                 window_ns: int, min_retrans: int, max_keys: int, evicted: Counter[str],
                 report_ns: int = 5 * NS, max_wait_ns: int = 15 * NS,
                 counts: Counter[str] | None = None) -> None:
        self.directory = directory
        self.drops = drops
        self.partition = partition
        self.window_ns = window_ns
        self.report_ns = report_ns
        self.max_wait_ns = max_wait_ns
        self.min_retrans = min_retrans
        self.max_keys = max_keys
        self.evicted = evicted
        self.counts = counts if counts is not None else Counter()
        self.ipstat: OrderedDict[tuple[str, str], tuple[int, dict]] = OrderedDict()
        self.episodes: OrderedDict[tuple[str, str], Episode] = OrderedDict()
        self.recent: OrderedDict[tuple[str, str], deque] = OrderedDict()
        """(A, peer) -> B's drops on their flows while no episode is open: (last_ts, entity,
        reason, location, count)."""

    # -- input -------------------------------------------------------------------------------
    def feed(self, batch: Batch) -> list[IncidentEvent]:
        """Take an ``ipstat`` batch (publications come from :meth:`due`)."""
        # Hot path (every ipstat event of the fleet): locals, one read of each event's fields.
        host, t0, t1 = batch.host, batch.t0, batch.t1
        directory, ipstat, episodes = self.directory, self.ipstat, self.episodes
        max_keys, min_retrans = self.max_keys, self.min_retrans
        owns = None if self.partition.n == 1 else self.partition.owns
        for e in batch.events:
            peer, local, rtt, flags, *summed = _read_ipstat(e)
            if not isinstance(peer, str):
                directory.bad_input["ipstat.peer"] += 1
                continue
            if local:
                directory.learn_addr(str(local), host)
            key = (host, peer)
            if key in ipstat:
                ipstat[key] = (t1, e)
                ipstat.move_to_end(key)
            else:
                if len(ipstat) >= max_keys:
                    ipstat.popitem(last=False)
                    self.evicted["ipstat"] += 1
                ipstat[key] = (t1, e)
            if owns is not None and not owns(f"{host}|{peer}".encode()):
                continue  # another member's peer incident (the view is kept for its lookups)
            ep = episodes.get(key)
            if ep is None:
                if not _red_flag(summed, min_retrans):
                    continue
                ep = self._open(host, peer, t0, t1)
                if ep is None:
                    continue
            if t1 > ep.last_ts:
                ep.last_ts = t1
            figures = {f: v if type(v) is int else 0  # a value of another type counts 0
                       for f, v in zip(SUMMED, summed, strict=True) if v is not ABSENT}
            ep.queued.append((t1, figures, rtt if type(rtt) is int else None,
                              [str(x) for x in flags or ()]))
        return []

    def _open(self, a: str, peer: str, t0: int, t1: int) -> Episode | None:
        if len(self.episodes) >= self.max_keys:
            self.evicted["peer_episodes"] += 1
            return None
        ep = self.episodes[(a, peer)] = Episode(a, peer, None, secrets.token_hex(4), t0, t1)
        self._peer_host(ep)
        return ep

    def _peer_host(self, ep: Episode) -> None:
        """Who the peer address is (until the first publication: a status saying so may come
        after the window that opened the episode), and B's drops that came before."""
        b = self.directory.host_at(ep.peer)
        if b is None or b == ep.a:
            return
        ep.b = b
        for ts, entity, reason, loc, n in self.recent.pop((ep.a, ep.peer), ()):
            if ts >= ep.first_ts and entity == b:
                ep.pending.append((ts, reason, loc, n))

    def drop(self, d: Drop, flow: Any) -> None:
        """A drop the ledger took: joined to the episode of the flow's pair when its entity is
        the peer host (packets between A and B dropped at B, in either direction)."""
        if not isinstance(flow, Mapping):
            return
        src, dst = flow.get("src"), flow.get("dst")
        if not isinstance(src, str) or not isinstance(dst, str):
            return
        host_at = self.directory.host_at
        for a_addr, peer in ((src, dst), (dst, src)):
            a = host_at(a_addr)
            if a is None or a == d.entity or host_at(peer) != d.entity:
                continue
            key = (a, peer)
            ep = self.episodes.get(key)
            if ep is not None and ep.b == d.entity:
                if d.last_ts >= ep.first_ts:  # before the span: no episode's
                    if ep.cut is not None and d.last_ts <= ep.cut:
                        ep.late += d.count  # its time was published already: in the next one
                        ep.drops[(d.reason, d.location)] += d.count
                    else:
                        ep.pending.append((d.last_ts, d.reason, d.location, d.count))
                continue
            recent = self.recent.get(key)
            if recent is None:
                if len(self.recent) >= self.max_keys:
                    self.recent.popitem(last=False)
                    self.evicted["peer_recent_drops"] += 1
                recent = self.recent[key] = deque(maxlen=4096)
            recent.append((d.last_ts, d.entity, d.reason, d.location, d.count))
            while recent and recent[0][0] < d.last_ts - RECENT_DROPS_NS:
                recent.popleft()

    # -- output ------------------------------------------------------------------------------
    def due(self, now: int, *, flush: bool = False) -> list[IncidentEvent]:
        """Publications due at stream time ``now``: openings, updates, closings (``flush``:
        every open episode closes now). A publication covers the queued windows whose end
        the peer host's drops have reached; past ``max_wait`` (or at ``flush``) all of them,
        saying the drops are late."""
        out = []
        # Every open episode is looked at (thousands, every tick): the two times it is
        # compared with are worked out once.
        quiet_after = now - self.window_ns  # last window at or before it: quiet
        reported_after = now - self.report_ns  # published after it: not yet again
        for key, ep in list(self.episodes.items()):
            quiet = flush or ep.last_ts <= quiet_after
            if not quiet and (not ep.queued or (ep.published_at is not None
                                                and ep.published_at > reported_after)):
                continue
            if ep.b is None and ep.cut is None:
                self._peer_host(ep)
            known = self.directory.drops_known_until(ep.b) if ep.b else None
            take = len(ep.queued)
            if known is not None:
                take = 0
                while take < len(ep.queued) and ep.queued[take][0] <= known:
                    take += 1
                if take < len(ep.queued) and (flush or now - ep.queued[take][0] >= self.max_wait_ns):
                    take = len(ep.queued)  # waited long enough: out now, saying so
            if quiet and take < len(ep.queued) or not quiet and take == 0:
                continue  # B's drops for the span are not all in yet
            quiet_end = ep.last_ts + self.window_ns
            if (quiet and not flush and known is not None and known < quiet_end
                    and now - quiet_end < self.max_wait_ns):
                continue  # a close also takes B's drops of the quiet time: wait for them
            phase = "close" if quiet else "open" if ep.cut is None else "update"
            out.append(self._publish(ep, now, take, phase, known))
            if quiet:
                del self.episodes[key]
        return out

    def _publish(self, ep: Episode, now: int, take: int, phase: str,
                 known: int | None) -> IncidentEvent:
        windows, ep.queued = ep.queued[:take], ep.queued[take:]
        for _t1, figures, rtt, flags in windows:
            ep.windows += 1
            for f, v in figures.items():
                ep.present.add(f)
                ep.totals[f] += v
            if rtt is not None:
                ep.rtt_us = rtt
            ep.flags.update(flags)
        cut = max([w[0] for w in windows] + [ep.cut or ep.first_ts])
        if phase == "close" and ep.pending:
            # B's drops in the quiet time after A's last flagged window close the span: A's
            # windows there raised no flag (at the default level nothing is published for
            # them), so they add drops and no retransmits
            cut = max(cut, max(ts for ts, *_x in ep.pending))
        late = ep.b is not None and known is not None and known < cut
        keep = []
        for ts, reason, loc, n in ep.pending:
            if ts <= cut:
                ep.drops[(reason, loc)] += n
            else:
                keep.append((ts, reason, loc, n))
        ep.pending = keep
        ep.cut, ep.published_at = cut, now
        ep.publications += 1
        a, b, peer = ep.a, ep.b, ep.peer
        figures = {f: ep.totals[f] for f in SUMMED if f in ep.present}
        dropped = sum(ep.drops.values())
        current = Counter(figures)
        if b is not None:
            current["peer_dropped"] = dropped
        new = {k: v - ep.sent.get(k, 0) for k, v in current.items()}
        ep.sent = current
        hosts = [a] + ([b] if b else [])
        details: dict[str, Any] = {
            "from": a, "peer": peer, "peer_host": b, "episode": ep.id, "phase": phase,
            "publication": ep.publications, "windows": ep.windows,
            "span_s": round((cut - ep.first_ts) / NS, 3), **figures, "new": new,
            "rtt_us": ep.rtt_us, "flags": sorted(ep.flags)}
        inputs = ["ipstat"]
        if b is not None:
            details["peer_drops"] = [{"reason": r, "location": loc, "count": n}
                                     for (r, loc), n in ep.drops.most_common(16)]
            details["peer_dropped"] = dropped
            details["drops_late"] = late
            details["drops_known_until"] = known
            if ep.late:
                details["late_drops"] = ep.late
            inputs.append("drop")
            # B's drops in the span on any flow (sources without flow keys: tracepoint, counters)
            details["peer_host_drops"] = self.drops.near(b, ep.first_ts, cut + NS)
            view = None
            for ad in self.directory.addresses_of(a):
                got = self.ipstat.get((b, ad))
                if got is not None:
                    view = {"peer": ad, **{k: got[1][k] for k in (
                        "retrans_segs", "lost", "timeouts", "segs_in", "segs_out", "rtt_us",
                        "flags") if k in got[1]}}
            details["peer_view_of_sender"] = view
        return IncidentEvent(type="peer", summary=summary(details), hosts=hosts,
                             first_ts=ep.first_ts, last_ts=cut, details=details, inputs=inputs,
                             missing_input=self.directory.missing_for(set(hosts), inputs))


def summary(d: dict[str, Any]) -> str:
    """One line of a peer incident: both sides and the span they cover."""
    b = d.get("peer_host")
    parts = [f"{d.get('retrans_segs', 0)} retransmits"]
    for f, word in (("timeouts", "timeouts"), ("resets", "resets sent"),
                    ("resets_in", "resets received")):
        if d.get(f):
            parts.append(f"{d[f]} {word}")
    text = (f"peer: {d['from']} -> {b or d['peer']} ({d['peer']}): {', '.join(parts)} "
            f"over {d['span_s']:.0f}s")
    if b is not None:
        drops = d.get("peer_drops") or []
        if drops:
            top = drops[0]
            more = f" +{len(drops) - 1} more" if len(drops) > 1 else ""
            text += (f"; {b} dropped {d['peer_dropped']} on their flows ({top['reason']} at "
                     f"{top['location']}{more})")
        elif d.get("drops_known_until") is None:
            text += f"; {b} publishes no drop events"
        else:
            text += f"; {b} dropped nothing on their flows"
        if d.get("drops_late"):
            text += f" (its drops are late: in up to {d.get('drops_known_until')})"
    phase = {"open": "", "update": " [update]", "close": " [closed]"}[d["phase"]]
    return text + phase

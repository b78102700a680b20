"""`netevents query`: a summary of a time window of the streams (sans-IO tally + asyncio shell).

:class:`WindowSummary` is fed the batches a replay delivers and keeps exact sums:

* drops per host by reason and by location (sum of ``count``);
* capture loss per host (sum of gap ``lost``, number of gap records);
* per (host, peer): retransmitted segments, resets sent and received, RTO timeouts, lost;
* path loss per (from, to) pair from the correlators' ``path_loss`` incidents: the sum of the
  verdicts each report adds (``new_lost``, ``new_unknown``), the latest ``delivered`` per
  correlator run summed over runs;
* what was read (batches and events per kind) and what the reader knows it did not get
  (batches missed in sequence holes, per host and kind).

Tables show the top ``n`` rows; ``doc()`` (``--json``) holds every row, and its ``read`` part
says how many events the figures are the sum of.
"""

from __future__ import annotations

import sys
import time
from collections import Counter, defaultdict
from typing import Any, TextIO

from ..codec import Batch
from .filters import EventFilter

KINDS = ("drop", "gap", "ipstat", "incident")
PEER_FIELDS = ("retrans_segs", "resets", "resets_in", "timeouts", "lost")


class WindowSummary:
    """Exact sums over the batches fed (see the module text)."""

    def __init__(self, event_filter: EventFilter | None = None) -> None:
        self.filter = event_filter or EventFilter()
        self.batches: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.missed: Counter[tuple[str, str]] = Counter()
        self.drop_reasons: dict[str, Counter[str]] = defaultdict(Counter)
        self.drop_locations: dict[str, Counter[str]] = defaultdict(Counter)
        self.capture_lost: Counter[str] = Counter()
        self.gap_records: Counter[str] = Counter()
        self.peers: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        self.paths: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        self._delivered: dict[tuple[str, str, str, str], int] = {}
        self.first_ts: int | None = None
        self.last_ts: int | None = None

    def feed(self, batch: Batch) -> None:
        self.batches[batch.kind] += 1
        if batch.missed:
            self.missed[(batch.host, batch.kind)] += batch.missed
        self.first_ts = batch.t0 if self.first_ts is None else min(self.first_ts, batch.t0)
        self.last_ts = batch.t1 if self.last_ts is None else max(self.last_ts, batch.t1)
        for e in self.filter.rows(batch):
            self.events[batch.kind] += 1
            getattr(self, f"_{batch.kind}", _ignore)(batch, e)

    def _drop(self, batch: Batch, e: dict) -> None:
        n = _int(e.get("count"))
        self.drop_reasons[batch.host][str(e.get("reason") or "NOT_SPECIFIED")] += n
        self.drop_locations[batch.host][str(e.get("location") or "?")] += n

    def _gap(self, batch: Batch, e: dict) -> None:
        self.capture_lost[batch.host] += _int(e.get("lost"))
        self.gap_records[batch.host] += 1

    def _ipstat(self, batch: Batch, e: dict) -> None:
        c = self.peers[(batch.host, str(e.get("peer")))]
        for name in PEER_FIELDS:
            c[name] += _int(e.get(name))

    def _incident(self, batch: Batch, e: dict) -> None:
        d = e.get("details") if isinstance(e.get("details"), dict) else {}
        if e.get("type") != "path_loss" or not d.get("from") or not d.get("to"):
            return
        key = (str(d["from"]), str(d["to"]))
        c = self.paths[key]
        c["lost"] += _int(d.get("new_lost"))
        c["unknown"] += _int(d.get("new_unknown"))
        c["reports"] += 1
        self._delivered[(batch.host, batch.run, *key)] = _int(d.get("delivered"))

    # -- results --------------------------------------------------------------------------------
    def path_rows(self) -> list[dict[str, Any]]:
        delivered: Counter[tuple[str, str]] = Counter()
        for (_h, _r, a, b), n in self._delivered.items():
            delivered[(a, b)] += n
        rows = [{"from": a, "to": b, "lost": c["lost"], "unknown": c["unknown"],
                 "delivered": delivered[(a, b)], "reports": c["reports"]}
                for (a, b), c in self.paths.items()]
        return sorted(rows, key=lambda r: (-r["lost"], -r["unknown"], r["from"], r["to"]))

    def doc(self) -> dict[str, Any]:
        """Everything, as ``--json`` prints it."""
        return {
            "read": {"batches": dict(self.batches), "events": dict(self.events),
                     "missed_batches": [{"host": h, "kind": k, "batches": n}
                                        for (h, k), n in sorted(self.missed.items())],
                     "first_ts": self.first_ts, "last_ts": self.last_ts},
            "drops": [{"host": h, "total": sum(self.drop_reasons[h].values()),
                       "reasons": dict(self.drop_reasons[h].most_common()),
                       "locations": dict(self.drop_locations[h].most_common())}
                      for h in sorted(self.drop_reasons, key=lambda h: -sum(self.drop_reasons[h].values()))],
            "capture_loss": [{"host": h, "lost": n, "gaps": self.gap_records[h]}
                             for h, n in self.capture_lost.most_common()],
            "peers": [{"host": h, "peer": p, **dict(c)} for (h, p), c in
                      sorted(self.peers.items(), key=lambda kv: (-(kv[1]["retrans_segs"]),
                                                                 -(kv[1]["resets"] + kv[1]["resets_in"])))],
            "paths": self.path_rows(),
        }

    def table(self, top: int = 10) -> str:
        """The summary a person reads: top ``top`` rows of each part."""
        d = self.doc()
        out = ["drops by host (top reasons and locations)"]
        for row in d["drops"][:top]:
            out.append(f"  {row['host']:<16} {row['total']:>10}")
            for name in ("reasons", "locations"):
                items = list(row[name].items())[:top]
                out.append(f"    {name[:-1] + ':':<10} " + ", ".join(f"{k} {v}" for k, v in items))
        if not d["drops"]:
            out.append("  none")
        out.append("capture loss by host (frames lost in capture gaps)")
        out += [f"  {r['host']:<16} {r['lost']:>10} in {r['gaps']} gaps" for r in d["capture_loss"][:top]]
        if not d["capture_loss"]:
            out.append("  none")
        out.append("peers by retransmits (resets sent/received, timeouts)")
        peers = sorted(d["peers"], key=lambda r: (-r["retrans_segs"], -(r["resets"] + r["resets_in"])))
        out += [f"  {r['host']:<16} {r['peer']:<28} retrans {r['retrans_segs']:>7}  resets "
                f"{r['resets']}/{r['resets_in']}  timeouts {r['timeouts']}" for r in peers[:top]]
        resets = sorted((r for r in d["peers"] if r["resets"] + r["resets_in"]),
                        key=lambda r: -(r["resets"] + r["resets_in"]))
        if resets and resets[0] not in peers[:top]:
            out.append("peers by resets")
            out += [f"  {r['host']:<16} {r['peer']:<28} resets {r['resets']}/{r['resets_in']}"
                    for r in resets[:top]]
        if not d["peers"]:
            out.append("  none")
        out.append("path loss per pair (correlator verdicts: lost, unknown in a capture gap)")
        out += [f"  {r['from']} -> {r['to']}: lost {r['lost']}, unknown {r['unknown']}, "
                f"delivered {r['delivered']}" for r in d["paths"][:top]]
        if not d["paths"]:
            out.append("  none (no path_loss incidents: is `netevents correlate` running?)")
        r = d["read"]
        missed = sum(m["batches"] for m in r["missed_batches"])
        out.append(f"read: {sum(r['batches'].values())} batches, events {r['events'] or 'none'}; "
                   f"batches missed (sequence holes) {missed}")
        return "\n".join(out)


def _int(v: Any) -> int:
    return v if type(v) is int else 0


def _ignore(batch: Batch, e: dict) -> None:
    return None


class Progress:
    """A progress line on stderr while a replay reads: rewritten in place on a terminal, a
    line every ``every`` seconds otherwise."""

    def __init__(self, name: str, err: TextIO | None = None, every: float = 1.0) -> None:
        self.name, self.err, self.every = name, err or sys.stderr, every
        self.tty = self.err.isatty()
        self.last = 0.0
        self.shown = False

    def update(self, batches: int, ts_ns: int | None, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < self.every:
            return
        self.last = now
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts_ns / 1e9)) if ts_ns else "-"
        text = f"netevents {self.name}: read {batches} batches, up to {at}"
        if self.tty:
            self.err.write("\r" + text + ("\n" if final else ""))
        else:
            self.err.write(text + "\n")
        self.err.flush()
        self.shown = True

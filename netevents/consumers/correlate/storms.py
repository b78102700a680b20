"""Drop storms: the same (reason, location) on >= ``storm_hosts`` hosts within ``window``.

One incident lists the hosts, their counts and first/last seen; it is re-published only when
more hosts join the same episode (same ``episode`` id), at most once per report interval.
"""

from __future__ import annotations

import itertools
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from ...events import IncidentEvent
from .directory import HostDirectory
from .ledger import Drop
from .partition import Partition

NS = 1_000_000_000

STORM_LISTED = 50
"""Hosts of a storm detailed in ``details.per_host`` (the largest counts)."""
STORM_HOSTS = 500
"""Hosts of a storm named in ``hosts`` (``details.hosts_total`` counts them all)."""


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


class StormTracker:
    """Storms by (reason, location); at most ``max_keys`` (the least recently fed is evicted,
    counted in ``evicted["storms"]``). Only the keys ``partition`` owns are followed."""

    def __init__(self, directory: HostDirectory, partition: Partition, *, window_ns: int,
                 storm_hosts: int, report_ns: int, max_keys: int, evicted: Counter[str]) -> None:
        self.directory = directory
        self.partition = partition
        self.window_ns = window_ns
        self.storm_hosts = storm_hosts
        self.report_ns = report_ns
        self.max_keys = max_keys
        self.evicted = evicted
        self.storms: OrderedDict[tuple[str, str], Storm] = OrderedDict()
        self._episodes = itertools.count(1)

    def __len__(self) -> int:
        return len(self.storms)

    def observe(self, drop: Drop, reporter: str) -> IncidentEvent | None:
        """A drop (as the ledger took it) reported by host ``reporter``; the incident it makes
        or updates, if any."""
        # Hot path (every drop event of the fleet): the drop unpacked at once, no min/max calls.
        entity, how, reason, location, first, last, count = drop
        key = (reason, location)
        if self.partition.n > 1 and not self.partition.owns(f"{reason}|{location}".encode()):
            return None  # another member's storm
        storms = self.storms
        storm = storms.get(key)
        if storm is None:
            if len(storms) >= self.max_keys:
                storms.popitem(last=False)
                self.evicted["storms"] += 1
            storm = storms[key] = Storm()
        else:
            storms.move_to_end(key)
        entry = storm.entities.get(entity)
        joined = entry is None or last - entry.last_ts > self.window_ns
        if joined:
            entry = storm.entities[entity] = StormEntry(first_ts=first, last_ts=last, how=how)
        entry.count_by_reporter[reporter] += count
        if first < entry.first_ts:
            entry.first_ts = first
        if last > entry.last_ts:
            entry.last_ts = last
        if entity in storm.reported:
            if joined:
                # back after a quiet window, in an episode that named it already: the storm
                # is looked at once at the next tick (due), not by a scan of its hosts per
                # event -- after a consumer's gap every host comes back at once
                storm.dirty = True
            return None  # counts grow in an episode already reported: no new incident
        if storm.reported and last - storm.last_report < self.report_ns:
            storm.dirty = True  # a host joined a reported storm: one update per interval
            return None
        return self._check(key, storm, last)

    def due(self, now: int) -> list[IncidentEvent]:
        """The updates of storms that hosts joined since their last report (one per interval)."""
        out = []
        for key, storm in list(self.storms.items()):
            if storm.dirty and now - storm.last_report >= self.report_ns:
                inc = self._check(key, storm, now)
                storm.dirty = False
                if inc is not None:
                    out.append(inc)
        return out

    def _check(self, key: tuple[str, str], storm: Storm, now: int) -> IncidentEvent | None:
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
        top = sorted(live.items(), key=lambda kv: (-kv[1].count, kv[0]))[:STORM_LISTED]
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
        return IncidentEvent(
            type="drop_storm", summary=summary, hosts=names[:STORM_HOSTS],
            first_ts=min(en.first_ts for en in live.values()),
            last_ts=max(en.last_ts for en in live.values()),
            details={"reason": reason, "location": location, "per_host": per_host,
                     "total": total, "episode": storm.episode,
                     "update": bool(was),
                     "machine_wide": machine_wide, "window_s": self.window_ns / NS,
                     "hosts_total": len(names)},
            inputs=["drop"],
            missing_input=self.directory.missing_for(set(reporters[:STORM_HOSTS]), ["drop"]))

"""Path loss: frames seen leaving host A (``dir`` 4, outgoing) matched with the same frames
arriving at host B, by a fingerprint of fields no hop changes (:mod:`.fingerprint`).

After ``grace`` an unmatched departure is judged: *unknown* when B's capture was blind then
(:class:`~.coverage.CaptureCoverage`), *lost* otherwise; a loss is put down to a drop reason
when a drop on B's machine can explain it (:meth:`.ledger.DropLedger.explain_loss`). A departure
is judged only once B's capture is known a grace period past it (or it waited ``max_wait``).
"""

from __future__ import annotations

import functools
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter, sub
from typing import Any, NamedTuple

from ...codec import Batch
from ...events import IncidentEvent
from .coverage import CaptureCoverage
from .directory import HostDirectory
from .fingerprint import ARRIVING, IPPROTO_TCP, MAX_FRAME, PACKET_OUTGOING, addr_text, fingerprints
from .ledger import DropLedger
from .partition import Partition, partition_of

NS = 1_000_000_000

SOURCE_NAMES = {0: "fallback", 1: "software", 2: "hardware"}


@functools.lru_cache(maxsize=64)
def _source_pair(src_a: int, src_b: int) -> str:
    """``software->hardware``: which clocks the two timestamps of a delivered frame came from."""
    return f"{SOURCE_NAMES.get(src_a, src_a)}->{SOURCE_NAMES.get(src_b, src_b)}"


_INT = {int}
_HOST, _TS, _TS_SRC = itemgetter(0), itemgetter(1), itemgetter(2)
"""Fields of a Departure (a tuple), read in bulk."""


def _quantile(values: list[int], q: float) -> int | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class Departure(NamedTuple):
    """A frame seen leaving ``host``, waiting for its arrival (a tuple: the hot path makes
    them in bulk, ``tuple.__new__`` over zipped columns)."""

    host: str
    ts: int
    ts_src: int
    dst: str | None
    src: str | None = None
    offload: bool = False
    """A TCP frame longer than any Ethernet frame: a segmentation-offload (GSO/TSO) super-packet
    as the sender's tap saw it, which a qdisc, a device or the NIC may cut into segments on
    the way: its absence at the receiver proves nothing."""


class Arrival(NamedTuple):
    """A frame seen arriving at ``host``, waiting for its departure."""

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
    unknown_uncaptured: int = 0
    """Of ``unknown``: frames toward a host that captures nothing (no capture ring of it was
    ever seen): not captured at the receiver, which is no capture gap."""
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


def match_whole(departures: OrderedDict, arrivals: OrderedDict, max_frames: int,
                departure: type, host: str, fps: list, ts_c: list, tss_c: list, dir_c: list,
                src_c: list, dst_c: list, l4_c: list, src_t: str | None,
                dst_t: str | None) -> None | bool | tuple:
    """A frame batch of ``host`` matched whole, or None (nothing changed: the loop of
    :meth:`PathLoss.frames` takes it). The reference of ``_cfinger.bulk``, which the matching
    uses when built.

    - Every frame leaving (``dir`` 4) from one address toward one address, with ints for
      stamps, distinct keys, no TCP (a TCP frame may be an offload super-packet), none of them
      seen arriving or departed yet and room for all: each becomes a ``departure`` (host, ts,
      ts_src, ``dst_t``, ``src_t``, False). True.
    - Every frame arriving (``dir`` 0) at one address, each the departure of one sender other
      than ``host``: those departures are removed. (sender, the delays, the first and last
      departure stamps, the pair of stamp sources when they are all the same, else a list of
      the pairs per frame).
    """
    n = len(fps)
    if not n or len(set(fps)) < n or set(map(type, fps)) != _INT \
            or set(map(type, ts_c)) != _INT or set(map(type, tss_c)) != _INT \
            or src_c.count(src_c[0]) < n or dst_c.count(dst_c[0]) < n:
        return None
    if _all_int(dir_c, PACKET_OUTGOING):
        if set(map(type, l4_c)) != _INT or IPPROTO_TCP in l4_c or len(departures) + n > max_frames \
                or (arrivals and not arrivals.keys().isdisjoint(fps)) \
                or not departures.keys().isdisjoint(fps):
            return None
        departures.update(zip(fps, map(tuple.__new__, repeat(departure), zip(
            repeat(host, n), ts_c, tss_c, repeat(dst_t, n), repeat(src_t, n),
            repeat(False, n), strict=True)), strict=True))
        return True
    if not _all_int(dir_c, 0):
        return None
    deps = list(map(departures.get, fps))
    if None in deps or set(map(type, map(_TS, deps))) != _INT:
        return None
    a = deps[0].host
    if a == host or len(set(map(_HOST, deps))) > 1:
        return None
    for fp in fps:
        del departures[fp]
    sent = list(map(_TS, deps))
    srcs = list(map(_TS_SRC, deps))
    sources: tuple | list = (srcs[0], tss_c[0])
    if srcs.count(srcs[0]) < n or tss_c.count(tss_c[0]) < n:
        sources = list(zip(srcs, tss_c, strict=True))
    return a, list(map(sub, ts_c, sent)), min(sent), max(sent), sources


def _all_int(col: list, value: int) -> bool:
    """Every item of ``col`` is the int ``value`` (an int, not a float or bool equal to it)."""
    return col.count(value) == len(col) and set(map(type, col)) == _INT


try:
    from ._cfinger import bulk as _match_whole
except ImportError:  # built without a C compiler: the same matching in Python
    _match_whole = match_whole


class PathLoss:
    """Departures and arrivals waiting for their match, per pair of hosts the verdicts.

    Args:
        grace_ns: how long a departure waits for its arrival before it is judged.
        max_wait_ns: how long it waits at most for the receiver's capture to get past it.
        max_frames: departures and arrivals kept each; the oldest is evicted past that and
            counted in ``evicted["frames"]`` -- it is never judged.
        max_keys: pairs kept.
        report_ns: time between two path_loss incidents of one pair.
        partition: only the pairs of addresses this member owns are matched (both directions
            of a path go together).
    """

    def __init__(self, directory: HostDirectory, drops: DropLedger, coverage: CaptureCoverage,
                 partition: Partition, *, grace_ns: int, max_wait_ns: int, max_frames: int,
                 max_keys: int, report_ns: int, counts: Counter[str],
                 evicted: Counter[str]) -> None:
        self.directory = directory
        self.drops = drops
        self.coverage = coverage
        self.partition = partition
        self.grace_ns = grace_ns
        self.max_wait_ns = max_wait_ns
        self.max_frames = max_frames
        self.max_keys = max_keys
        self.report_ns = report_ns
        self.counts = counts
        self.evicted = evicted
        self.departures: OrderedDict[int, Departure] = OrderedDict()
        self.arrivals: OrderedDict[int, Arrival] = OrderedDict()
        self.pairs: dict[tuple[str, str], PairStats] = {}
        self.reported_at: dict[tuple[str, str], int] = {}

    def frames(self, batch: Batch) -> None:
        """Match the frames of a ``frame`` batch (columns) with those seen elsewhere."""
        # Hot loop (every frame of the fleet passes here): columns walked together with zip,
        # attributes bound to locals, each address turned into text once per batch.
        cols = batch.events
        n = len(batch)
        get = cols.get
        none, zero = [None] * n, [0] * n
        ts_c, src_c, dst_c, l4_c = get("ts") or [], get("src") or none, get("dst") or none, get("l4") or none
        sp_c, dp_c = get("sport") or none, get("dport") or none
        id_c, seq_c = get("ip_id") or none, get("tcp_seq") or none
        head_c, dir_c = get("head") or none, get("dir") or zero
        tss_c = get("ts_src") or zero
        len_c = get("len") or zero
        host = batch.host
        learn = self.directory.learn_addr
        part_n, part_k = self.partition.n, self.partition.k
        arrivals, departures, max_frames = self.arrivals, self.departures, self.max_frames
        counts, evicted = self.counts, self.evicted
        texts: dict[Any, str | None] = {}
        delivered = self._delivered
        learned = None   # the address last learned as this host's (a batch's frames share it)

        def text(raw: Any) -> str | None:
            t = texts.get(raw, texts)
            if t is texts:
                t = texts[raw] = addr_text(raw)
            return t  # type: ignore[return-value]

        if part_n > 1:  # only this member's paths (both directions of a pair go together)
            mine = [i for i, (a, b) in enumerate(zip(src_c, dst_c, strict=False)) if a and b
                    and partition_of(a + b if a < b else b + a, part_n) == part_k]
            if len(mine) < n:
                ts_c, tss_c, dir_c, src_c, dst_c, l4_c, sp_c, dp_c, id_c, seq_c, head_c, len_c = (
                    [c[i] for i in mine] for c in (ts_c, tss_c, dir_c, src_c, dst_c, l4_c, sp_c,
                                                   dp_c, id_c, seq_c, head_c, len_c))
        fps = fingerprints(src_c, dst_c, l4_c, sp_c, dp_c, id_c, seq_c, head_c)
        if self._bulk(host, fps, ts_c, tss_c, dir_c, src_c, dst_c, l4_c):
            return
        for fp, ts, tss, d, src, dst, l4, length in zip(
                fps, ts_c, tss_c, dir_c, src_c, dst_c, l4_c, len_c,
                strict=False):  # equal lengths: the codec checked them
            if fp is None:
                continue
            ts, tss = int(ts), int(tss or 0)
            if d == PACKET_OUTGOING:
                src_t = text(src)
                if src_t is not learned:
                    learn(src_t, host)
                    learned = src_t
                arr = arrivals.pop(fp, None)
                if arr is not None:
                    delivered(host, arr.host, ts, tss, arr.ts, arr.ts_src)
                    continue
                if fp in departures:
                    counts["duplicate_fingerprints"] += 1
                    continue
                if len(departures) >= max_frames:
                    departures.popitem(last=False)
                    evicted["frames"] += 1
                departures[fp] = Departure(host, ts, tss, text(dst), src_t,
                                           l4 == IPPROTO_TCP and (length or 0) > MAX_FRAME)
            elif d in ARRIVING:
                if d == 0:
                    dst_t = text(dst)
                    if dst_t is not learned:
                        learn(dst_t, host)
                        learned = dst_t
                dep = departures.get(fp)
                if dep is not None and dep.host != host:
                    del departures[fp]
                    delivered(dep.host, host, dep.ts, dep.ts_src, ts, tss)
                    continue
                if len(arrivals) >= max_frames:
                    arrivals.popitem(last=False)
                    evicted["frames"] += 1
                arrivals[fp] = Arrival(host, ts, tss)

    def _bulk(self, host: str, fps: list, ts_c: list, tss_c: list, dir_c: list, src_c: list,
              dst_c: list, l4_c: list) -> bool:
        """The batches nearly every frame is in, taken whole (what the loop of :meth:`frames`
        would do, without a Python step per frame): every frame leaving toward one address with
        none of them seen arriving yet, or every frame arriving (``dir`` 0) to be matched with
        departures of one sender. False (nothing done) for anything else.

        The matching is one call (:func:`match_whole`, in C when built); what it finds is put
        down here."""
        n = len(fps)
        if not n:
            return False
        src_t, dst_t = addr_text(src_c[0]), addr_text(dst_c[0])
        got = _match_whole(self.departures, self.arrivals, self.max_frames, Departure, host, fps,
                           ts_c, tss_c, dir_c, src_c, dst_c, l4_c, src_t, dst_t)
        if got is None:
            return False
        if got is True:
            self.directory.learn_addr(src_t, host)
            return True
        a, delays, first, last, sources = got
        self.directory.learn_addr(dst_t, host)
        p = self.pairs.get((a, host)) or self._pair(a, host)
        p.delivered += n
        p.delays_ns.extend(delays)
        if type(sources) is tuple:  # every frame's stamps from the same pair of clocks
            p.ts_sources[_source_pair(*sources)] += n
        else:
            for src_a, src_b in sources:
                p.ts_sources[_source_pair(src_a, src_b)] += 1
        p.seen(first)
        p.seen(last)
        return True

    def _pair(self, a: str, b: str) -> PairStats:
        p = self.pairs.get((a, b))
        if p is None:
            if len(self.pairs) >= self.max_keys:
                self.pairs.pop(next(iter(self.pairs)))
                self.evicted["pairs"] += 1
            p = self.pairs[(a, b)] = PairStats()
        return p

    def _delivered(self, a: str, b: str, ts_a: int, src_a: int, ts_b: int, src_b: int) -> None:
        p = self.pairs.get((a, b)) or self._pair(a, b)
        p.delivered += 1
        p.delays_ns.append(ts_b - ts_a)
        p.ts_sources[_source_pair(src_a, src_b)] += 1
        p.seen(ts_a)

    def judge(self, now: int, *, flush: bool = False) -> None:
        """Judge departures older than ``grace`` at ``now``; with ``flush`` (shutdown), without
        waiting for receivers whose capture is behind."""
        coverage = self.coverage
        waiting: list[int] = []
        for fp, dep in list(self.departures.items()):
            if now - dep.ts < self.grace_ns:
                break
            b = self.directory.host_at(dep.dst)
            captured = b is not None and bool(coverage.ring_progress.get(b))
            if b is not None and b != dep.host and not flush and captured:
                # B's capture has not yet published frames a grace period past this one (it
                # is behind, or stalled): its frames -- or the gap record saying it was blind
                # -- may still come. Wait, up to max_wait.
                if (coverage.known_until(b) < dep.ts + self.grace_ns
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
            if not captured:
                p.unknown += 1  # B captures nothing: the frame is not captured at the receiver
                p.unknown_uncaptured += 1
            elif coverage.blind_at(b, expected):
                p.unknown += 1
            elif dep.offload:
                p.unknown += 1  # cut into segments on the way, most likely: not a loss
                p.unknown_offload += 1
            elif coverage.known_until(b) < dep.ts:
                p.unknown += 1  # B's capture never got past this time: it cannot tell
                self.counts["unknown_receiver_silent"] += 1
            else:
                p.lost += 1
                reason, by_packet = self.drops.explain_loss(fp, b, dep.ts, (dep.src, dep.dst))
                if reason is not None:
                    p.reasons[reason] += 1
                    p.named_by_packet += by_packet
        for fp in reversed(waiting):  # back to the front, in their order
            self.departures.move_to_end(fp, last=False)
        # arrivals without a departure after 2 x grace: sender not captured or departure evicted
        while self.arrivals:
            fp, arr = next(iter(self.arrivals.items()))
            if now - arr.ts < 2 * self.grace_ns:
                break
            del self.arrivals[fp]
            self.counts["arrivals_unmatched"] += 1

    def report(self, now: int) -> list[IncidentEvent]:
        """A path_loss incident for each pair with new verdicts (one per report interval)."""
        out = []
        for key, p in list(self.pairs.items()):
            if p.lost == p.reported_lost and p.unknown == p.reported_unknown:
                continue
            last = self.reported_at.get(key)
            if last is not None and now - last < self.report_ns:
                continue
            out.append(self._incident(key, p, now))
        return out

    def _incident(self, key: tuple[str, str], p: PairStats, now: int) -> IncidentEvent:
        a, b = key
        self.reported_at[key] = now
        new_lost, new_unknown = p.lost - p.reported_lost, p.unknown - p.reported_unknown
        p.reported_lost, p.reported_unknown = p.lost, p.unknown
        judged = p.delivered + p.lost
        pct = 100.0 * p.lost / judged if judged else 0.0
        delays = list(p.delays_ns)
        p50, p99 = _quantile(delays, 0.5), _quantile(delays, 0.99)
        reason = p.reasons.most_common(1)[0][0] if p.reasons else None
        summary = f"path {a} -> {b}: {p.lost} lost of {judged} ({pct:.1f}%)"
        gap = p.unknown - p.unknown_offload - p.unknown_uncaptured
        if gap:
            summary += f", {gap} unknown (capture gap on {b})"
        if p.unknown_uncaptured:
            summary += f", {p.unknown_uncaptured} not captured at the receiver ({b} has no capture)"
        if p.unknown_offload:
            summary += f", {p.unknown_offload} unknown (offload super-packets, cut up on the way)"
        if reason:
            summary += f"; coincides with drops on {b}: {reason}"
        if p50 is not None:
            summary += f"; one-way delay p50 {p50 / 1e6:.3f} ms p99 {p99 / 1e6:.3f} ms"
        inputs = ["frame", "gap"] + (["drop"] if p.reasons else [])
        return IncidentEvent(
            type="path_loss", summary=summary, hosts=[a, b], first_ts=p.first_ts, last_ts=p.last_ts,
            details={"from": a, "to": b, "delivered": p.delivered, "lost": p.lost,
                     "unknown": p.unknown, "new_lost": new_lost, "new_unknown": new_unknown,
                     "loss_pct": round(pct, 3), "reasons": dict(p.reasons),
                     "reasons_by_packet": p.named_by_packet,
                     "unknown_offload": p.unknown_offload,
                     "unknown_uncaptured": p.unknown_uncaptured,
                     "delay_ns": {"p50": p50, "p99": p99, "samples": len(delays),
                                  "min": min(delays) if delays else None},
                     "ts_src": dict(p.ts_sources),
                     "ts_note": "one-way delay = arrival stamp on B - departure stamp on A; "
                                "clocks of different machines add their offset",
                     "grace_s": self.grace_ns / NS, "frames_evicted": self.evicted["frames"]},
            inputs=inputs, missing_input=self.directory.missing_for({a, b}, ["frame", "gap"]))

    def table(self) -> list[dict[str, Any]]:
        """Per pair: delivered, lost, unknown, p50/p99 delay (for views and metrics)."""
        rows = []
        for (a, b), p in self.pairs.items():
            delays = list(p.delays_ns)
            rows.append({"from": a, "to": b, "delivered": p.delivered, "lost": p.lost,
                         "unknown": p.unknown, "uncaptured": p.unknown_uncaptured,
                         "p50_ns": _quantile(delays, 0.5),
                         "p99_ns": _quantile(delays, 0.99),
                         "reason": p.reasons.most_common(1)[0][0] if p.reasons else None})
        return sorted(rows, key=lambda r: (-r["lost"], -r["unknown"], r["from"], r["to"]))

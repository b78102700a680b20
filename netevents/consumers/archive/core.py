"""The archive's sans-IO core: batches in, PcapNG bytes out (no files, sockets or loop).

What a file holds: one IDB per (host, interface, capture worker), ``if_description`` = host;
EPBs with nanosecond timestamps, direction and reception type from ``sll_pkttype``, the rx
queue, the rxhash and a fleet-unique ``epb_packetid``; packet-mode drop events on one
pseudo-interface ``drops@<host>`` per host, each with a comment naming reason and location;
at close one cumulative ISB per interface.

Where a gap goes: a gap record says "``lost`` frames between frame k (after_frame) and k+1
(before_frame) of ring (host, run, iface, worker)". A gap that arrives before frame k+1 waits
(bounded, counted) for it; a gap whose frame k+1 was already written ("late") goes on the next
frame written on that ring, with a comment saying so -- the total per ring stays exact, the
position is off by the frames in between. Gaps that never find a frame are counted as
``unplaced`` in the sidecar and the ISB. Frames the archive never received (missed batches: a
jump in ``first_frame``) are not capture loss: they are counted as ``unseen_frames`` and noted in
a comment, never as a dropcount.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ... import __version__
from ...codec import Batch
from ...pcapng import PcapngWriter

log = logging.getLogger("netevents.archive")

DEFAULT_SNAPLEN = 96
MAX_PENDING_GAPS = 100_000
"""Gaps waiting for their frame, over all rings; beyond this the oldest are given up (counted)."""

_U64 = (1 << 64) - 1


def packetid_base(host: str, run: str, iface: str, worker: int) -> int:
    """The per-ring base of ``epb_packetid``: 64 bits of BLAKE2b over (host, run, iface, worker).

    A frame's id is ``(base + frame sequence) mod 2**64``: one addition per frame in the hot
    loop, and an id maps back to its frame (id - base) given the ring, which each file names in
    the comment of the ring's first frame. Two rings collide only if their bases fall within a
    ring's frame count of each other: for n rings of up to F frames that is about n^2 F / 2^64,
    ~5e-3 for 10^4 rings of 10^9 frames each -- where a plain counter per archiver would collide
    across archivers for certain.
    """
    key = f"{host}\0{run}\0{iface}\0{worker}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


@dataclass(slots=True)
class Ring:
    """One capture ring of one agent run: where its frame sequence stands, gaps waiting."""

    host: str
    run: str
    iface: str
    worker: int
    base: int
    next_frame: int | None = None          # sequence number of the next frame we expect
    pending: dict[int, list[dict]] = field(default_factory=dict)   # before_frame -> gaps
    carry: list[dict] = field(default_factory=list)                # late gaps for the next frame


@dataclass(slots=True)
class IfaceStats:
    """One IDB of the current file and what was written on it."""

    if_id: int
    host: str
    name: str
    worker: int | None
    packets: int = 0
    dropcount: int = 0
    unplaced: int = 0
    unseen: int = 0
    kernel: dict | None = None      # the capture's latest ring totals (batch field "ring")
    first_ts: int | None = None
    last_ts: int | None = None

    def doc(self) -> dict[str, Any]:
        """As the sidecar lists it (``interfaces``)."""
        return {"id": self.if_id, "name": self.name, "host": self.host, "worker": self.worker,
                "packets": self.packets, "dropcount": self.dropcount, "unplaced": self.unplaced,
                "unseen_frames": self.unseen, "first_ts": self.first_ts, "last_ts": self.last_ts}

    @classmethod
    def from_doc(cls, d: dict[str, Any]) -> IfaceStats:
        return cls(d["id"], d.get("host"), d.get("name"), d.get("worker"),
                   packets=d.get("packets", 0), dropcount=d.get("dropcount", 0),
                   unplaced=d.get("unplaced", 0), unseen=d.get("unseen_frames", 0),
                   first_ts=d.get("first_ts"), last_ts=d.get("last_ts"))


def interface_statistics(w: PcapngWriter, st: IfaceStats, ts_ns: int, comment: str) -> None:
    """Buffer the ISB of one interface: the one rule for its counters, for a section the
    archive closes and for one a later run seals.

    A capture interface: isb_osdrop is what the kernel's capture ring/socket queue dropped (the
    OS dropped them, spec meaning); isb_ifdrop gets the same number: it is the one Wireshark
    shows as "dropped packets" and dumpcap puts libpcap's ps_drop (the ring's tp_drops) there;
    NIC drops are not known here (netstat events have them). When the capture's own
    PACKET_STATISTICS totals are known (``kernel``) they are the counters -- "since the
    beginning of the capture" as the ISB means -- and the file's own share stays in the comment.
    """
    if st.worker is None:
        w.statistics(st.if_id, ts_ns, ifrecv=st.packets, usrdeliv=st.packets,
                     starttime=st.first_ts, endtime=st.last_ts, comment=comment)
        return
    captured = st.dropcount + st.unplaced
    ifrecv, osdrop = st.packets + captured, captured
    k = st.kernel
    if (k and type(k.get("packets")) is int and type(k.get("drops")) is int
            and 0 <= k["packets"] <= _U64 and 0 <= k["drops"] <= _U64):
        ifrecv, osdrop = k["packets"], k["drops"]
        comment += f"; ring totals since capture start: {k['packets']} packets, {k['drops']} drops"
    w.statistics(st.if_id, ts_ns, ifrecv=ifrecv, ifdrop=osdrop, osdrop=osdrop,
                 usrdeliv=st.packets, starttime=st.first_ts, endtime=st.last_ts, comment=comment)


def _new_counts() -> dict[str, Any]:
    return {"frames": 0, "drops": 0, "dropcount": 0, "gaps": 0, "gaps_late": 0,
            "gaps_unplaced": 0, "lost_unplaced": 0, "unseen_frames": 0, "duplicate_frames": 0,
            "alert_drops": 0, "bad_events": 0, "bad_batches": 0, "out_of_order": 0,
            "batches": Counter(), "missed": {}}


class PcapngArchive:
    """Sans-IO core of the archive: ``add(batch)`` returns the PcapNG bytes to append.

    :meth:`open_section` starts a file (SHB), :meth:`close_section` ends it (ISBs) and returns
    its accounting; rings and waiting gaps carry over from one file to the next.

    Bad events (a gap without a count, a frame batch whose columns lack ``ts``) are counted as
    ``bad_events`` with the reason logged; the rest of the batch is kept.
    """

    def __init__(self, *, userappl: str | None = None) -> None:
        self.userappl = userappl or f"netevents {__version__} archive"
        self.rings: dict[tuple[str, str, str, int], Ring] = {}
        self.written: dict[str, int] = {}
        """``host|run|kind`` -> last seq written: the checkpoint that makes a restart exact."""
        self.pending_count = 0
        self.writer: PcapngWriter | None = None
        self.ifaces: dict[tuple[str, str, int | None], IfaceStats] = {}
        self.counts: dict[str, Any] = _new_counts()
        self._last_ts = 0           # the newest packet timestamp in the current file
        self._epb_at: int | None = None
        self._epb_ts: list[int] = []
        self._epb_key: Any = None
        self._pre: list[bytes] = []
        self._runs: dict[Any, tuple[list[int], list[bytes]]] = {}
        self.staged_bytes = 0
        """Bytes staged for the next :meth:`flush_staged`."""

    # -- sections -----------------------------------------------------------------------------
    def open_section(self, comment: str | None = None) -> bytes:
        self.writer = PcapngWriter(userappl=self.userappl, os=f"{os.uname().sysname} {os.uname().release}",
                                   comment=comment)
        self.ifaces = {}
        self.counts = _new_counts()
        self._last_ts = 0
        return self.writer.take()

    def close_section(self, ts_ns: int, *, final: bool = False) -> bytes:
        """The ISBs of every interface of the section. With ``final`` (the archiver stops), gaps
        still waiting for a frame are given up: counted and added to their interface's drops."""
        w = self._w()
        if final:
            for ring in self.rings.values():
                left = [g for gaps in ring.pending.values() for g in gaps] + ring.carry
                if not left:
                    continue
                lost = sum(g["lost"] for g in left)
                st = self._iface(ring.host, ring.iface, ring.worker, None)
                st.unplaced += lost
                self.counts["gaps_unplaced"] += len(left)
                self.counts["lost_unplaced"] += lost
                ring.pending.clear()
                ring.carry.clear()
            self.pending_count = 0
        for st in self.ifaces.values():
            missed = self.counts["missed"].get(st.host, {})
            if st.worker is None:
                note = (f"{st.packets} dropped packets written; "
                        f"{missed.get('drop', 0)} drop batches of {st.host} missed")
            else:
                note = (f"{st.packets} packets written; capture lost {st.dropcount + st.unplaced} "
                        f"({st.dropcount} placed as epb_dropcount, {st.unplaced} unplaced); "
                        f"{st.unseen} frames not received by the archive; {missed.get('frame', 0)} "
                        f"frame and {missed.get('gap', 0)} gap batches of {st.host} missed")
            interface_statistics(w, st, ts_ns, note)
        return w.take()

    def _w(self) -> PcapngWriter:
        if self.writer is None:
            raise RuntimeError("PcapngArchive: open_section() first")
        return self.writer

    def _iface(self, host: str, iface: str, worker: int | None, hwtstamp: Any,
               snaplen: int = DEFAULT_SNAPLEN) -> IfaceStats:
        key = (host, iface, worker)
        st = self.ifaces.get(key)
        if st is None:
            w = self._w()
            if worker is None:
                if_id = w.add_interface(
                    f"drops@{host}", description=host, hardware="kernel drop events (packet mode)",
                    snaplen=0, comment=f"packets the kernel of {host} dropped, one per drop event")
            else:
                stamp = _stamp_text(hwtstamp)
                if_id = w.add_interface(iface, description=host, snaplen=snaplen,
                                        hardware=f"netevents capture worker {worker}; {stamp}")
            st = self.ifaces[key] = IfaceStats(if_id, host, iface, worker)
        return st

    # -- batches ------------------------------------------------------------------------------
    def add(self, batch: Batch) -> bytes:
        """Encode one batch; returns the bytes to append to the current file."""
        return self.add_group([batch])

    def add_group(self, batches: list[Batch]) -> bytes:
        """Encode batches written together (in their order: a ring's batches in its order);
        returns the bytes to append, the group's packets merged into time order
        (:meth:`stage` each, then :meth:`flush_staged`)."""
        for batch in batches:
            self.stage(batch)
        return self.flush_staged()

    def stage(self, batch: Batch) -> None:
        """Encode one batch into the staged group (see :meth:`flush_staged`)."""
        data = self._add_one(batch)
        at = self._epb_at
        if at is None or not self._epb_ts:
            self._pre.append(data)
        else:
            self._pre.append(data[:at])
            ts_run, blocks = self._runs.setdefault(self._epb_key, ([], []))
            ts_run.extend(self._epb_ts)
            blocks.append(data[at:])
        self.staged_bytes += len(data)

    def flush_staged(self) -> bytes:
        """The staged group's bytes: interface blocks first, then every packet by timestamp.

        Each ring's (or host's drop) packets stay in their own order and rings are merged (a
        stable merge; rings that do not overlap in time are only concatenated). A packet older
        than one already in the file (it came behind the reorder window the caller keeps) is
        counted in ``out_of_order``. Flush before the section ends: the packets name its IDBs.
        """
        pre, runs = self._pre, self._runs
        self._pre, self._runs, self.staged_bytes = [], {}, 0
        if not runs:
            return b"".join(pre)
        order = sorted(runs.values(), key=lambda r: r[0][0])
        if all(a[0][-1] <= b[0][0] for a, b in zip(order, order[1:], strict=False)):
            ts_all = [t for r in order for t in r[0]]
            packets: list = [blk for r in order for blk in r[1]]
        else:
            # Rings overlap in time: merge packet by packet (each run stays in its order).
            split = [(r[0], _blocks(b"".join(r[1]))) for r in order]
            merged = list(heapq.merge(*(zip(t, itertools.repeat(i), range(len(t)))
                                        for i, (t, _b) in enumerate(split))))
            ts_all = [m[0] for m in merged]
            packets = [split[i][1][k] for _t, i, k in merged]
        last, late = self._last_ts, 0
        for t in ts_all:
            if t < last:
                late += 1
            else:
                last = t
        self._last_ts = last
        self.counts["out_of_order"] += late
        return b"".join(pre + packets)

    def _add_one(self, batch: Batch) -> bytes:
        """One batch's bytes; ``_epb_at`` says where its packet blocks start (None: it has
        none), ``_epb_ts`` their timestamps, ``_epb_key`` the run they belong to."""
        self._epb_at = None
        self._epb_ts = []
        self._epb_key = None
        self.counts["batches"][batch.kind] += 1
        if batch.missed:
            per_host = self.counts["missed"].setdefault(batch.host, {})
            per_host[batch.kind] = per_host.get(batch.kind, 0) + batch.missed
        w = self._w()
        n_if, n_keys = len(w.interfaces), len(self.ifaces)
        try:
            if batch.kind == "frame":
                self._frames(batch)
            elif batch.kind == "gap":
                self._gaps(batch)
            elif batch.kind == "drop":
                self._drops(batch)
        except (struct.error, ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            # A value the checks below did not foresee: this batch is left out (counted, logged)
            # and the file stays consistent -- its partial blocks and the IDBs it added go.
            w.discard()
            del w.interfaces[n_if:]
            for key in list(self.ifaces)[n_keys:]:
                del self.ifaces[key]
            self.counts["bad_batches"] += 1
            self._bad(batch, f"batch not archived: {type(exc).__name__}: {exc}")
            self._epb_at = None
            return b""
        self.written[f"{batch.host}|{batch.run}|{batch.kind}"] = batch.seq
        return w.take()

    def _ring(self, host: str, run: str, iface: str, worker: int) -> Ring:
        key = (host, run, iface, worker)
        ring = self.rings.get(key)
        if ring is None:
            ring = self.rings[key] = Ring(host, run, iface, worker, packetid_base(host, run, iface, worker))
        return ring

    def _bad(self, batch: Batch, why: str) -> None:
        self.counts["bad_events"] += 1
        n = self.counts["bad_events"]
        if n & (n - 1) == 0:
            log.warning("%s batch %s/%s seq %s: %s (%d bad so far)", batch.kind, batch.host,
                        batch.run, batch.seq, why, n)

    def _gaps(self, batch: Batch) -> None:
        for g in batch.events:
            lost = g.get("lost")
            iface = g.get("iface")
            if type(lost) is not int or not 0 <= lost <= _U64 or not isinstance(iface, str) or not iface:
                self._bad(batch, f"gap without a valid lost count or iface: {g!r}"[:200])
                continue
            if lost == 0:
                continue
            self.counts["gaps"] += 1
            worker = g.get("worker") or 0
            if type(worker) is not int:
                self._bad(batch, f"gap with a worker that is not an integer: {worker!r}"[:200])
                continue
            ring = self._ring(batch.host, batch.run, iface, worker)
            gap = {"lost": lost, "after": g.get("after_frame"), "before": g.get("before_frame"),
                   "cause": g.get("cause"), "source": g.get("source")}
            before = gap["before"]
            if type(before) is not int or (ring.next_frame is not None and before < ring.next_frame):
                gap["late"] = type(before) is int
                ring.carry.append(gap)
                if gap["late"]:
                    self.counts["gaps_late"] += 1
                continue
            if self.pending_count >= MAX_PENDING_GAPS:
                # Bounded wait: give this one up rather than grow without limit.
                self.counts["gaps_unplaced"] += 1
                self.counts["lost_unplaced"] += lost
                self._iface(batch.host, iface, ring.worker, None).unplaced += lost
                continue
            ring.pending.setdefault(before, []).append(gap)
            self.pending_count += 1

    @staticmethod
    def _gap_comment(gaps: list[dict]) -> str:
        parts = []
        for g in gaps:
            where = (f"between frame {g['after']} and {g['before']}" if g.get("after") is not None
                     else f"before frame {g['before']}" if g.get("before") is not None else "")
            late = " (reported after that frame was archived; placed here)" if g.get("late") else ""
            parts.append(f"capture gap: {g['lost']} frames lost {where} "
                         f"[{g.get('cause')}, {g.get('source')}]{late}".replace("  ", " "))
        return "; ".join(parts)

    def _frames(self, batch: Batch) -> None:
        cols = batch.events
        f = batch.fields
        iface = f.get("iface")
        first = f.get("first_frame")
        ts = cols.get("ts")
        n = len(ts) if isinstance(ts, list) else 0
        if not isinstance(iface, str) or not iface or type(first) is not int or not n:
            if n or not isinstance(ts, list):
                self._bad(batch, "frame batch without iface, first_frame or ts column")
            return
        worker = f.get("worker") or 0
        lens = cols.get("len") or [None] * n
        try:
            longest = max(lens)  # C-level; a None among them: the slow way
        except TypeError:
            longest = max((x for x in lens if x is not None), default=0)
        if (first < 0 or type(worker) is not int or min(ts) < 0 or max(ts) > _U64
                or longest > 0xFFFFFFFF):
            self._bad(batch, "frame batch with a timestamp, length, worker or first_frame out of range")
            return
        ring = self._ring(batch.host, batch.run, iface, worker)
        heads = cols.get("head") or [None] * n
        st = self._iface(batch.host, iface, worker, f.get("hwtstamp"),
                         f.get("snaplen") or DEFAULT_SNAPLEN)
        dirs = cols.get("dir") or [None] * n
        queues = cols.get("queue") or [None] * n
        hashes = cols.get("rxhash") or [None] * n
        specials: dict[int, tuple[int | None, str | None]] = {}
        notes: list[str] = []
        skip = unseen = 0
        if ring.next_frame is not None:
            if first < ring.next_frame:          # overlap: redelivered frames already written
                skip = min(n, ring.next_frame - first)
            elif first > ring.next_frame:        # frames summarised but never received here
                unseen = first - ring.next_frame
                notes.append(f"frames {ring.next_frame}..{first - 1} of this ring were not "
                             f"received by the archive (missed batches), not lost by the capture")
        if skip == n:
            self.counts["duplicate_frames"] += skip
            return
        start = first + skip
        end = first + n
        if not st.packets or ring.next_frame is None:
            notes.insert(0, f"{batch.host} {iface} worker {worker} run {batch.run}: frame {start}, "
                            f"epb_packetid = {ring.base:#018x} + frame")
        # Gaps: carried (late or unnumbered) ones go on the first frame written; waiting ones
        # on their before_frame, or on the first frame if their frame was never received.
        # Nothing is changed before the frames are encoded: a batch that fails leaves no trace.
        first_gaps = list(ring.carry)
        taken = [b for b in ring.pending if b < end] if ring.pending else []
        placed: dict[int, list[dict]] = {}
        for before in taken:
            gaps = ring.pending[before]
            if before <= start:
                first_gaps.extend(gaps)
            else:
                placed.setdefault(before - first, []).extend(gaps)
        if first_gaps:
            placed.setdefault(skip, [])[:0] = first_gaps
        dropcount = 0
        for i, gaps in placed.items():
            lost = sum(g["lost"] for g in gaps)
            dropcount += lost
            specials[i] = (lost, self._gap_comment(gaps))
        if notes:
            drop, comment = specials.get(skip, (None, None))
            specials[skip] = (drop, "; ".join(notes + ([comment] if comment else [])))
        if skip:
            specials = {i - skip: v for i, v in specials.items()}
            ts, heads, lens, dirs = ts[skip:], heads[skip:], lens[skip:], dirs[skip:]
            queues, hashes = queues[skip:], hashes[skip:]
        w = self._w()
        self._epb_at, self._epb_ts, self._epb_key = len(w), ts, (batch.host, batch.run,
                                                                     iface, worker)
        w.frames(st.if_id, ts, heads, lens, dirs, queues, hashes, ring.base, start, specials)
        # Encoded: now the accounting.
        ring.carry.clear()
        for before in taken:
            self.pending_count -= len(ring.pending.pop(before))
        written = n - skip
        self.counts["duplicate_frames"] += skip
        self.counts["unseen_frames"] += unseen
        st.unseen += unseen
        st.dropcount += dropcount
        self.counts["dropcount"] += dropcount
        if isinstance(f.get("ring"), dict):
            st.kernel = f["ring"]
        st.packets += written
        self.counts["frames"] += written
        if st.first_ts is None:
            st.first_ts = ts[0]
        st.last_ts = ts[-1]
        ring.next_frame = end

    def _drops(self, batch: Batch) -> None:
        w = self._w()
        for e in batch.events:
            payload = e.get("payload")
            if not payload:
                self.counts["alert_drops"] += 1   # alert mode: no packet to archive
                continue
            st = self._iface(batch.host, f"drops@{batch.host}", None, None)
            data = _as_ethernet(bytes(payload), e.get("proto"))
            synthetic = len(data) != len(payload)
            ts = e.get("last_ts") or e.get("first_ts") or batch.t1
            orig = e.get("orig_len") or len(payload)
            if not 0 <= orig <= 0xFFFF0000 or not 0 <= ts <= _U64:
                self._bad(batch, f"drop event with orig_len {orig} or timestamp {ts} out of range")
                continue
            loc = e.get("location") or "?"
            comment = (f"dropped by the kernel of {batch.host}: reason {e.get('reason', 'NOT_SPECIFIED')} "
                       f"at {loc}" + (f" on {e['iface']}" if e.get("iface") else "")
                       + f" [{e.get('source')}, {e.get('origin', 'sw')}"
                       + (f", trap {e['hw_trap']}" if e.get("hw_trap") else "") + "]"
                       + (" (Ethernet header synthesised from proto)" if synthetic else ""))
            if self._epb_at is None:
                self._epb_at, self._epb_key = len(w), batch.host
            self._epb_ts.append(ts)
            w.packet(st.if_id, ts, data, orig + (len(data) - len(payload)), comment=comment)
            st.packets += 1
            self.counts["drops"] += 1
            if st.first_ts is None:
                st.first_ts = ts
            st.last_ts = ts if st.last_ts is None else max(st.last_ts, ts)

    # -- checkpoint ---------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        """State a restarted archiver resumes from (see :meth:`restore`)."""
        rings = []
        for r in self.rings.values():
            rings.append({"host": r.host, "run": r.run, "iface": r.iface, "worker": r.worker,
                          "next_frame": r.next_frame,
                          "pending": [g for gaps in r.pending.values() for g in gaps],
                          "carry": r.carry})
        return {"written": dict(self.written), "rings": rings}

    def restore(self, state: dict[str, Any]) -> None:
        self.written.update(state.get("written") or {})
        for r in state.get("rings") or []:
            ring = self._ring(r["host"], r["run"], r["iface"], r["worker"])
            ring.next_frame = r.get("next_frame")
            for g in r.get("pending") or []:
                ring.pending.setdefault(g["before"], []).append(g)
                self.pending_count += 1
            ring.carry.extend(r.get("carry") or [])

    def advance(self, packetids: list[int]) -> int:
        """Mark frames found in a file beyond its checkpoint as written: each ring moves past
        the highest of its frames among ``packetids``, and the gaps those frames carried are
        dropped from the waiting lists. Returns how many ids were matched to a ring."""
        matched = 0
        if not packetids:
            return 0
        for ring in self.rings.values():
            start = ring.next_frame or 0
            top = -1
            for pid in packetids:
                off = (pid - ring.base) & _U64
                if start <= off < start + (1 << 32):
                    top = max(top, off)
                    matched += 1
            if top < 0:
                continue
            ring.next_frame = top + 1
            ring.carry.clear()
            for before in [b for b in ring.pending if b <= top]:
                self.pending_count -= len(ring.pending.pop(before))
        if matched:
            log.info("resuming: %d frames written after the last checkpoint are not written again",
                     matched)
        return matched

    def summary(self) -> dict[str, Any]:
        c = self.counts
        return {
            "frames": c["frames"], "drop_packets": c["drops"], "packets": c["frames"] + c["drops"],
            "dropcount": c["dropcount"], "gaps": c["gaps"], "gaps_late": c["gaps_late"],
            "gaps_unplaced": c["gaps_unplaced"], "lost_unplaced": c["lost_unplaced"],
            "unseen_frames": c["unseen_frames"], "duplicate_frames": c["duplicate_frames"],
            "alert_drops_not_archived": c["alert_drops"], "bad_events": c["bad_events"],
            "bad_batches": c["bad_batches"], "out_of_order": c["out_of_order"],
            "batches": dict(c["batches"]), "missed_batches": c["missed"],
            "interfaces": [s.doc() for s in self.ifaces.values()],
        }


def _blocks(data: bytes) -> list[memoryview]:
    """The blocks of a run of complete PcapNG blocks (each says its total length)."""
    mv = memoryview(data)
    out = []
    pos, end = 0, len(data)
    while pos < end:
        total = int.from_bytes(mv[pos + 4:pos + 8], "little")
        out.append(mv[pos:pos + total])
        pos += total
    return out


def _stamp_text(hwtstamp: Any) -> str:
    """if_hardware wording for the capture's ``hwtstamp`` batch field ({filter, phc_index}):
    a filter of None or "none" means the NIC stamps nothing and frames carry software stamps."""
    if not isinstance(hwtstamp, dict) or hwtstamp.get("filter") in (None, "none", 0, ""):
        return "software timestamps"
    phc = hwtstamp.get("phc_index")
    return f"hardware timestamps (rx filter {hwtstamp['filter']}" + (
        f", PHC /dev/ptp{phc})" if phc is not None else ")")


def _as_ethernet(payload: bytes, proto: int | None) -> bytes:
    """Packet-mode payloads start at the MAC header when the kernel had one, else at the network
    header. One without an Ethernet header (no ``proto`` or VLAN TPID at offset 12) gets a
    zero-address Ethernet header carrying ``proto`` so the pseudo-interface can stay
    LINKTYPE_ETHERNET and Wireshark decodes the packet."""
    if not proto or not 0x0600 <= proto <= 0xFFFF:
        return payload
    if len(payload) >= 14 and int.from_bytes(payload[12:14], "big") in (proto, 0x8100, 0x88A8):
        return payload
    return b"\0" * 12 + proto.to_bytes(2, "big") + payload

"""`netevents extract`: frames and capture gaps of a window into one PcapNG file (sans-IO core).

:class:`Extractor` is the archive's core (:class:`~netevents.consumers.archive.PcapngArchive`)
with a flow filter in front: gaps are placed as ``epb_dropcount`` on the first frame after
them exactly as the archive does, and the sidecar ``<file>.json`` is the archive's, so
``netevents verify`` checks an extract like any archive file.

Filtering frames out of a ring must not look like frames the reader never received: before
each run of kept frames the ring's position is moved past the frames the filter left out (the
core then counts only the frames of batches really missed as ``unseen``). A gap whose frame
after it was filtered out lands on the next kept frame of its ring: the ring's total stays
exact, the position is the nearest the extract holds. Gaps under ``--addr``/``--port`` are all
kept (a gap has no flow; the frames it lost may have been the flow's).

Feed every gap batch of the window before the frames (they travel in another stream): the
gaps then wait in the core for their frame and land exactly.
"""

from __future__ import annotations

from typing import Any

from .. import __version__
from ..codec import Batch
from ..events import ring_key
from .archive import PcapngArchive
from .filters import EventFilter, sliced

KINDS = ("gap", "frame")


class Extractor:
    """Batches in, PcapNG bytes out; ``finish`` closes the section, ``sidecar`` describes it."""

    def __init__(self, event_filter: EventFilter | None = None, *, comment: str | None = None) -> None:
        self.filter = event_filter or EventFilter()
        self.core = PcapngArchive(userappl=f"netevents {__version__} extract")
        self.filtered_frames = 0
        self.filtered_gaps = 0
        self._ends: dict[tuple[str, str, str, int], int] = {}
        self.head = self.core.open_section(comment=comment)

    def add(self, batch: Batch) -> bytes:
        """The bytes to append for one gap or frame batch (other kinds: nothing)."""
        if batch.kind == "gap":
            kept = self.filter.batch(batch)
            self.filtered_gaps += len(batch) - (len(kept) if kept is not None else 0)
            return self.core.add(kept) if kept is not None else b""
        if batch.kind != "frame":
            return b""
        n = len(batch)
        rows = self.filter.keep(batch) if self.filter else list(range(n))
        self.filtered_frames += n - len(rows)
        f = batch.fields
        first = f.get("first_frame")
        if type(first) is not int or len(rows) == n:
            self._note_end(batch, first, n)
            return self.core.add(batch)
        key = ring_key(batch.host, batch.run, f.get("iface"), f.get("worker"))
        prev_end = self._ends.get(key)
        unseen = max(0, first - prev_end) if prev_end is not None else 0
        out = bytearray()
        for run in _runs(rows):
            at = first + run[0]
            ring = self.core.rings.get(key)
            if ring is not None and ring.next_frame is not None and at - unseen > ring.next_frame:
                ring.next_frame = at - unseen    # the frames between were filtered, not missed
            part = sliced(batch, run)
            part.fields["first_frame"] = at
            out += self.core.add(part)
            unseen = 0
        self._note_end(batch, first, n)
        return bytes(out)

    def _note_end(self, batch: Batch, first: Any, n: int) -> None:
        if type(first) is int:
            f = batch.fields
            key = ring_key(batch.host, batch.run, f.get("iface"), f.get("worker"))
            self._ends[key] = max(self._ends.get(key, 0), first + n)

    def finish(self, ts_ns: int) -> bytes:
        """The closing blocks (ISBs); gaps that found no frame are counted as unplaced."""
        return self.core.close_section(ts_ns, final=True)

    def sidecar(self, name: str, size: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``<file>.json`` document ``netevents verify`` compares the file with."""
        return {"file": name, "complete": True, "bytes": size, "writer": self.core.userappl,
                **self.core.summary(),
                "extract": {"filtered_frames": self.filtered_frames,
                            "filtered_gaps": self.filtered_gaps,
                            "filter": self.filter.describe(), **(extra or {})},
                "checkpoint": self.core.checkpoint()}


def _runs(rows: list[int]) -> list[list[int]]:
    """Consecutive indexes grouped: [1, 2, 3, 7, 8] -> [[1, 2, 3], [7, 8]]."""
    out: list[list[int]] = []
    for i in rows:
        if out and out[-1][-1] == i - 1:
            out[-1].append(i)
        else:
            out.append([i])
    return out

"""Sans-IO reader of the binary per-CPU ring pages (``per_cpu/cpuN/trace_pipe_raw``).

The text ``trace_pipe`` costs the kernel a ``%pS`` symbol lookup and a printf per record; under
a storm that formatting, not our parsing, is the limit. The raw pages are a copy of the ring:
this module walks them and aggregates kfree_skb records itself, resolving each distinct
location once through /proc/kallsyms.

Layout (kernel/trace/ring_buffer.c; described by ``events/header_page`` / ``header_event``):

    page:   u64 timestamp | local_t commit (data bytes; flags in bits 30, 31) | data...
    event:  u32 { type_len:5, time_delta:27 } | array[]
            type_len 1..28  data of type_len*4 bytes follows the header
            type_len 0      array[0] = data bytes + 4, data at array[1]
            29 padding      time_delta 0: rest of page unused; else array[0]+4 bytes to skip
            30 time extend  delta += array[0] << 27 (8 bytes)
            31 time stamp   absolute: (array[0] << 27) | time_delta (8 bytes)

The record's own layout (offsets of ``location``, ``protocol``, ``reason``) comes from the
event's ``format`` file, never from constants here.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

from .aggregate import DropAggregator

PAGE_HEADER = struct.Struct("<Qq")
PAGE_DATA = PAGE_HEADER.size
RB_COMMIT_MASK = (1 << 30) - 1     # bits 30/31: RB_MISSED_STORED, RB_MISSED_EVENTS
TYPE_PADDING, TYPE_TIME_EXTEND, TYPE_TIME_STAMP = 29, 30, 31
TS_SHIFT = 27
TS_MSB_MASK = ~((1 << 59) - 1)     # absolute stamps carry 59 bits; the rest from the page
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")


@dataclass(slots=True, frozen=True)
class KfreeSkbLayout:
    """Where the fields sit in one kfree_skb record (from the event's ``format`` file)."""

    event_id: int
    location: int
    protocol: int
    reason: int | None
    reason_size: int = 4

    @classmethod
    def from_format(cls, text: str) -> KfreeSkbLayout:
        """Raises ValueError if the format lacks the event id, location or protocol."""
        m = re.search(r"^ID:\s*(\d+)", text, re.M)
        fields = {name: (int(off), int(size)) for name, off, size in re.findall(
            r"field:[^;]*?(\w+);\s*offset:(\d+);\s*size:(\d+);", text)}
        if not m or "location" not in fields or "protocol" not in fields:
            raise ValueError("kfree_skb format without ID, location or protocol")
        reason = fields.get("reason")
        return cls(int(m.group(1)), fields["location"][0], fields["protocol"][0],
                   reason[0] if reason else None, reason[1] if reason else 4)


class RawPageParser:
    """Aggregates the kfree_skb records of raw ring pages.

    ``resolve(pc) -> location`` names a call site (called once per distinct PC);
    ``reasons`` maps reason numbers to names. Records of other events are skipped and counted
    in ``other``; a page whose structure is broken stops at the break and counts ``bad_pages``.
    """

    def __init__(self, aggregator: DropAggregator, layout: KfreeSkbLayout,
                 reasons: dict[int, str], resolve: Callable[[int], str], *,
                 clock_offset_ns: int = 0, exclude: frozenset[str] = frozenset()) -> None:
        self.agg = aggregator
        self.layout = layout
        self.reasons = reasons
        self.resolve = resolve
        self.clock_offset_ns = clock_offset_ns
        self.exclude = exclude
        self._keys: dict[bytes, tuple | None] = {}
        self.records = 0
        self.excluded = 0
        self.other = 0
        self.bad_pages = 0
        self.pages = 0
        ends = [(layout.location, 8), (layout.protocol, 2)]
        if layout.reason is not None:
            ends.append((layout.reason, layout.reason_size))
        self._span = (min(o for o, _ in ends), max(o + n for o, n in ends))
        self._want_id = _U16.pack(layout.event_id)

    # Hot loop: one iteration per record of a storm; fields are sliced, not unpacked, and
    # grouped by the bytes that make the signature (location, protocol, reason).
    def feed_page(self, page: bytes) -> int:
        """Parse one page as read from trace_pipe_raw; returns records aggregated."""
        if len(page) < PAGE_DATA:
            self.bad_pages += 1
            return 0
        self.pages += 1
        ts, commit = PAGE_HEADER.unpack_from(page)
        end = PAGE_DATA + (commit & RB_COMMIT_MASK)
        if end > len(page):
            self.bad_pages += 1
            end = len(page)
        lo, hi = self._span
        want_id = self._want_id
        u32 = _U32.unpack_from
        groups: dict[bytes, list] = {}
        get = groups.get
        off = PAGE_DATA
        while off + 4 <= end:
            hdr = u32(page, off)[0]
            tl = hdr & 0x1F
            if 0 < tl <= 28:
                ts += hdr >> 5
                d = off + 4
                off = d + tl * 4
            elif tl == 0:
                if off + 8 > end:
                    self.bad_pages += 1
                    break
                ts += hdr >> 5
                n = u32(page, off + 4)[0]
                d = off + 8
                off = off + 4 + n
                if n < 4:
                    self.bad_pages += 1
                    break
            elif tl != TYPE_PADDING and off + 8 > end:  # a time extend or stamp cut off
                self.bad_pages += 1
                break
            elif tl == TYPE_TIME_EXTEND:
                ts += (u32(page, off + 4)[0] << TS_SHIFT) + (hdr >> 5)
                off += 8
                continue
            elif tl == TYPE_TIME_STAMP:
                ts = ((u32(page, off + 4)[0] << TS_SHIFT) | (hdr >> 5)) | (ts & TS_MSB_MASK)
                off += 8
                continue
            else:  # padding
                if hdr >> 5 == 0:
                    break
                if off + 8 > end:
                    self.bad_pages += 1
                    break
                ts += hdr >> 5
                off += 4 + u32(page, off + 4)[0]
                continue
            if off > end:          # a record that runs past the data: the page is damaged
                self.bad_pages += 1
                break
            if page[d:d + 2] != want_id:
                self.other += 1
                continue
            # One slice from location to reason: it may include other bytes (rx_sk), which
            # only splits groups; the key is read from the fields alone.
            sig = page[d + lo:d + hi]
            g = get(sig)
            if g is None:
                groups[sig] = [1, ts, ts]
            else:
                g[0] += 1
                g[2] = ts
        n_added = 0
        offset = self.clock_offset_ns
        for sig, (count, first, last) in groups.items():
            key = self._keys.get(sig)
            if key is None:
                key = self._keys[sig] = self._key(sig)
                if len(self._keys) > 65536:
                    self._keys.clear()
            if key[1] in self.exclude:
                self.excluded += count
                continue
            self.agg.add_key(key, first + offset, count, last + offset)
            n_added += count
        self.records += n_added
        return n_added

    def _key(self, sig: bytes) -> tuple:
        lay, lo = self.layout, self._span[0]
        pc = int.from_bytes(sig[lay.location - lo:lay.location - lo + 8], "little")
        proto = int.from_bytes(sig[lay.protocol - lo:lay.protocol - lo + 2], "little")
        if lay.reason is not None:
            r = lay.reason - lo
            num = int.from_bytes(sig[r:r + lay.reason_size], "little")
            reason = self.reasons.get(num, f"0x{num:x}")
        else:
            reason = "NOT_SPECIFIED"
        # KEY_FIELDS: location, reason, iface, ifindex, proto, netns, origin, hw_trap, hw_group, pc
        return (self.resolve(pc), reason, None, None, proto, None, "sw", None, None, pc)

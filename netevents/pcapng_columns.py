"""Enhanced Packet Blocks of a column-wise frame batch: the PcapNG writer's hot path.

:meth:`netevents.pcapng.PcapngWriter.frames` hands its columns here. Two ways, same bytes:

- **Runs** (:func:`_run`): frames whose heads all have one length (most of a capture cut to its
  snap length) give blocks of one size and layout. One record template with every constant in
  place is repeated ``n`` times, then each varying field is written for all records at once:
  an ``array('I')`` built from the column (by a C-level ``map`` where a value is derived)
  assigned into a strided slice of the run's blocks held as an ``array('I')`` of 32-bit words
  (a plain copy loop; a strided ``memoryview`` only for the byte-wide and unaligned fields);
  the heads are laid out by one join. No Python code runs per frame, which is what takes the
  writer past 2 M frames/s (bench/pcapng.py). Little-endian hosts only (:data:`RUNS`).
- **Block by block** (:func:`_blocks`): short runs, mixed option shapes, ``None`` heads or
  lengths, values that need masking, big-endian hosts. Per frame one precompiled struct for the
  28-byte head and one for the whole option tail.

Layouts: draft-ietf-opsawg-pcapng (EPB; options epb_flags 2, epb_hash 3, epb_packetid 5,
epb_queue 6, opt_endofopt 0), the same option order as ``PcapngWriter.packet``.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Callable, Sequence
from itertools import groupby
from typing import Any

RUNS = sys.byteorder == "little" and array("I").itemsize == 4
MIN_RUN = 16
"""Shorter runs of one head length go block by block (the set-up would cost more)."""

EPB_HEAD = struct.Struct("<IIIIIII")  # type, len, if id, ts hi, ts lo, caplen, orig len
PAD = (b"", b"\0\0\0", b"\0\0", b"\0")  # indexed by length & 3
# The option tails, each shape one struct: epb_flags, [epb_hash], epb_packetid, [epb_queue],
# opt_endofopt and the trailing block length.
TAIL_QH = struct.Struct("<HHI HHBI3x HHQ HHI HH I")
TAIL_Q = struct.Struct("<HHI HHQ HHI HH I")
TAIL_H = struct.Struct("<HHI HHBI3x HHQ HH I")
TAIL = struct.Struct("<HHI HHQ HH I")
# Byte offsets in each tail of (flags, hash, packet id, queue); None where the shape has none.
_AT = {(True, True): (TAIL_QH, 4, 13, 24, 36), (True, False): (TAIL_Q, 4, None, 12, 24),
       (False, True): (TAIL_H, 4, 13, 24, None), (False, False): (TAIL, 4, None, 12, None)}
_M32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1


def encode_frames(buf: bytearray, chunk: Callable[[Any], None], if_id: int, ts: Sequence[int],
                  heads: Sequence[bytes | None], lens: Sequence[int], dirs: Sequence[int],
                  queues: Sequence[int | None], hashes: Sequence[int | None], pid0: int, lo: int,
                  hi: int, flags_of: tuple[int, ...], algo: int) -> None:
    """Append the EPBs of rows ``lo:hi``: block by block to ``buf``, runs as whole buffers
    through ``chunk`` (the writer keeps them in order after what ``buf`` held); row i's packet
    id is ``pid0 + i`` (mod 2**64), its flags ``flags_of[dirs[i]]`` (0 outside the table)."""
    if RUNS and hi - lo >= MIN_RUN:
        try:
            caplens = list(map(len, _cut(heads, lo, hi)))
        except TypeError:  # a None head: block by block
            caplens = None
        if caplens is not None:
            start = lo
            runs = ([(caplens[0], hi - lo)] if caplens.count(caplens[0]) == len(caplens)
                    else [(c, len(list(g))) for c, g in groupby(caplens)])
            for caplen, k in runs:
                if k < MIN_RUN or not _run(chunk, if_id, ts, heads, lens, dirs, queues, hashes,
                                           pid0, start, start + k, caplen, flags_of, algo):
                    _blocks(buf, if_id, ts, heads, lens, dirs, queues, hashes, pid0, start,
                            start + k, flags_of, algo)
                start += k
            return
    _blocks(buf, if_id, ts, heads, lens, dirs, queues, hashes, pid0, lo, hi, flags_of, algo)


def _run(chunk: Callable[[Any], None], if_id: int, ts: Sequence[int],
         heads: Sequence[bytes | None],
         lens: Sequence[int], dirs: Sequence[int], queues: Sequence[int | None],
         hashes: Sequence[int | None], pid0: int, lo: int, hi: int, caplen: int,
         flags_of: tuple[int, ...], algo: int) -> bool:
    """Rows ``lo:hi``, every head ``caplen`` long, column by column; False (nothing appended)
    when a value needs the block-by-block path.

    The heads are joined with the constant bytes between two heads (a tail and the next
    block's head, varying fields zero) as the separator: one C-level join lays out every
    block with its data in place. The varying fields are then written per column into strided
    slices of the blocks as 32-bit words: the timestamps through ``array('Q')`` read as word
    pairs, the flags (``bytes.translate`` of the directions) and the hash (at an odd offset)
    through memoryviews, the rest ``array('I')``."""
    q, h = _cut(queues, lo, hi), _cut(hashes, lo, hi)
    try:
        qs: array | None = array("I", q)
    except TypeError:  # a None: no queue option if all are None, else mixed shapes
        if any(x is not None for x in q):
            return False
        qs = None
    except OverflowError:
        return False
    has_q = qs is not None
    has_h = all(h)
    if not has_h and any(h):
        return False  # mixed option shapes
    tail, at_f, at_h, at_p, at_q = _AT[has_q, has_h]
    pad = -caplen & 3
    t0 = EPB_HEAD.size + caplen + pad
    total = t0 + tail.size
    parts = [2, 4, 0]
    if has_h:
        parts += [3, 5, algo, 0]
    parts += [5, 8, 0]
    if has_q:
        parts += [6, 4, 0]
    first, last = pid0 + lo, pid0 + hi - 1
    if first < 0 or last > _U64 or first >> 32 != last >> 32:
        return False  # the packet id's high word changes in the run (or wraps): block by block
    parts[-4 if has_q else -1] = first & ~_M32  # the high word: a constant of the run
    head = EPB_HEAD.pack(6, total, if_id, 0, 0, caplen, 0)
    end = bytes(pad) + tail.pack(*parts, 0, 0, total)
    lens = _cut(lens, lo, hi)
    try:
        wire = array("I", lens)
        stamps = array("I")  # lo, hi word pairs
        stamps.frombytes(memoryview(array("Q", _cut(ts, lo, hi))).cast("B"))
        pids = array("I", range(first & _M32, (last & _M32) + 1))
        flags = bytes(_cut(dirs, lo, hi)).translate(_flag_table(flags_of))
        hs = array("I", h) if has_h else None  # type: ignore[arg-type]
    except (OverflowError, TypeError, ValueError):
        return False  # a value outside its field (or None): block by block, as packet() does
    if min(lens) < caplen:
        return False  # orig len below caplen: raised to caplen block by block
    # One join lays every block out: b"", the heads, b"" joined with (end + head) is
    # end head h0 end head h1 ... end head h(n-1) end head; without its first len(end) and
    # last len(head) bytes, that is the run's blocks (their varying fields still zero).
    joined = (end + head).join([b"", *_cut(heads, lo, hi), b""])  # type: ignore[list-item]
    # As 32-bit words in an array: its strided slice assignment is a plain copy loop, a few
    # times faster than a memoryview's (the join's bytes are copied once more for it).
    m = array("I")
    m.frombytes(memoryview(joined)[len(end):len(joined) - len(head)])
    del joined
    stride = total // 4
    m[3::stride] = stamps[1::2]
    m[4::stride] = stamps[0::2]
    m[6::stride] = wire
    m[(t0 + at_p) // 4::stride] = pids
    if qs is not None:
        m[(t0 + at_q) // 4::stride] = qs
    mb = memoryview(m).cast("B")
    mb[t0 + at_f::total] = flags
    if hs is not None:  # the hash sits at an odd offset: a word view starting there
        at = t0 + at_h
        odd = mb[at:at + (hi - lo - 1) * total + 4].cast("I")
        odd[::stride] = hs
        odd.release()
    chunk(mb)
    return True


def _cut(column: Sequence[Any], lo: int, hi: int) -> Sequence[Any]:
    """Rows ``lo:hi`` of a column: the column itself when that is all of it (no copy)."""
    return column if lo == 0 and hi == len(column) else column[lo:hi]


_FLAG_TABLES: dict[tuple[int, ...], bytes] = {}


def _flag_table(flags_of: tuple[int, ...]) -> bytes:
    """``bytes.translate`` table: direction byte -> its flags (0 outside the table)."""
    table = _FLAG_TABLES.get(flags_of)
    if table is None:
        table = _FLAG_TABLES[flags_of] = bytes(
            flags_of[i] if i < len(flags_of) else 0 for i in range(256))
    return table


def _blocks(buf: bytearray, if_id: int, ts: Sequence[int], heads: Sequence[bytes | None],
            lens: Sequence[int], dirs: Sequence[int], queues: Sequence[int | None],
            hashes: Sequence[int | None], pid0: int, lo: int, hi: int,
            flags_of: tuple[int, ...], algo: int) -> None:
    """Rows ``lo:hi`` block by block: per frame one struct for the head, one for the tail."""
    head_pack: Callable[..., bytes] = EPB_HEAD.pack
    tqh, tq, th, t_ = TAIL_QH.pack, TAIL_Q.pack, TAIL_H.pack, TAIL.pack
    sz_qh, sz_q, sz_h, sz_0 = (EPB_HEAD.size + t.size for t in (TAIL_QH, TAIL_Q, TAIL_H, TAIL))
    nflags = len(flags_of)
    pad_of = PAD
    for i in range(lo, hi):
        data = heads[i] or b""
        caplen = len(data)
        wire = lens[i]
        if wire is None or wire < caplen:
            wire = caplen
        t = ts[i]
        d = dirs[i]
        fl = flags_of[d] if d is not None and 0 <= d < nflags else 0
        q = queues[i]
        h = hashes[i]
        pad = pad_of[caplen & 3]
        pid = (pid0 + i) & _U64
        if q is not None:
            if h:
                total = sz_qh + caplen + len(pad)
                tail = tqh(2, 4, fl, 3, 5, algo, h & _M32, 5, 8, pid, 6, 4, q & _M32, 0, 0, total)
            else:
                total = sz_q + caplen + len(pad)
                tail = tq(2, 4, fl, 5, 8, pid, 6, 4, q & _M32, 0, 0, total)
        elif h:
            total = sz_h + caplen + len(pad)
            tail = th(2, 4, fl, 3, 5, algo, h & _M32, 5, 8, pid, 0, 0, total)
        else:
            total = sz_0 + caplen + len(pad)
            tail = t_(2, 4, fl, 5, 8, pid, 0, 0, total)
        buf += head_pack(6, total, if_id, (t >> 32) & _M32, t & _M32, caplen, wire)
        buf += data
        buf += pad
        buf += tail

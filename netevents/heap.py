"""Large buffers from the heap, and freed ones kept for the next batch (glibc ``mallopt``).

The capture agent and `netevents archive` (its PcapNG writer) make a few buffers of 0.1-4 MB per batch (packed
columns, encoded batches, the bus client's command; runs of EPBs and the bytes written). glibc
serves such sizes with fresh mmaps and unmaps them on free (or trims them off the heap top), so
every batch paid a page fault per 4 KiB page of every copy: a fifth of the capture's CPU, and
in bench/pcapng.py a 176 KB join cost 150 µs instead of 18 µs. :func:`keep_heap` raises both
thresholds, process-wide and bounded: the heap keeps at most ``M_TRIM_THRESHOLD`` free at its
top. Does nothing where libc has no ``mallopt``.
"""

from __future__ import annotations

import ctypes

# glibc malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
_heap_kept = False


def keep_heap() -> None:
    """Apply the policy above (once per process)."""
    global _heap_kept
    if _heap_kept:
        return
    _heap_kept = True
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, 32 << 20)  # the largest glibc allows (HEAP_MAX_SIZE / 2)
    mallopt(M_TRIM_THRESHOLD, 64 << 20)

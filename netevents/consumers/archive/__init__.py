"""`netevents archive`: frame, gap and drop batches from the bus into rotating PcapNG files.

    core.py      PcapngArchive, sans-IO: batches in, PcapNG bytes out; places every capture gap
                 as ``epb_dropcount`` on the first frame after it, keeps per-file accounting and
                 a checkpoint of its state; interface_statistics, the ISB rule
    files.py     ArchiveFiles: one open file, rotation, the ``<file>.json`` sidecar, resuming
                 from the newest sidecar's checkpoint
    recovery.py  recover, seal: a file left unclosed by a killed archiver -- the packets past its
                 checkpoint, torn last block cut, ISBs added with the core's rule
    service.py   run_archive, the asyncio shell: durable JetStream subscription -> core -> files

Gaps and frames travel in different streams, so either may arrive first: a frame batch says how
many gap records its ring had made when it was made (``gaps_before``), and the shell holds it
(:class:`~netevents.consumers.ringorder.RingOrderHold`) until that many have arrived -- at most
``--gap-wait`` seconds (1 s; batches of agents that do not say are held that long), so the gap
records about it are there when the core writes it. Then packets wait in a bounded reorder window
(service.TimeOrder) and each group is merged by timestamp (core.flush_staged): files of several
rings are in time order; what comes behind the window is written and counted (``out_of_order``).

Durability: batches are written in groups (one flush and one sidecar rewrite per group; a group
is one batch unless more are already waiting) and acknowledged to JetStream only after that, so
the checkpoint in the sidecar covers every acknowledged batch. After a kill -9 the file is
readable up to the last flushed group; the next run resumes from the checkpoint (the durable
consumer redelivers what was not acknowledged), skips frames the file already holds past the
checkpoint (found by packet id), and closes the old file: torn last block cut, ISBs added,
sidecar complete.
"""

from .core import (
    DEFAULT_SNAPLEN,
    MAX_PENDING_GAPS,
    IfaceStats,
    PcapngArchive,
    Ring,
    interface_statistics,
    packetid_base,
)
from .files import ArchiveFiles
from .recovery import recover, seal
from .service import DEFAULT_HOLD, GROUP, KINDS, MAX_HELD, run_archive

__all__ = [
    "DEFAULT_HOLD", "DEFAULT_SNAPLEN", "GROUP", "KINDS", "MAX_HELD", "MAX_PENDING_GAPS",
    "ArchiveFiles", "IfaceStats", "PcapngArchive", "Ring", "interface_statistics",
    "packetid_base", "recover", "run_archive", "seal",
]

"""Crash recovery: what a file its archiver left open (kill -9) holds past its checkpoint, and
closing it -- torn last block cut, ISBs added with the core's rule
(:func:`.core.interface_statistics`).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from ...pcapng import (
    EnhancedPacket,
    InterfaceDescription,
    InterfaceInfo,
    PcapngFormatError,
    PcapngWriter,
    read_pcapng,
)
from .core import IfaceStats, interface_statistics

log = logging.getLogger("netevents.archive")


def recover(path: Path, doc: dict[str, Any]) -> tuple[list[int], dict[str, Any] | None]:
    """For a file whose sidecar ``doc`` says it was never closed: the packet ids it holds past
    the checkpoint (the sidecar is rewritten after each flushed group, so a kill between the
    flush and the rewrite leaves a batch the checkpoint does not know: a few KiB are read, never
    the whole file), and the file sealed (:func:`seal`) -- its new sidecar, or None if it could
    not be read or closed (logged)."""
    offset = int(doc.get("bytes") or 0)
    ids: list[int] = []
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            tail = read_pcapng(fh.read(), fragment=True)
        ids = [b.packetid for b in tail.of(EnhancedPacket) if b.packetid is not None]
        return ids, seal(path, doc, offset, tail)
    except (OSError, PcapngFormatError) as exc:
        log.warning("cannot read the tail of %s (%s): a batch may be written twice, "
                    "and the file stays unclosed", path, exc)
        return ids, None


def seal(path: Path, doc: dict[str, Any], offset: int, tail: Any) -> dict[str, Any]:
    """Close a file its archiver left open (kill -9): cut a torn last block and append the
    ISBs; returns its sidecar ``doc`` updated (complete, with the blocks found past its
    checkpoint) for the caller to write.

    ``tail`` is the parse of the bytes from ``offset`` (the checkpoint's file size) on.

    Raises:
        PcapngFormatError: if the tail does not fit the interfaces the sidecar lists.
        OSError: if the file cannot be rewritten.
    """
    end = offset + tail.end
    ifaces = {d["id"]: IfaceStats.from_doc(d) for d in doc.get("interfaces") or []}
    frames = drops = dropcount = 0
    for b in tail.blocks:
        if isinstance(b, InterfaceDescription):
            new_id = max(ifaces, default=-1) + 1
            ifaces[new_id] = IfaceStats(new_id, b.description, b.name,
                                        None if (b.name or "").startswith("drops@") else 0)
        elif isinstance(b, EnhancedPacket):
            st = ifaces.get(b.interface_id)
            if st is None:
                raise PcapngFormatError(f"EPB for unknown interface {b.interface_id}")
            st.packets += 1
            st.dropcount += b.dropcount or 0
            dropcount += b.dropcount or 0
            if b.packetid is None:
                drops += 1
            else:
                frames += 1
            st.first_ts = st.first_ts or b.timestamp
            st.last_ts = b.timestamp if st.last_ts is None else max(st.last_ts, b.timestamp)
    order = sorted(ifaces)
    w = PcapngWriter.continuing([InterfaceInfo(ifaces[i].name or "?") for i in order])
    now = time.time_ns()
    for i in order:
        st = ifaces[i]
        interface_statistics(w, st, now, f"{st.packets} packets written; sealed by the next "
                                         "archiver run (this file's archiver stopped without "
                                         "closing it)")
    with open(path, "r+b") as fh:
        fh.truncate(end)
        fh.seek(end)
        data = w.take()
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    doc.update(complete=True, sealed=True, bytes=end + len(data),
               frames=doc.get("frames", 0) + frames, drop_packets=doc.get("drop_packets", 0) + drops,
               packets=doc.get("packets", 0) + frames + drops,
               dropcount=doc.get("dropcount", 0) + dropcount,
               interfaces=[ifaces[i].doc() for i in order], torn_bytes_cut=tail.trailing)
    log.info("%s: closed after an unclean stop (%d packets past its last checkpoint%s)",
             path.name, frames + drops,
             f", {tail.trailing} torn bytes cut" if tail.trailing else "")
    return doc


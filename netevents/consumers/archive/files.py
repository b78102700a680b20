"""The archive's file side: the current PcapNG file of a directory, its rotation and its
sidecar ``<file>.json``.

Batches are written in groups (one flush and one sidecar rewrite per group) and the caller
acknowledges them only after that, so the checkpoint in the newest sidecar covers every
acknowledged batch. The sidecar (``complete`` once the file is closed) says what the file holds
(frames, drop packets, total dropcount) and what the archive knows it did not see (batches
missed per host and kind, unseen frames, rejected messages), and carries that checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any, BinaryIO

from ...codec import Batch
from .core import PcapngArchive
from .recovery import recover

log = logging.getLogger("netevents.archive")

_NAME = re.compile(r"^netevents-(\d{8}T\d{6}Z)-(\d{6})\.pcapng$")


def sidecar_of(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def atomic_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(doc, fh, separators=(",", ":"))
    os.replace(tmp, path)


class ArchiveFiles:
    """The current PcapNG file of an archive directory, its rotation and its sidecar.

    Raises:
        OSError: when the directory or a file cannot be written (the CLI reports it, exit 1).
    """

    def __init__(self, out_dir: str | os.PathLike, core: PcapngArchive, *,
                 rotate_bytes: int | None = None, rotate_seconds: float | None = None) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.core = core
        self.rotate_bytes = rotate_bytes
        self.rotate_seconds = rotate_seconds
        self.fh: BinaryIO | None = None
        self.path: Path | None = None
        self.opened_at = 0.0
        self.size = 0
        self.files: list[Path] = []
        self.totals: Counter[str] = Counter()
        existing = sorted(p for p in self.dir.glob("netevents-*.pcapng") if _NAME.match(p.name))
        self.index = max((int(_NAME.match(p.name).group(2)) for p in existing), default=0)
        self.previous = existing[-1] if existing else None

    def resume_state(self) -> tuple[dict[str, Any] | None, list[int]]:
        """The checkpoint in the newest sidecar of the directory (None for a fresh archive), and
        the packet ids the file holds beyond it (so that :meth:`PcapngArchive.advance` does not
        write them twice). A file left unclosed is closed now (:func:`.recovery.recover`).
        """
        if self.previous is None:
            return None, []
        side = sidecar_of(self.previous)
        try:
            doc = json.loads(side.read_text())
        except (OSError, ValueError):
            log.warning("cannot read %s: starting without a checkpoint (redelivered batches may "
                        "be written twice)", side)
            return None, []
        ids: list[int] = []
        if not doc.get("complete"):
            ids, sealed = recover(self.previous, doc)
            if sealed is not None:
                try:
                    atomic_json(side, sealed)
                except OSError as exc:
                    log.warning("cannot rewrite %s (%s): it still says the file is unclosed",
                                side, exc)
        return doc.get("checkpoint"), ids

    def open(self) -> None:
        self.index += 1
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.path = self.dir / f"netevents-{stamp}-{self.index:06d}.pcapng"
        self.fh = open(self.path, "xb")
        self.opened_at = time.monotonic()
        self.size = 0
        self.files.append(self.path)
        self._write(self.core.open_section(comment=f"netevents archive file {self.index}"))
        self.sidecar(complete=False)

    def _write(self, data: bytes) -> None:
        assert self.fh is not None
        if data:
            self.fh.write(data)
            self.fh.flush()   # a kill -9 leaves the file readable up to here
            self.size += len(data)

    def write_batch(self, batch: Batch, sub_report: dict[str, Any] | None = None) -> None:
        """Append one batch, flush, rewrite the sidecar; rotate when due."""
        self.write_batches([batch], sub_report)

    def write_batches(self, batches: list[Batch], sub_report: dict[str, Any] | None = None) -> None:
        """Append batches, flush, rewrite the sidecar once (a group commit); rotate when due.

        The caller acknowledges the batches only after this returns, so the checkpoint in the
        newest sidecar covers every acknowledged batch. Grouping matters under load: the
        sidecar rewrite (a few ms on slow filesystems) is paid once per group, not per batch.
        """
        if self.fh is None:
            self.open()
        core = self.core
        for batch in batches:
            # Staged, so the group's packets go out merged in time order (core.flush_staged);
            # written out before a rotation (the packets name the section's interfaces).
            core.stage(batch)
            if self.due(core.staged_bytes):
                self._append(core.flush_staged())
                self.close(sub_report=sub_report)
                self.open()
        self._append(core.flush_staged())
        assert self.fh is not None
        self.fh.flush()   # a kill -9 leaves the file readable up to here
        self.sidecar(complete=False, sub_report=sub_report)

    def _append(self, data: bytes) -> None:
        if data:
            assert self.fh is not None
            self.fh.write(data)
            self.size += len(data)

    def due(self, staged: int = 0) -> bool:
        """Is the file due for rotation (with ``staged`` bytes still to be written)?"""
        if self.fh is None:
            return False
        if self.rotate_bytes and self.size + staged >= self.rotate_bytes:
            return True
        return bool(self.rotate_seconds and time.monotonic() - self.opened_at >= self.rotate_seconds)

    def maybe_rotate(self, sub_report: dict[str, Any] | None = None) -> None:
        if self.due():
            self.close(sub_report=sub_report)
            self.open()

    def close(self, *, final: bool = False, sub_report: dict[str, Any] | None = None) -> None:
        if self.fh is None:
            return
        self._write(self.core.close_section(time.time_ns(), final=final))
        os.fsync(self.fh.fileno())
        self.fh.close()
        self.fh = None
        self.sidecar(complete=True, sub_report=sub_report)
        s = self.core.summary()
        self.totals["files"] += 1
        for k in ("frames", "drop_packets", "dropcount"):
            self.totals[k] += s[k]

    def sidecar(self, *, complete: bool, sub_report: dict[str, Any] | None = None) -> None:
        assert self.path is not None
        doc = {"file": self.path.name, "complete": complete, "bytes": self.size,
               "writer": self.core.userappl, **self.core.summary()}
        if sub_report is not None:
            doc["subscription"] = sub_report
        doc["checkpoint"] = self.core.checkpoint()
        atomic_json(sidecar_of(self.path), doc)

    def current(self) -> dict[str, Any]:
        s = self.core.summary() if self.fh is not None else {"frames": 0, "drop_packets": 0, "dropcount": 0}
        return {"files": self.totals["files"] + (1 if self.fh is not None else 0),
                "frames": self.totals["frames"] + s["frames"],
                "drop_packets": self.totals["drop_packets"] + s["drop_packets"],
                "dropcount": self.totals["dropcount"] + s["dropcount"]}

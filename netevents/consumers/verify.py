"""`netevents verify FILE.pcapng`: do Wireshark's own tools read the archive as the archive says?

Checks, each reported on one line:
  * capinfos and tshark both read the file (a file cut short by a kill -9 is reported, and
    accepted up to its last complete block when the sidecar says the file was never closed);
  * the packet count tshark sees equals the packets the sidecar ``<file>.json`` says were written
    (frames + dropped packets), and capinfos agrees;
  * the sum of ``frame.drop_count`` equals the sidecar's dropcount total (capture gaps placed);
  * our own reader finds the same packets.
and then what the archive knows it did not see (batches missed per host and kind, frames not
received, gaps not placed), so "no loss" and "not seen" stay apart.

A file whose sidecar says ``complete: false`` was not closed by its archiver (killed, or still
being written): its sidecar is a checkpoint taken after each flushed batch, so the file may hold
one batch more than it says, never less.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CapabilityError
from ..pcapng import EnhancedPacket, PcapngFormatError, read_pcapng

TOOLS = ("tshark", "capinfos")


@dataclass
class VerifyReport:
    path: Path
    ok: bool = True
    lines: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def check(self, good: bool, text: str) -> None:
        self.lines.append(("ok    " if good else "FAIL  ") + text)
        self.ok = self.ok and good

    def note(self, text: str) -> None:
        self.lines.append("note  " + text)

    def text(self) -> str:
        head = f"{self.path}: {'OK' if self.ok else 'FAILED'}"
        return "\n".join([head, *("  " + ln for ln in self.lines)])


def require_tools() -> None:
    """Raises CapabilityError naming the Debian package when tshark or capinfos is missing."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise CapabilityError("tshark", f"{' and '.join(missing)} not found: install the Debian "
                              "package 'tshark' (apt-get install tshark), which has both")


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def tshark_counts(path: Path) -> tuple[int, int, int, str]:
    """(frames, sum of frame.drop_count, frames with a drop count, tshark's stderr)."""
    p = _run(["tshark", "-r", str(path), "-T", "fields", "-e", "frame.drop_count"])
    frames = drops = with_drop = 0
    for line in p.stdout.splitlines():
        frames += 1
        v = line.strip()
        if v:
            drops += int(v)
            with_drop += 1
    err = "\n".join(ln for ln in p.stderr.splitlines() if "Running as user" not in ln
                    and "could be dangerous" not in ln).strip()
    if p.returncode != 0 and not err:
        err = f"tshark exited {p.returncode}"
    return frames, drops, with_drop, err


def capinfos_count(path: Path) -> tuple[int | None, str]:
    p = _run(["capinfos", "-c", "-M", str(path)])
    m = re.search(r"Number of packets:\s+(\d+)", p.stdout)
    err = "\n".join(ln for ln in p.stderr.splitlines() if "Running as user" not in ln).strip()
    return (int(m.group(1)) if m else None), err


def verify(path: str | Path) -> VerifyReport:
    """Check one archive file; never raises for a bad file (that is a FAIL line).

    Raises:
        CapabilityError: if tshark or capinfos is not installed.
    """
    require_tools()
    path = Path(path)
    rep = VerifyReport(path)
    if not path.is_file():
        rep.check(False, "file not found")
        return rep
    side_path = path.with_name(path.name + ".json")
    side: dict[str, Any] | None = None
    try:
        side = json.loads(side_path.read_text())
    except FileNotFoundError:
        rep.check(False, f"no sidecar {side_path.name}: nothing to compare the file with")
    except ValueError as exc:
        rep.check(False, f"sidecar {side_path.name} is not JSON: {exc}")

    try:
        ours = read_pcapng(path.read_bytes())
    except PcapngFormatError as exc:
        rep.check(False, f"not a valid PcapNG file: {exc}")
        return rep
    our_packets = len(ours.of(EnhancedPacket))
    our_drops = sum(p.dropcount or 0 for p in ours.of(EnhancedPacket))

    frames, drops, with_drop, t_err = tshark_counts(path)
    cap, c_err = capinfos_count(path)
    rep.facts.update(tshark_frames=frames, tshark_dropcount=drops, frames_with_dropcount=with_drop,
                     capinfos_packets=cap, reader_packets=our_packets, truncated=ours.truncated)
    complete = bool(side and side.get("complete"))
    if ours.truncated:
        rep.check(side is not None and not complete,
                  f"file ends inside a block ({ours.trailing} bytes cut off): the writer stopped "
                  "mid-write" + ("" if complete is False and side else " -- but the sidecar says it was closed"))
    rep.check(not t_err or ours.truncated, "tshark reads the file" + (f" ({t_err.splitlines()[-1]})" if t_err else ""))
    rep.check(cap is not None, "capinfos reads the file" + (f" ({c_err.splitlines()[-1]})" if c_err else ""))
    rep.check(cap == frames == our_packets,
              f"packet counts agree: tshark {frames}, capinfos {cap}, netevents reader {our_packets}")
    rep.check(drops == our_drops, f"frame.drop_count total {drops} in {with_drop} frames "
                                  f"(netevents reader: {our_drops})")
    if side is None:
        return rep

    want_packets = int(side.get("packets", 0))
    want_drops = int(side.get("dropcount", 0))
    rep.facts.update(sidecar_packets=want_packets, sidecar_dropcount=want_drops, complete=complete)
    if complete:
        rep.check(frames == want_packets, f"packets: file {frames}, archive wrote {want_packets} "
                  f"({side.get('frames')} frames + {side.get('drop_packets')} dropped packets)")
        rep.check(drops == want_drops, f"drop count: file {drops}, archive wrote {want_drops}")
    else:
        rep.note("the sidecar says the file was not closed (archiver killed or still writing); "
                 "its counts are a checkpoint after the last flushed batch")
        rep.check(frames >= want_packets, f"packets: file {frames} >= checkpoint {want_packets}")
        rep.check(drops >= want_drops, f"drop count: file {drops} >= checkpoint {want_drops}")

    missed = side.get("missed_batches") or {}
    total_missed = sum(n for kinds in missed.values() for n in kinds.values())
    if total_missed:
        per = ", ".join(f"{h}/{k} {n}" for h, kinds in sorted(missed.items())
                        for k, n in sorted(kinds.items()) if n)
        rep.note(f"the archive did not receive {total_missed} batches: {per} "
                 "(absent from the file, not known to be lost)")
    else:
        rep.note("no batch sequence misses in this file's span")
    for key, text in (("unseen_frames", "frames summarised by an agent but not received"),
                      ("lost_unplaced", "frames lost by a capture whose gap found no frame to sit on"),
                      ("duplicate_frames", "redelivered frames skipped"),
                      ("alert_drops_not_archived", "alert-mode drop events (no packet) not archived")):
        if side.get(key):
            rep.note(f"{side[key]} {text}")
    rejected = (side.get("subscription") or {}).get("rejected") or {}
    if rejected:
        rep.note(f"messages rejected by the subscription: {rejected}")
    return rep


def verify_main(paths: list[str], as_json: bool = False) -> int:
    """Verify each file, print the reports; 0 if all are OK, 1 otherwise."""
    ok = True
    for p in paths:
        rep = verify(p)
        ok = ok and rep.ok
        if as_json:
            print(json.dumps({"file": str(rep.path), "ok": rep.ok, "checks": rep.lines, **rep.facts}))
        else:
            print(rep.text())
    return 0 if ok else 1

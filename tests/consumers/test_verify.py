"""`netevents verify`: passes a good archive file, fails a file that disagrees with its sidecar."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from netevents.consumers import verify as verify_mod
from netevents.consumers.archive import ArchiveFiles, PcapngArchive
from netevents.errors import CapabilityError
from tests.conftest import ROOT
from tests.framegen import drop_batch, frame_batch, gap_batch

needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None or shutil.which("capinfos") is None,
                                  reason="needs tshark and capinfos (Debian package tshark)")


def make_file(tmp_path):
    files = ArchiveFiles(tmp_path, PcapngArchive())
    files.open()
    files.write_batch(gap_batch("h1", "r1", 1, [(4, 9)]))
    files.write_batch(frame_batch("h1", "r1", 1, 0, 20))
    files.write_batch(drop_batch("h1", "r1", 1, 2))
    files.close(final=True)
    return files.files[0]


@needs_tshark
def test_verify_passes_a_good_file(tmp_path):
    path = make_file(tmp_path)
    rep = verify_mod.verify(path)
    assert rep.ok, rep.text()
    assert rep.facts["tshark_frames"] == 23 and rep.facts["tshark_dropcount"] == 9
    p = subprocess.run([sys.executable, "-m", "netevents.app", "verify", str(path)], cwd=ROOT,
                       capture_output=True, text=True)
    assert p.returncode == 0 and ": OK" in p.stdout


@needs_tshark
def test_verify_fails_when_counts_disagree(tmp_path):
    path = make_file(tmp_path)
    side = path.with_name(path.name + ".json")
    doc = json.loads(side.read_text())
    doc["dropcount"] += 1
    side.write_text(json.dumps(doc))
    rep = verify_mod.verify(path)
    assert not rep.ok
    assert any(ln.startswith("FAIL") and "drop count: file 9, archive wrote 10" in ln for ln in rep.lines)
    p = subprocess.run([sys.executable, "-m", "netevents.app", "verify", str(path)], cwd=ROOT,
                       capture_output=True, text=True)
    assert p.returncode == 1 and "FAILED" in p.stdout


@needs_tshark
def test_verify_fails_without_sidecar_and_on_garbage(tmp_path):
    path = make_file(tmp_path)
    path.with_name(path.name + ".json").unlink()
    assert not verify_mod.verify(path).ok
    junk = tmp_path / "junk.pcapng"
    junk.write_bytes(b"hello world, not a capture" * 4)
    rep = verify_mod.verify(junk)
    assert not rep.ok and any("not a valid PcapNG" in ln for ln in rep.lines)


def test_missing_tools_name_the_debian_package(monkeypatch):
    monkeypatch.setattr(verify_mod.shutil, "which", lambda name: None)
    with pytest.raises(CapabilityError, match="Debian package 'tshark'"):
        verify_mod.verify("/nonexistent.pcapng")


def test_rotation_by_time(tmp_path):
    files = ArchiveFiles(tmp_path, PcapngArchive(), rotate_seconds=0.05)
    files.open()
    files.write_batch(frame_batch("h1", "r1", 1, 0, 5))
    time.sleep(0.06)
    files.write_batch(frame_batch("h1", "r1", 2, 5, 5))   # written, then the file is due
    files.write_batch(frame_batch("h1", "r1", 3, 10, 5))
    files.close(final=True)
    docs = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*.json"))]
    assert [d["frames"] for d in docs] == [10, 5] and all(d["complete"] for d in docs)

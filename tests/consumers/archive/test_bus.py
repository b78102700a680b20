"""The archive end to end: a real nats-server, the `netevents archive` process, tshark.

Batches are built per the capture contract (tests/framegen.py) and published from several hosts;
the archiver runs as its own process so that it can be killed -9 and restarted.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from netevents.bus import connect
from netevents.consumers.archive import packetid_base
from netevents.consumers.verify import verify
from netevents.pcapng import EnhancedPacket, read_pcapng
from tests.conftest import ROOT
from tests.framegen import drop_batch, frame_batch, gap_batch

pytestmark = pytest.mark.integration

HOSTS = ("web-1", "web-2", "db-1")
PER_BATCH = 40


def plan(n_batches: int, run_of=lambda h: f"run-{h}"):
    """Per host: frame batches 1..n of PER_BATCH frames; every 4th batch boundary has a gap whose
    record is published before (even) or after (odd) the frames around it."""
    out, expected_ids, expected_lost = [], set(), 0
    for h in HOSTS:
        run = run_of(h)
        gseq = 0
        base = packetid_base(h, run, "eth0", 1)
        for i in range(n_batches):
            first = i * PER_BATCH
            fb = frame_batch(h, run, i + 1, first, PER_BATCH, worker=1)
            expected_ids.update(base + first + k for k in range(PER_BATCH))
            if i % 4 == 3:
                gseq += 1
                gb = gap_batch(h, run, gseq, [(first - 1, 10 + i)], worker=1)
                expected_lost += 10 + i
                out += [gb, fb] if gseq % 2 == 0 else [fb, gb]
            else:
                out.append(fb)
        out.append(drop_batch(h, run, 1, 2))
    return out, expected_ids, expected_lost


async def _publish(url: str, batches, pace: float = 0.0) -> None:
    async with connect(url, streams=True) as bus:
        for b in batches:
            await bus.publish(b, ack=True)
            if pace:
                await asyncio.sleep(pace)


def publish(url, batches, pace=0.0):
    asyncio.run(_publish(url, batches, pace))


def start_archiver(url: str, out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ)
    return subprocess.Popen(
        [sys.executable, "-m", "netevents.app", "archive", "--out", str(out), "--bus", url,
         "--durable", "t-archive", "--gap-wait", "0.3", *extra],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def sidecars(out: Path) -> list[dict]:
    docs = []
    for p in sorted(out.glob("*.pcapng.json")):
        try:
            docs.append(json.loads(p.read_text()))
        except ValueError:
            pass  # being replaced right now
    return docs


def archived_frames(out: Path) -> int:
    return sum(d.get("frames", 0) for d in sidecars(out))


def wait_for(cond, timeout=30.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"archiver exited {proc.returncode}: {proc.stderr.read()}")
        time.sleep(0.02)
    return False


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return err


def all_packets(out: Path):
    pk = []
    for p in sorted(out.glob("*.pcapng")):
        pk += read_pcapng(p.read_bytes()).of(EnhancedPacket)
    return pk


def test_archive_several_hosts_rotation_and_verify(nats_url, tmp_path):
    batches, ids, lost = plan(24)
    publish(nats_url, batches)
    out = tmp_path / "arch"
    proc = start_archiver(nats_url, out, "--rotate-mb", "0.2")
    try:
        assert wait_for(lambda: archived_frames(out) >= len(ids), proc=proc), archived_frames(out)
    finally:
        err = stop(proc)
    assert "netevents archive:" in err and "frames" in err       # progress on stderr
    files = sorted(out.glob("*.pcapng"))
    assert len(files) >= 3                                      # rotated by size
    for f in files:
        rep = verify(f)
        assert rep.ok, rep.text()
        assert rep.facts["complete"]
    pk = all_packets(out)
    frames = [p for p in pk if p.packetid is not None]
    assert {p.packetid for p in frames} == ids and len(frames) == len(ids)
    assert sum(p.dropcount or 0 for p in pk) == lost
    assert sum(1 for p in pk if p.packetid is None) == len(HOSTS) * 3       # drop packets
    docs = sidecars(out)
    assert sum(d["dropcount"] for d in docs) == lost
    assert all(not d["missed_batches"] for d in docs)
    # the CLI's verify: exit 0 and a readable report
    p = subprocess.run([sys.executable, "-m", "netevents.app", "verify", *map(str, files)],
                       cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "frame.drop_count total" in p.stdout and "FAIL" not in p.stdout


def test_kill_9_then_restart_leaves_no_hole(nats_url, tmp_path):
    batches, ids, lost = plan(60)
    out = tmp_path / "arch"
    publish(nats_url, batches[:30])
    # a short reorder window: batches are written as they come, so the kill lands mid-run
    proc = start_archiver(nats_url, out, "--reorder", "0.05")
    pub = threading.Thread(target=publish, args=(nats_url, batches[30:], 0.004))
    pub.start()
    try:
        assert wait_for(lambda: archived_frames(out) >= len(ids) // 3, proc=proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        pub.join(timeout=60)
    killed_at = archived_frames(out)
    assert killed_at < len(ids), "the archiver finished before the kill: make the run longer"

    # The killed file: readable up to the last flushed batch, and verify says so.
    f, = out.glob("*.pcapng")
    r = read_pcapng(f.read_bytes())
    side = json.loads(f.with_name(f.name + ".json").read_text())
    assert not side["complete"]
    assert len(r.of(EnhancedPacket)) >= side["packets"] > 0
    rep = verify(f)
    assert rep.ok, rep.text()
    tshark = subprocess.run(["tshark", "-r", str(f), "-T", "fields", "-e", "frame.number"],
                            capture_output=True, text=True)
    assert len(tshark.stdout.splitlines()) == len(r.of(EnhancedPacket))

    # Restart with the same durable: everything arrives, nothing is written twice.
    proc = start_archiver(nats_url, out)
    try:
        assert wait_for(lambda: {p.packetid for p in all_packets(out)} >= ids, proc=proc,
                        timeout=40)
    finally:
        err = stop(proc)
    # the batches the killed archiver had fetched but not acknowledged came back first, in order
    assert "unacknowledged messages are delivered again" in err, err
    pk = all_packets(out)
    frames = [p.packetid for p in pk if p.packetid is not None]
    assert set(frames) == ids
    dup = len(frames) - len(set(frames))
    # Not even the batch flushed just before the kill but after its checkpoint (found by packet id).
    assert dup == 0, dup
    assert sum(p.dropcount or 0 for p in pk) == lost
    for f in sorted(out.glob("*.pcapng")):      # the killed file too: the restart closed it
        rep = verify(f)
        assert rep.ok, rep.text()
        assert rep.facts["complete"] and not rep.facts["truncated"]


def test_frames_wait_for_the_gap_records_they_announce_not_for_the_clock(nats_url, tmp_path):
    """A frame batch says how many gap records its ring made before it (gaps_before): the archive
    writes it as soon as those are in -- at once when none are owed, when the late record comes
    otherwise -- not after the fixed --gap-wait (30 s here), and the dropcount sits on the first
    frame after the gap."""
    out = tmp_path / "arch"
    proc = start_archiver(nats_url, out, "--gap-wait", "30")
    run = "run-gb"
    base = packetid_base("gb-1", run, "eth0", 0)
    try:
        time.sleep(0.5)
        started = time.monotonic()
        publish(nats_url, [frame_batch("gb-1", run, 1, 0, PER_BATCH, gaps_before=0)])
        assert wait_for(lambda: archived_frames(out) >= PER_BATCH, timeout=10, proc=proc)
        # the next batch owes one gap record, which comes a second later (another stream)
        publish(nats_url, [frame_batch("gb-1", run, 2, PER_BATCH, PER_BATCH, gaps_before=1)])
        time.sleep(1.0)
        assert archived_frames(out) == PER_BATCH, "written before its gap record came"
        publish(nats_url, [gap_batch("gb-1", run, 1, [(PER_BATCH - 1, 7)])])
        assert wait_for(lambda: archived_frames(out) >= 2 * PER_BATCH, timeout=10, proc=proc)
        assert time.monotonic() - started < 20, "held for --gap-wait instead"
    finally:
        stop(proc)
    pk = {p.packetid: p for p in all_packets(out) if p.packetid is not None}
    assert len(pk) == 2 * PER_BATCH
    assert pk[base + PER_BATCH].dropcount == 7
    assert sum(p.dropcount or 0 for p in pk.values()) == 7


def test_two_archivers_share_the_fleet_by_host(nats_url, tmp_path):
    """Archivers scale out by host: each has its own durable name and host globs; every frame
    lands in exactly one archive, and each archive's gaps are its hosts' own."""
    batches, ids, lost = plan(4)
    publish(nats_url, batches)
    outs = {"web": tmp_path / "web", "db": tmp_path / "db"}
    procs = {name: subprocess.Popen(
        [sys.executable, "-m", "netevents.app", "archive", "--out", str(out), "--bus", nats_url,
         "--durable", f"arch-{name}", "--host", f"{name}-*", "--gap-wait", "0.3"],
        cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for name, out in outs.items()}
    try:
        assert wait_for(lambda: archived_frames(outs["web"]) >= 2 * 4 * PER_BATCH
                        and archived_frames(outs["db"]) >= 4 * PER_BATCH)
    finally:
        for p in procs.values():
            stop(p)
    got = {name: {p.packetid for p in all_packets(out) if p.packetid is not None}
           for name, out in outs.items()}
    assert not got["web"] & got["db"] and got["web"] | got["db"] == ids
    webs = {packetid_base(h, f"run-{h}", "eth0", 1) for h in ("web-1", "web-2")}
    assert all(any(0 <= i - b < 10_000 for b in webs) for i in got["web"])
    assert sum(p.dropcount or 0 for out in outs.values() for p in all_packets(out)) == lost

"""The real capture agent (netevents/agent/capture) into the real archive, checked with tshark.

A tiny ring overflows under a fast sender between two namespaces; the agent publishes frame
summaries and gap records to a real nats-server; `netevents archive` writes them; tshark's
sum of frame.drop_count plus the gaps the archive could not place on a frame equals the
kernel's tp_drops, and the frame count equals the summaries. Skips where the capture source is
not installed, or without root.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

capture = pytest.importorskip("netevents.agent.capture", reason="the capture source (netevents/agent/capture) is not installed")

from netevents.agent.runner import AgentRunner, RunnerOptions  # noqa: E402
from netevents.bus import connect  # noqa: E402
from netevents.consumers.verify import tshark_counts, verify  # noqa: E402
from tests.conftest import ROOT  # noqa: E402

pytestmark = pytest.mark.integration

SENDER = """
import socket, sys, struct
dst, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(n):
    s.sendto(struct.pack("!I", i) + b"x" * 36, (dst, 9999))
"""


def test_capture_gaps_land_in_the_archive_as_drop_counts(netns_pair, nats_url, tmp_path):
    a, b, prefix = netns_pair
    opts = capture.capture_config({
        "iface": "veth-b", "netns": b.name, "block_size": 4096, "block_nr": 2,
        "retire_tov_ms": 10, "block_delay": 0.002, "hwtstamp": False})
    cap = capture.ring_capture("veth-b", opts)
    out = tmp_path / "arch"
    env = dict(os.environ)
    archiver = subprocess.Popen(
        [sys.executable, "-m", "netevents.app", "archive", "--out", str(out), "--bus", nats_url,
         "--durable", "t-e2e", "--gap-wait", "0.5"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    async def run_agent() -> None:
        async with connect(nats_url, streams=True) as bus:
            runner = AgentRunner(bus, [cap], RunnerOptions(host="e2e", max_wait=0.05))
            stop = asyncio.Event()

            async def drive() -> None:
                await asyncio.sleep(0.3)
                await asyncio.to_thread(a.run, sys.executable, "-c", SENDER,
                                        f"{prefix}.2", "20000")
                await asyncio.sleep(0.3)
                stop.set()

            async with asyncio.TaskGroup() as tg:
                tg.create_task(drive())
                tg.create_task(runner.run(stop))

    try:
        asyncio.run(run_agent())
        acc = cap.accountant
        assert acc.drops > 0, "the ring never overflowed; the test proves nothing"
        frames_captured = acc.packets - acc.drops

        def archived() -> int:
            n = 0
            for p in out.glob("*.pcapng.json"):
                try:
                    n += json.loads(p.read_text())["frames"]
                except (ValueError, KeyError):
                    pass
            return n

        deadline = time.monotonic() + 30
        while archived() < frames_captured and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        archiver.send_signal(signal.SIGTERM)
        _o, err = archiver.communicate(timeout=30)
    assert archiver.returncode == 0, err
    path, = out.glob("*.pcapng")
    side = json.loads(path.with_name(path.name + ".json").read_text())
    frames, drop_total, with_drop, _err = tshark_counts(path)
    print(f"tp_packets {acc.packets} tp_drops {acc.drops}; archive frames {frames}, "
          f"drop_count {drop_total} on {with_drop} frames, unplaced {side['lost_unplaced']}, "
          f"late {side['gaps_late']}")
    assert frames == frames_captured == side["frames"]
    assert drop_total + side["lost_unplaced"] == acc.drops            # == kernel tp_drops
    assert with_drop > 0
    rep = verify(path)
    assert rep.ok, rep.text()


@pytest.mark.skipif(shutil.which("capinfos") is None, reason="needs capinfos (package tshark)")
def test_an_archive_of_two_capture_workers_is_in_time_order(netns_pair, nats_url, tmp_path):
    """Two rings of one fanout group (round robin: their frames interleave in time) into
    `netevents archive`: capinfos finds the file in strict time order, every frame there."""
    a, b, prefix = netns_pair
    opts = capture.capture_config({"iface": "veth-b", "netns": b.name, "fanout": "lb",
                                   "retire_tov_ms": 10, "hwtstamp": False})
    group = (os.getpid() * 13) & 0xFFFF
    caps = [capture.ring_capture("veth-b", opts, worker=w, fanout_group=group) for w in (0, 1)]
    out = tmp_path / "arch"
    archiver = subprocess.Popen(
        [sys.executable, "-m", "netevents.app", "archive", "--out", str(out), "--bus", nats_url,
         "--durable", "t-order", "--gap-wait", "0.5"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)

    async def run_agent() -> None:
        async with connect(nats_url, streams=True) as bus:
            runner = AgentRunner(bus, caps, RunnerOptions(host="order", max_wait=0.05))
            stop = asyncio.Event()

            async def drive() -> None:
                await asyncio.sleep(0.3)
                await asyncio.to_thread(a.run, sys.executable, "-c", SENDER,
                                        f"{prefix}.2", "20000")
                await asyncio.sleep(0.3)
                stop.set()

            async with asyncio.TaskGroup() as tg:
                tg.create_task(drive())
                tg.create_task(runner.run(stop))

    try:
        asyncio.run(run_agent())
        captured = sum(c.frames for c in caps)
        assert min(c.frames for c in caps) > 1000, [c.frames for c in caps]  # both rings busy
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            sides = [json.loads(p.read_text()) for p in out.glob("*.pcapng.json")]
            if sum(s.get("frames", 0) for s in sides) >= captured:
                break
            time.sleep(0.2)
    finally:
        archiver.send_signal(signal.SIGTERM)
        _o, err = archiver.communicate(timeout=30)
    assert archiver.returncode == 0, err
    path, = out.glob("*.pcapng")
    side = json.loads(path.with_name(path.name + ".json").read_text())
    assert side["frames"] == captured and side["out_of_order"] == 0
    assert len([i for i in side["interfaces"] if i["worker"] is not None]) == 2
    info = subprocess.run(["capinfos", "-o", str(path)], capture_output=True, text=True).stdout
    assert "Strict time order:   True" in info, info

"""Capture workers die with their agent: SIGKILL the agent and no worker remains, nothing is
published as its host afterwards; a worker started after its agent died exits at once; the
agent's exit line accounts for what its workers published and lost."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netevents.bus import connect
from tests.conftest import ROOT

FLOOD = ("import socket,sys,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
         "end=time.time()+float(sys.argv[2])\n"
         "while time.time()<end:\n    s.sendto(b'q'*40,(sys.argv[1],9999)); time.sleep(0.001)\n")


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(k) for k in (task / "children").read_text().split()]
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def agent_conf(tmp_path: Path, netns: str, host: str) -> Path:
    conf = tmp_path / "agent.toml"
    conf.write_text(f'[agent]\nhost = "{host}"\nstatus_interval = 0.5\nspool_dir = "{tmp_path / "spool"}"\n\n'
                    f'[capture]\niface = "veth-b"\nnetns = "{netns}"\nworkers = 2\nhwtstamp = false\n')
    return conf


@pytest.mark.integration
def test_sigkill_of_the_agent_ends_its_workers_and_their_publishing(netns_pair, nats_url, tmp_path):
    a, b, prefix = netns_pair
    conf = agent_conf(tmp_path, b.name, "orphan")
    sender = subprocess.Popen(["ip", "netns", "exec", a.name, sys.executable, "-c", FLOOD,
                               f"{prefix}.2", "40"])

    async def main() -> tuple[list[int], list[str]]:
        async with connect(nats_url) as bus:
            sub = bus.subscribe(["status", "frame"], hosts=["orphan"])
            await sub.start()
            agent = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "netevents.app", "agent", "--bus", nats_url,
                "--config", str(conf), cwd=ROOT, stderr=asyncio.subprocess.DEVNULL)
            workers: set[str] = set()
            frames = False
            deadline = time.monotonic() + 40
            while (len(workers) < 2 or not frames) and time.monotonic() < deadline:
                batch = await sub.next(timeout=1)
                if batch is None:
                    continue
                if batch.kind == "frame":
                    frames = True
                elif any(k.startswith("capture.ring.") for k in batch.events[0]["lost"]):
                    workers.add(batch.run)
            assert len(workers) == 2 and frames, "the workers never published"
            pids = children(agent.pid)
            assert len(pids) == 2
            agent.kill()
            await agent.wait()
            gone_by = time.monotonic() + 5
            while any(alive(p) for p in pids) and time.monotonic() < gone_by:
                await asyncio.sleep(0.05)
            assert not any(alive(p) for p in pids), "a worker outlived its agent"
            # the workers' last batches (their final status) may still be in flight: after
            # that, nothing more is published as this host
            while await sub.next(timeout=0.5) is not None:
                pass
            late = []
            t_end = time.monotonic() + 3
            while time.monotonic() < t_end:
                batch = await sub.next(timeout=0.5)
                if batch is not None:
                    late.append(f"{batch.kind} run {batch.run}")
            await sub.close()
            return pids, late

    try:
        _pids, late = asyncio.run(main())
    finally:
        sender.kill()
        sender.wait()
    assert late == []


def test_a_worker_whose_agent_is_already_gone_exits():
    spec = {"parent": 1, "iface": "lo", "worker": 0, "workers": 1, "fanout_group": 1,
            "agent": {}, "capture": {"iface": "lo"}, "spool": "/nonexistent"}
    r = subprocess.run([sys.executable, "-m", "netevents.agent.capture.workers", json.dumps(spec)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "agent that started this worker is gone" in r.stderr


@pytest.mark.integration
def test_the_agent_exit_line_accounts_for_its_workers(netns_pair, nats_url, tmp_path):
    a, b, prefix = netns_pair
    conf = agent_conf(tmp_path, b.name, "exitline")
    agent = subprocess.Popen([sys.executable, "-m", "netevents.app", "agent", "--bus", nats_url,
                              "--config", str(conf), "--duration", "6"], cwd=ROOT,
                             stderr=subprocess.PIPE, text=True, env={**os.environ})
    time.sleep(3)
    a.run(sys.executable, "-c", FLOOD, f"{prefix}.2", "1")
    _out, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err
    line = [ln for ln in err.splitlines() if "capture workers (" in ln]
    assert line and "capture workers (2 runs" in line[0] and "'frame':" in line[0], err

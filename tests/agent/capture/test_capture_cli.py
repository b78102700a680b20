"""`netevents hwtstamp` and `netevents agent --capture ...` as a user runs them."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from netevents.agent.capture import capture_config, hwtstamp
from netevents.agent.capture.workers import CaptureSupervisor
from netevents.agent.config import AgentConfig
from netevents.bus import connect
from tests.agent.capture.test_capture_filter import UDP_9999
from tests.conftest import ROOT

SENDER = ("import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
          "for i in range(60):\n    s.sendto(b'z'*20,('{dst}',9999)); time.sleep(0.05)\n")


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netevents.app", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.integration
def test_hwtstamp_on_veth_fails_clearly_and_capture_falls_back(netns_pair):
    _a, b, _prefix = netns_pair
    r = cli("hwtstamp", "veth-b", "on", "--netns", b.name)
    assert r.returncode == 1
    line = r.stderr.splitlines()[0]
    assert line.startswith("netevents hwtstamp: veth-b: SIOC") and "no hardware timestamping" in line
    # show: showing worked, and what it shows is that there are no hardware stamps (exit 0)
    r = cli("hwtstamp", "veth-b", "show", "--netns", b.name)
    assert r.returncode == 0 and r.stderr == ""
    line = r.stdout.splitlines()[0]
    assert line.startswith("veth-b: no hardware timestamping (SIOC") and "phc_index -1" in line
    info = hwtstamp.ts_info("veth-b", b.name)
    assert info.phc_index == -1 and not info.hardware and "software" in info.so_timestamping
    field, message = hwtstamp.enable_for_capture("veth-b", b.name)
    assert field == {"filter": None, "phc_index": None}
    assert message is not None and "capturing with software timestamps" in message


def test_hwtstamp_unknown_interface_and_usage():
    r = cli("hwtstamp", "nosuch-if9", "show")
    assert r.returncode == 1 and "nosuch-if9: ETHTOOL_GET_TS_INFO: no such interface" in r.stderr
    assert cli("hwtstamp", "lo", "sideways").returncode == 2
    r = cli("agent", "--workers", "2")
    assert r.returncode == 2 and "need --capture IF" in r.stderr
    r = cli("hwtstamp", "lo", "show")
    assert r.returncode == 0 and r.stdout.startswith("lo: ")


def test_capture_of_a_missing_interface_alone_is_a_usage_error():
    r = cli("agent", "--capture", "nope0", "--bus", "nats://127.0.0.1:1", "--duration", "1")
    assert r.returncode == 2 and "nope0" in r.stderr and "no such interface" in r.stderr, r.stderr
    r = cli("agent", "--capture", "nope0", "--capture", "nope1", "--workers", "2",
            "--bus", "nats://127.0.0.1:1")
    assert r.returncode == 2 and "nope0, nope1" in r.stderr, r.stderr


@pytest.mark.integration
def test_agent_command_captures_with_two_workers(netns_pair, nats_url, tmp_path):
    a, b, prefix = netns_pair
    conf = tmp_path / "agent.toml"
    conf.write_text(f'[capture]\nnetns = "{b.name}"\n')

    async def collect() -> tuple[dict, dict]:
        frames: dict[str, int] = {}
        finals: dict[str, dict] = {}
        async with connect(nats_url) as bus:
            sub = bus.subscribe(["frame", "status"], hosts=["clihost"])
            await sub.start()
            agent = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "netevents.app", "agent", "--bus", nats_url, "--host",
                "clihost", "--config", str(conf), "--capture", "veth-b", "--workers", "2",
                "--filter", UDP_9999, "--duration", "60", cwd=ROOT,
                stderr=asyncio.subprocess.PIPE)
            # wait for the agent and both workers to report the capture running (a worker's
            # first status comes after its ring is open and in the fanout group)
            running: set[str] = set()
            async with asyncio.timeout(30):
                while len(running) < 3:
                    batch = await sub.next(timeout=30)
                    if batch is not None and batch.kind == "status" and batch.events[0][
                            "sources"].get("capture", {}).get("state") == "running":
                        running.add(batch.run)
            await asyncio.sleep(0.2)
            sender = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", a.name, sys.executable, "-c",
                SENDER.format(dst=f"{prefix}.2"))
            await sender.wait()
            await asyncio.sleep(0.5)
            agent.terminate()  # SIGTERM: the agent drains, stops its workers, exits 0
            deadline = time.monotonic() + 20
            while len(finals) < 3 and time.monotonic() < deadline:
                batch = await sub.next(timeout=5)
                if batch is None:
                    continue
                if batch.kind == "frame":
                    frames[batch.run] = frames.get(batch.run, 0) + len(batch)
                elif batch.events[0].get("final"):
                    finals[batch.run] = batch.events[0]
            err = await agent.stderr.read()
            assert await agent.wait() == 0, err.decode()
            await sub.close()
        return frames, finals

    frames, finals = asyncio.run(collect())
    assert len(finals) == 3                      # the agent and its two workers
    assert sum(frames.values()) == 60 and len(frames) <= 2
    assert all(st["lost"].get("capture.worker_exits", 0) == 0 for st in finals.values())


def test_supervisor_reports_a_worker_that_cannot_run():
    sup = CaptureSupervisor(capture_config({"iface": "nosuch-if8", "workers": 2, "hwtstamp": False}),
                            AgentConfig(bus="nats://127.0.0.1:1"))

    class Sink:
        lost_counts: dict = {}

        def declare_loss(self, place):
            self.lost_counts.setdefault(place, 0)

        def lost(self, place, n):
            self.lost_counts[place] = self.lost_counts.get(place, 0) + n

        def state(self, source, state, reason=""):
            self.last_state = (source, state, reason)

    from netevents.errors import CapabilityError

    with pytest.raises(CapabilityError, match="no interface 'nosuch-if8'"):
        asyncio.run(asyncio.wait_for(sup.run(Sink()), 30))

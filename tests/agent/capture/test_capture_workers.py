"""Fanout across worker processes and capture-only mode, in namespaces, with a real nats-server."""

from __future__ import annotations

import asyncio
import sys
from collections import defaultdict

import pytest

from netevents.agent.capture import capture_config
from netevents.agent.capture.workers import CaptureSupervisor
from netevents.agent.config import AgentConfig
from netevents.agent.runner import AgentRunner, RunnerOptions
from netevents.bus import connect
from tests.agent.capture.test_capture_filter import UDP_9999

MANY_FLOWS = """
import socket, sys, struct
dst, port, flows, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(flows)]
n = 0
for _ in range(per):
    for s in socks:
        s.sendto(struct.pack("!I", n) + b"y" * 36, (dst, port))
        n += 1
"""


async def run_supervised(nats_url: str, sup: CaptureSupervisor, drive, workers: int) -> dict:
    out: dict = {"frames": defaultdict(list), "gaps": [], "final": {}, "missed": 0, "sup_run": None}
    async with connect(nats_url, streams=True) as bus:  # workers publish with JetStream acks
        sub = bus.subscribe(["frame", "gap", "status"], hosts=["captest"])
        await sub.start()
        runner = AgentRunner(bus, [sup], RunnerOptions(host="captest", max_wait=0.05))
        stop = asyncio.Event()
        ready: set[str] = set()
        ready_evt = asyncio.Event()

        async def driver() -> None:
            async with asyncio.timeout(30):
                await ready_evt.wait()
            await asyncio.sleep(0.5)  # the workers' rings are open and in the fanout group
            await asyncio.to_thread(drive)
            await asyncio.sleep(0.5)
            stop.set()

        async def reader() -> None:
            while len(out["final"]) < workers + 1:
                batch = await sub.next(timeout=30)
                assert batch is not None, f"final statuses seen: {len(out['final'])}"
                out["missed"] += batch.missed
                if batch.kind == "frame":
                    out["frames"][batch.fields["worker"]].extend(batch.rows())
                elif batch.kind == "gap":
                    out["gaps"].extend(batch.events)
                else:
                    st = batch.events[0]
                    if batch.run != runner.run_id and st["sources"].get("capture", {}).get(
                            "state") == "running":
                        ready.add(batch.run)
                        if len(ready) == workers:
                            ready_evt.set()
                    if st.get("final"):
                        out["final"][batch.run] = st

        async with asyncio.TaskGroup() as tg:
            tg.create_task(driver())
            r = tg.create_task(reader())
            await runner.run(stop)
            await r
        await sub.close()
    out["sup_run"] = runner.run_id
    return out


@pytest.mark.integration
def test_fanout_two_workers_split_the_frames_and_account_for_all(netns_pair, nats_url):
    a, b, prefix = netns_pair
    section = {"netns": b.name, "filter": UDP_9999, "fanout": "hash"}
    sup = CaptureSupervisor(capture_config({**section, "iface": "veth-b", "workers": 2}),
                            AgentConfig(bus=nats_url, host="captest"))
    flows, per = 16, 125

    def drive() -> None:
        a.run(sys.executable, "-c", MANY_FLOWS, f"{prefix}.2", "9999", str(flows), str(per),
              timeout=60)

    out = asyncio.run(run_supervised(nats_url, sup, drive, workers=2))
    sent = flows * per
    w0, w1 = out["frames"][0], out["frames"][1]
    lost = sum(g["lost"] for g in out["gaps"])
    assert w0 and w1, "the hash fanout gave one worker nothing"
    assert len(w0) + len(w1) + lost == sent          # nothing unaccounted for
    # hash fanout: one flow (source port) always lands on the same worker
    ports0, ports1 = {r["sport"] for r in w0}, {r["sport"] for r in w1}
    assert not ports0 & ports1 and len(ports0 | ports1) == flows
    assert {r["queue"] for r in w0} == {0} and {r["queue"] for r in w1} == {1}
    seen = sorted(int.from_bytes(r["head"][42:46], "big") for r in w0 + w1)
    assert len(set(seen)) == len(seen)               # no frame captured twice
    worker_finals = [st for run, st in out["final"].items() if run != out["sup_run"]]
    assert len(worker_finals) == 2
    ring_losses = sum(v for st in worker_finals for k, v in st["lost"].items()
                      if k.startswith("capture.ring."))
    assert ring_losses == lost
    sup_final = out["final"][out["sup_run"]]
    assert sup_final["lost"]["capture.worker_exits"] == 0
    assert out["missed"] == 0


def _drop_installed(b) -> bool:
    tc = b.run("tc", "filter", "show", "dev", "veth-b", "ingress", check=False).stdout
    nft = b.run("nft", "list", "tables", check=False).stdout
    return "pref 49007" in tc or "netevents_capture_veth_b" in nft


@pytest.mark.integration
@pytest.mark.parametrize("capture_only", [True, False], ids=["capture-only", "mirror"])
def test_capture_only_frames_are_captured_and_not_delivered(netns_pair, nats_url, capture_only):
    """AF_PACKET taps run in __netif_receive_skb_core before sch_handle_ingress: with the
    agent's ingress drop the ring still sees every frame, the UDP socket gets none. In the
    default mirror mode nothing is installed and the stack gets them all too."""
    a, b, prefix = netns_pair
    # b will not answer ARP any more (like a SPAN port, it only listens): a static neighbour
    mac = b.run("cat", "/sys/class/net/veth-b/address").stdout.strip()
    a.run("ip", "neigh", "replace", f"{prefix}.2", "lladdr", mac, "dev", "veth-a", "nud", "permanent")
    # a UDP listener in b that counts what the stack delivers
    listener = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(('0.0.0.0',9999)); "
        "s.settimeout(3)\n"
        "print('ready',flush=True)\nn=0\n"
        "try:\n    while True: s.recv(100); n+=1\nexcept OSError: pass\nprint(n,flush=True)\n")

    def drive() -> None:
        import subprocess

        lis = subprocess.Popen(["ip", "netns", "exec", b.name, sys.executable, "-c", listener],
                               stdout=subprocess.PIPE, text=True)
        try:
            assert lis.stdout.readline().strip() == "ready"
            assert _drop_installed(b) == capture_only   # installed while the agent runs
            a.run(sys.executable, "-c", MANY_FLOWS, f"{prefix}.2", "9999", "4", "50")
            out_lines = lis.communicate(timeout=10)[0].split()
            drive.delivered = int(out_lines[-1])
        finally:
            if lis.poll() is None:
                lis.kill()

    section = {"netns": b.name, "filter": UDP_9999, "capture_only": capture_only}
    sup = CaptureSupervisor(capture_config({**section, "iface": "veth-b"}),
                            AgentConfig(bus=nats_url, host="captest"))
    out = asyncio.run(run_supervised(nats_url, sup, drive, workers=1))
    frames = out["frames"][0]
    assert len(frames) + sum(g["lost"] for g in out["gaps"]) == 200
    assert len(frames) == 200 and drive.delivered == (0 if capture_only else 200)
    assert not _drop_installed(b)                       # removed on exit
    assert "clsact" not in b.run("tc", "qdisc", "show", "dev", "veth-b").stdout


@pytest.mark.integration
def test_a_killed_worker_is_restarted_and_counted(netns_pair, nats_url):
    import os
    import signal
    import time

    _a, b, _prefix = netns_pair
    sup = CaptureSupervisor(capture_config({"iface": "veth-b", "workers": 2, "netns": b.name,
                                            "hwtstamp": False}),
                            AgentConfig(bus=nats_url, host="captest"))
    sup.restart_delay = 0.2

    def drive() -> None:
        victim = sup.procs[("veth-b", 0)]
        os.kill(victim.pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = sup.procs.get(("veth-b", 0))
            if now is not victim and now is not None and now.returncode is None:
                break
            time.sleep(0.05)
        time.sleep(1.5)  # the new worker connects and publishes its status

    out = asyncio.run(run_supervised(nats_url, sup, drive, workers=2))
    assert sup.exits == 1
    assert out["final"][out["sup_run"]]["lost"]["capture.worker_exits"] == 1
    assert len(out["final"]) == 3  # supervisor + the restarted worker + the other worker


FLOOD = ("import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
         "for i in range(int(sys.argv[2])):\n    s.sendto(b'q'*40,(sys.argv[1],9999))\n")


@pytest.mark.integration
def test_capture_workers_honour_the_agent_section(netns_pair, nats_url, tmp_path):
    """Workers are assembled by netevents.agent.compose like the agent: [agent] status_interval and
    batch_max_events from the config file change what each worker publishes."""
    import time

    from tests.conftest import ROOT

    a, b, prefix = netns_pair
    conf = tmp_path / "agent.toml"
    conf.write_text(
        f'[agent]\nhost = "honour"\nstatus_interval = 0.3\nbatch_max_events = 1\n'
        f'spool_dir = "{tmp_path / "spool"}"\n\n'
        f'[capture]\niface = "veth-b"\nnetns = "{b.name}"\nworkers = 2\nhwtstamp = false\n'
        f'block_size = 4096\nblock_nr = 2\nretire_tov_ms = 10\nblock_delay = 0.002\n')

    async def collect() -> tuple[dict[str, list[float]], dict[str, list[int]], set[str]]:
        statuses: dict[str, list[float]] = {}
        gap_sizes: dict[str, list[int]] = {}
        workers: set[str] = set()
        async with connect(nats_url) as bus:
            sub = bus.subscribe(["status", "gap"], hosts=["honour"])
            await sub.start()
            agent = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "netevents.app", "agent", "--bus", nats_url,
                "--config", str(conf), "--duration", "60", cwd=ROOT,
                stderr=asyncio.subprocess.PIPE)
            sender = None
            t_end = time.monotonic() + 45
            while time.monotonic() < t_end:
                batch = await sub.next(timeout=1)
                if batch is None:
                    continue
                if batch.kind == "gap":
                    gap_sizes.setdefault(batch.run, []).append(len(batch))
                    continue
                st = batch.events[0]
                statuses.setdefault(batch.run, []).append(time.monotonic())
                if any(k.startswith("capture.ring.") for k in st["lost"]):
                    workers.add(batch.run)
                if len(workers) == 2 and sender is None:
                    sender = await asyncio.create_subprocess_exec(
                        "ip", "netns", "exec", a.name, sys.executable, "-c", FLOOD,
                        f"{prefix}.2", "30000")
                if sender is not None and sender.returncode is None:
                    continue
                if sender is not None and all(len(statuses[w]) >= 6 for w in workers) \
                        and gap_sizes:
                    break
            if sender is not None:
                await sender.wait()
            agent.terminate()
            err = await agent.stderr.read()
            assert await agent.wait() == 0, err.decode()
        return statuses, gap_sizes, workers

    statuses, gap_sizes, workers = asyncio.run(collect())
    assert len(workers) == 2, statuses
    for w in workers:
        times = statuses[w]
        assert len(times) >= 6      # every 0.3 s (the default 5 s would give 1 or 2 here)
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert sorted(gaps)[len(gaps) // 2] < 1.0
    worker_gaps = [n for run, sizes in gap_sizes.items() if run in workers for n in sizes]
    assert len(worker_gaps) >= 2, gap_sizes   # the flood overran the tiny rings
    assert set(worker_gaps) == {1}            # batch_max_events = 1: one gap record a batch

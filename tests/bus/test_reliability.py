"""Nothing lost when the server or the agent dies: real nats-server processes, real agents."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from netevents.bus import EmbeddedServer
from netevents.codec import decode_batch

NETEVENTS = [sys.executable, "-m", "netevents.app"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_agent(url, host, spool, *extra):
    return subprocess.Popen([*NETEVENTS, "agent", "--bus", url, "--host", host, "--netstat",
                             "--interval", "0.1", "--status-interval", "1", "--spool", str(spool),
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stored_batches(url, host):
    """Every batch of ``host`` in the streams: {(run, kind): [seq, ...]} and the last statuses."""

    async def main():
        nc = await nats.connect(url)
        js = nc.jetstream()
        seqs = defaultdict(list)
        statuses = {}
        for stream in ("NETEVENTS_STATS", "NETEVENTS_EVENTS"):
            info = await js.stream_info(stream)
            total = info.state.messages
            sub = await js.pull_subscribe(
                f"netevents.v1.*.*.{host}", stream=stream,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE))
            got = 0
            while got < total:
                try:
                    msgs = await sub.fetch(500, timeout=1)
                except nats.errors.TimeoutError:
                    break
                for m in msgs:
                    got += 1
                    b = decode_batch(m.data)
                    seqs[(b.run, b.kind)].append(b.seq)
                    if b.kind == "status":
                        statuses[b.run] = b.events[0]
        await nc.close()
        return seqs, statuses

    return asyncio.run(main())


def kill9(server: EmbeddedServer) -> None:
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait()


def test_server_killed_and_restarted_twice_loses_nothing(tmp_path):
    port = free_port()
    server = EmbeddedServer(tmp_path / "store", port=port)
    url = server.start_blocking()
    agent = start_agent(url, "rel-a", tmp_path / "spool")
    try:
        # A 60 s run: up 10 s, then twice: SIGKILL, 5 s down (the agent spools), restart, 20 s.
        time.sleep(10)
        for _ in range(2):
            kill9(server)
            time.sleep(5)
            server.start_blocking()
            time.sleep(20)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0, agent.stderr.read()
        seqs, statuses = stored_batches(url, "rel-a")
    finally:
        if agent.poll() is None:
            agent.kill()
        server.stop_blocking()
    (run,) = statuses
    final = statuses[run]
    assert final["final"] is True
    assert sum(final["lost"].values()) == 0, final["lost"]
    for kind, published in final["published"].items():
        stored = seqs[(run, kind)]
        # Every batch the agent made is in the stream exactly once (JetStream dedup on
        # Nats-Msg-Id removes replays of batches it had already stored).
        assert sorted(stored) == list(range(1, published + 1)), kind
    assert final["published"]["netstat"] > 150


def test_agent_sigkilled_while_spooling_hands_in_its_spool_on_restart(tmp_path):
    port = free_port()
    server = EmbeddedServer(tmp_path / "store", port=port)
    url = server.start_blocking()
    spool = tmp_path / "spool"
    first = start_agent(url, "rel-b", spool)
    second = None
    try:
        time.sleep(3)
        before, _ = stored_batches(url, "rel-b")
        stored_before = max(max(v) for (_r, k), v in before.items() if k == "netstat")
        kill9(server)
        deadline = time.monotonic() + 20       # batches go to the spool (slower on a busy host)
        while not list(spool.glob("*.spool")) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)                          # ~3 s of batches (4/s) in the spool
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert list(spool.glob("*.spool")), "nothing was spooled"
        server.start_blocking()
        second = start_agent(url, "rel-b", spool)
        time.sleep(4)
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0, second.stderr.read()
        seqs, statuses = stored_batches(url, "rel-b")
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
        server.stop_blocking()
    runs = {run for run, _kind in seqs}
    assert len(runs) == 2
    new_run = next(r for r, st in statuses.items() if st.get("final"))
    (old_run,) = runs - {new_run}
    for (run, kind), stored in seqs.items():
        if run != old_run:
            continue
        # The killed run's batches are all there, in one unbroken range from 1: only its tail
        # (what was still in memory at the SIGKILL: at most 250 ms of events per kind plus
        # max_inflight batches) can be missing.
        assert sorted(set(stored)) == list(range(1, max(stored) + 1)), (kind, sorted(stored))
    # The batches made while the server was down (~3 s at 4 batches/s) arrived from the spool.
    assert max(seqs[(old_run, "netstat")]) >= stored_before + 6
    assert not list(spool.glob("*.spool"))          # the spool was emptied

"""The 3-node JetStream cluster of deploy/nats/cluster-{1,2,3}.conf loses a node mid-run.

Three nats-server processes from the shipped configs (ports moved to free loopback ports), the
users from `netevents auth`, streams with 3 replicas; two `netevents agent` processes (netstat,
a fast interval, a short status interval) publish through node 1. Mid-run the node leading the
stats stream is SIGKILLed. Afterwards every batch each agent says it published (its own final
`published` counts) is in the streams exactly once, seq 1..N per (host, run, kind).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
import pytest

from netevents.auth import Fleet
from netevents.codec import decode_batch

from .servers import NATS_CONFS, NatsProcess, PortMap, rewrite_conf

NETEVENTS = [sys.executable, "-m", "netevents.app"]
SITE = "clu"
HOSTS = ("node-a", "node-b")
AGENT_SECONDS = 14.0

AGENT_TOML = """\
[agent]
status_interval = 0.5

[netstat]
interval = 0.1
all = true        # publish every (group, scope) each interval: a steady stream of batches
links = false
qdiscs = false
"""


def _url(env_file, port: int) -> str:
    line = next(ln for ln in env_file.read_text().splitlines() if ln.startswith("NETEVENTS_BUS="))
    return line.split("=", 1)[1].replace("127.0.0.1:4222", f"127.0.0.1:{port}")


async def _admin(url: str):
    return await nats.connect(url, connect_timeout=3, allow_reconnect=True,
                              max_reconnect_attempts=-1, reconnect_time_wait=0.2)


async def _create_streams(url: str, deadline: float) -> None:
    """`netevents streams --replicas 3`, retried while the cluster elects its meta leader."""
    while True:
        out = await asyncio.to_thread(subprocess.run, [*NETEVENTS, "streams", "--replicas", "3",
                                      "--bus", url, "--timeout", "5"], capture_output=True,
                                      text=True, timeout=60)
        if out.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"streams not created: {out.stderr}")
        await asyncio.sleep(0.5)


async def _leader(nc, stream: str) -> str | None:
    js = nc.jetstream()
    try:
        info = await js.stream_info(stream)
    except (nats.errors.Error, nats.js.errors.Error):
        return None
    return info.cluster.leader if info.cluster else None


async def _lead_elsewhere(nc, stream: str, avoid: str, deadline: float) -> str:
    """Step the stream's leader down until it is not ``avoid`` (the agents' node)."""
    while time.monotonic() < deadline:
        leader = await _leader(nc, stream)
        if leader and leader != avoid:
            return leader
        if leader == avoid:
            try:
                await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", b"", timeout=3)
            except nats.errors.Error:
                pass
        await asyncio.sleep(0.3)
    raise AssertionError(f"{stream} kept its leader on {avoid}")


async def _wait_publishing(url: str, deadline: float, at_least: int = 5) -> None:
    """Until both agents have batches in the stats stream (an agent whose user may not create
    streams spends its first seconds finding that out)."""
    nc = await _admin(url)
    try:
        while time.monotonic() < deadline:
            with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
                info = await nc.jetstream().stream_info(
                    "NETEVENTS_STATS", subjects_filter=f"netevents.v1.netstat.{SITE}.*")
                counts = info.state.subjects or {}
                if all(counts.get(f"netevents.v1.netstat.{SITE}.{h}", 0) >= at_least for h in HOSTS):
                    return
            await asyncio.sleep(0.2)
        raise AssertionError("the agents did not start publishing")
    finally:
        await nc.close()


async def _read_stream(nc, stream: str, subject: str) -> list:
    js = nc.jetstream()
    deadline = time.monotonic() + 20
    while True:  # the cluster may still be electing a new meta leader after the kill (503)
        try:
            psub = await js.pull_subscribe(subject, stream=stream)
            break
        except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
    info = await js.stream_info(stream, subjects_filter=subject)
    total = sum((info.state.subjects or {}).values())
    got = []
    while len(got) < total and time.monotonic() < deadline + 20:  # read all the stream holds
        try:
            msgs = await psub.fetch(500, timeout=2)
        except TimeoutError:  # nats' own and asyncio's
            continue
        for m in msgs:
            got.append(decode_batch(m.data))
            await m.ack()
    await psub.unsubscribe()
    assert len(got) == total, f"read {len(got)} of the {total} messages {stream} holds"
    return got


@pytest.mark.parametrize("victim", ["stats-leader", "agents-node"])
def test_cluster_loses_a_node_mid_run_and_no_batch_is_lost(tmp_path, victim):
    fleet = Fleet(tmp_path / "fleet")
    creds = {h: fleet.add("agent", h, "nats://127.0.0.1:4222", site=SITE, host=h)[1] for h in HOSTS}
    creds["admin"] = fleet.add("admin", "ops", "nats://127.0.0.1:4222")[1]
    fleet.set_routes(["127.0.0.1:6222", "127.0.0.1:6223", "127.0.0.1:6224"])  # as shipped
    ports = PortMap()
    nodes = [NatsProcess(rewrite_conf(NATS_CONFS / f"cluster-{n}.conf", tmp_path / "cluster", ports,
                                      tmp_path / "fleet" / "auth.conf")) for n in (1, 2, 3)]
    (tmp_path / "agent.toml").write_text(AGENT_TOML)
    agents: list[subprocess.Popen] = []
    try:
        for node in nodes:
            node.start()
        node1 = nodes[0]
        admin_url = _url(creds["admin"], node1.port)

        async def prepare() -> str:
            await _create_streams(admin_url, time.monotonic() + 30)
            nc = await _admin(admin_url)
            try:
                deadline = time.monotonic() + 20
                leader = await _lead_elsewhere(nc, "NETEVENTS_STATS", "netevents-1", deadline)
                await _lead_elsewhere(nc, "NETEVENTS_EVENTS", "netevents-1", deadline)
                return leader
            finally:
                await nc.close()

        leader_name = asyncio.run(prepare())
        # The leader of the stats stream (never the agents' node), or the node the agents
        # are connected to (they must carry on through another one).
        victim = nodes[int(leader_name.rsplit("-", 1)[1]) - 1] if victim == "stats-leader" else node1

        for h in HOSTS:
            env = dict(os.environ, NETEVENTS_BUS=_url(creds[h], node1.port))
            agents.append(subprocess.Popen(
                [*NETEVENTS, "agent", "--netstat", "--site", SITE, "--host", h, "--config",
                 str(tmp_path / "agent.toml"), "--duration", str(AGENT_SECONDS),
                 "--spool", str(tmp_path / f"spool-{h}")],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        asyncio.run(_wait_publishing(admin_url, time.monotonic() + AGENT_SECONDS))
        victim.kill()  # SIGKILL the leader of the stats stream, mid-run
        admin_url = _url(creds["admin"], next(n for n in nodes if n is not victim).port)
        logs = [a.communicate(timeout=60)[1] for a in agents]
        for h, a, log in zip(HOSTS, agents, logs, strict=True):
            assert a.returncode == 0, log
            password = urlsplit(_url(creds[h], node1.port)).password
            assert password not in log and f"agent.{SITE}.{h}:***@" in log  # never logged

        published: dict[tuple[str, str], dict[str, int]] = {}
        for h, log in zip(HOSTS, logs, strict=True):
            run = re.search(r"agent \S+ run (\S+): host " + h, log).group(1)
            counts = re.search(r"agent stopped: published (\{.*?\});", log).group(1)
            published[(h, run)] = ast.literal_eval(counts)

        async def collect() -> dict[tuple[str, str, str], list[int]]:
            nc = await _admin(admin_url)
            try:
                seqs: dict[tuple[str, str, str], list[int]] = defaultdict(list)
                for stream, kind in (("NETEVENTS_STATS", "netstat"), ("NETEVENTS_EVENTS", "status")):
                    for b in await _read_stream(nc, stream, f"netevents.v1.{kind}.{SITE}.*"):
                        seqs[(b.host, b.run, b.kind)].append(b.seq)
                return seqs
            finally:
                await nc.close()

        seqs = asyncio.run(collect())
        for (h, run), counts in published.items():
            assert counts.get("netstat", 0) > 10, (h, counts)
            assert "stay spooled" not in logs[HOSTS.index(h)], logs[HOSTS.index(h)]
            for kind in ("netstat", "status"):
                got = sorted(seqs.get((h, run, kind), []))
                n = counts.get(kind, 0)
                missing = sorted(set(range(1, n + 1)) - set(got))
                assert len(got) == len(set(got)), f"{h} {kind}: duplicates in the stream"
                assert not missing, (f"{h} {kind}: {len(missing)} of {n} published batches are "
                                     f"not in the stream (seqs {missing[:10]}...)")
                assert got == list(range(1, n + 1))
    finally:
        for a in agents:
            if a.poll() is None:
                a.send_signal(signal.SIGKILL)
                a.wait()
        for node in nodes:
            node.stop()

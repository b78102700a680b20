"""The collector in the agent's own namespace, through the runner, onto a MemoryBus; what it
publishes is checked against schemas/v1/ipstat.json and status carries its loss places."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path

import jsonschema
import msgpack
import pytest

from netevents.agent.ipstats import build
from netevents.agent.ipstats.collector import LOSS_PLACES
from netevents.agent.runner import AgentRunner, RunnerOptions
from netevents.memory import MemoryBus

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: the sock_diag destroy groups need CAP_NET_ADMIN")


def test_published_batches_match_the_schema_and_status_lists_own_losses():
    collector = build({"interval": 0.2, "level": "diagnostics"})
    bus = MemoryBus()

    async def main() -> None:
        runner = AgentRunner(bus, [collector], RunnerOptions(host="h1", max_wait=0.05,
                                                             status_interval=60))
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(runner.run(stop))
            async with asyncio.timeout(10):
                await collector.ready.wait()
            ls = socket.create_server(("127.0.0.1", 0))
            c = socket.create_connection(ls.getsockname())
            a, _ = ls.accept()
            c.sendall(b"z" * 50_000)
            got = 0
            while got < 50_000:
                got += len(a.recv(65536))
            async with asyncio.timeout(10):
                while collector.windows < 2:
                    await asyncio.sleep(0.05)
            stop.set()
            for s in (a, c, ls):
                s.close()

    asyncio.run(main())
    schema = json.loads((ROOT / "schemas/v1/ipstat.json").read_text())
    ipstat = [msgpack.unpackb(d, raw=False) for s, d, _ in bus.messages if ".ipstat." in s]
    assert len(ipstat) >= 2
    for msg in ipstat:
        jsonschema.validate(msg, schema)
        assert set(msg["residual"]) >= {"retrans_segs", "timeouts", "out_rsts", "estab_resets"}
        assert msg["level"] == "diagnostics" and msg["overflow"] == 0
    pairs = [e for m in ipstat for e in m["events"] if e["peer"] == "127.0.0.1"]
    assert sum(e["bytes_received"] for e in pairs) >= 50_000
    assert sum(e["bytes_acked"] for e in pairs) >= 50_000
    status = [b for b in bus.batches("status")][-1].events[0]
    assert set(LOSS_PLACES) <= set(status["lost"])
    assert status["sources"]["ipstats"]["state"] == "stopped"

"""History over real drops: a namespace host's qdisc drops (the counter source inside it, exact
against the kernel's own counter) published by an agent that has stopped before the commands
run; `tail --since` with filters finds exactly them, `query` sums them."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from netevents.agent.drops import DropsCollector
from netevents.agent.drops.counters import CounterDrops
from netevents.agent.runner import AgentRunner, RunnerOptions
from netevents.app.cli import main
from netevents.bus import connect
from tests.agent.drops.test_drops_netns import SENDER, _qdisc_drops

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces)")


async def _agent_with_qdisc_drops(a, b, prefix, url) -> int:
    b.run("tc", "qdisc", "replace", "dev", "veth-b", "root", "tbf", "rate", "1mbit",
          "burst", "1600", "limit", "3000")
    q0 = _qdisc_drops(b, "veth-b")
    counters = CounterDrops(interval=0.3, netns=b.name)
    async with connect(url, streams=True) as bus:
        runner = AgentRunner(bus, [DropsCollector([], counters)],
                             RunnerOptions(host="ns-b", site="lab", status_interval=0.5))
        stop = asyncio.Event()
        agent = asyncio.create_task(runner.run(stop))
        await asyncio.sleep(0.8)   # the counter source takes its baseline
        p = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", b.name, "python3", "-c", SENDER, f"{prefix}.1", "9", "400",
            "1000", stdout=asyncio.subprocess.PIPE)
        await p.communicate()
        dropped = _qdisc_drops(b, "veth-b") - q0
        await asyncio.sleep(1.2)   # two more samples
        stop.set()
        await agent
        await bus.flush()
    return dropped


def test_tail_and_query_since_find_the_real_drops(netns_pair, nats_url, capsys):
    a, b, prefix = netns_pair
    dropped = asyncio.run(_agent_with_qdisc_drops(a, b, prefix, nats_url))
    assert dropped > 100
    assert main(["tail", "--bus", nats_url, "--since", "2m", "--until", "now", "--json",
                 "--source", "counter", "--location", "qdisc:*", "--host", "ns-b"]) == 0
    out, _err = capsys.readouterr()
    events = [json.loads(x) for x in out.splitlines()]
    assert events and all(e["location"] == "qdisc:drops" and e["host"] == "ns-b" for e in events)
    assert sum(e["count"] for e in events) == dropped
    assert main(["tail", "--bus", nats_url, "--since", "2m", "--until", "now", "--json",
                 "--reason", "NETFILTER_DROP"]) == 0
    assert capsys.readouterr()[0] == ""
    assert main(["query", "--bus", nats_url, "--since", "2m", "--json", "--source", "counter"]) == 0
    doc = json.loads(capsys.readouterr()[0])
    (row,) = doc["drops"]
    assert row["host"] == "ns-b" and row["locations"]["qdisc:drops"] == dropped

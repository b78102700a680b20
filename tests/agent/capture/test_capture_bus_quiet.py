"""A capture on the bus host's ``lo`` does not feed on the bus's own traffic: in a namespace of
its own (nothing else on its ``lo``), a nats-server, ``netevents agent --capture lo`` publishing
to it and a consumer reading the agent's frames: no frame is published while nothing else is
sent. With ``bus_traffic = true`` the same run captures its own publishes (the test can tell)."""

from __future__ import annotations

import json
import sys

import pytest

SCRIPT = r"""
import asyncio, json, sys, tempfile
from pathlib import Path
from netevents.bus import EmbeddedServer, connect

async def main():
    tmp = Path(tempfile.mkdtemp())
    server = EmbeddedServer(tmp / "nats", port=0)
    url = await server.start()
    conf = tmp / "agent.toml"
    conf.write_text('[agent]\nhost = "quiet"\nstatus_interval = 0.5\nspool_dir = "%s"\n\n'
                    '[capture]\niface = "lo"\nhwtstamp = false\nbus_traffic = %s\n'
                    % (tmp / "spool", sys.argv[1]))
    frames = statuses = 0
    try:
        async with connect(url, streams=True) as bus:
            sub = bus.subscribe(["frame", "status"], hosts=["quiet"])
            await sub.start()
            agent = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "netevents.app", "agent", "--bus", url, "--config",
                str(conf), "--duration", "4", cwd=tmp, stderr=asyncio.subprocess.PIPE)
            while True:
                b = await sub.next(timeout=8)
                if b is None:
                    break
                if b.kind == "frame":
                    frames += len(b)
                else:
                    statuses += 1
                    if b.events[0].get("final"):
                        break
            _o, err = await agent.communicate()
            await sub.close()
    finally:
        await server.stop()
    print(json.dumps({"frames": frames, "statuses": statuses, "rc": agent.returncode,
                      "err": err.decode()[-2000:]}))

asyncio.run(main())
"""


@pytest.mark.integration
@pytest.mark.parametrize("bus_traffic", ["false", "true"])
def test_capture_on_the_bus_hosts_lo_stays_quiet(netns_pair, bus_traffic):
    a, _b, _prefix = netns_pair
    r = a.run(sys.executable, "-c", SCRIPT, bus_traffic, timeout=120)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["rc"] == 0 and out["statuses"] >= 3, out
    if bus_traffic == "false":
        assert out["frames"] == 0, out
        assert "batch too large" not in out["err"] and "spool full" not in out["err"]
    else:
        assert out["frames"] > 20, out   # its own publishes and the consumer's reads

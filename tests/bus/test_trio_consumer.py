"""A consumer written in trio reads real batches from a real server.

The trio program runs in its own interpreter: trio-asyncio installs its own asyncio event-loop
policy process-wide, which must not leak into the other tests' ``asyncio.run``.
"""

import importlib.util
import json
import subprocess
import sys

import pytest

# Only look for the packages: importing trio_asyncio here would install its loop policy.
pytestmark = pytest.mark.skipif(
    not (importlib.util.find_spec("trio") and importlib.util.find_spec("trio_asyncio")),
    reason="needs the trio extra (pip install 'netevents[trio]')")

PROGRAM = r'''
import json, sys, trio
import netevents.trio
from netevents.codec import Batch
from netevents.events import json_view

async def consumer(url):
    async with netevents.trio.open_bus(url) as bus:
        async with bus.subscribe(kinds=["drop"]) as sub:
            got = []
            with trio.fail_after(20):
                while len(got) < 2:
                    await bus.publish(Batch(kind="drop", site="s", host="trio-h", run="r",
                                            seq=1 if not got else 4, t0=1, t1=2,
                                            events=[{"count": 2, "source": "counter"}]))
                    await bus.flush()
                    b = await sub.next(1)
                    if b is not None:
                        got.append(b)
            print(json.dumps({"seqs": [b.seq for b in got], "missed": sub.missed,
                              "events": json_view(got[0].events)}))

trio.run(consumer, sys.argv[1])
'''


def test_trio_program_subscribes_and_sees_misses(nats_url):
    r = subprocess.run([sys.executable, "-c", PROGRAM, nats_url], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["seqs"] == [1, 4]
    assert out["missed"] == 2
    assert out["events"] == [{"count": 2, "source": "counter"}]

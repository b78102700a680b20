"""The README's consumer example, saved and run the way the README tells a user to."""

from __future__ import annotations

import asyncio
import re
import sys
import time

from netevents import connect
from netevents.codec import Batch
from tests.conftest import ROOT


def test_the_readme_consumer_example_runs_as_saved(nats_url, tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Write your own consumer", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "my_consumer.py" in section.split("```python", 1)[0]   # where to save it is said
    script = tmp_path / "my_consumer.py"                          # a folder of the user's own
    script.write_text(code.replace("nats://127.0.0.1:4222", nats_url))

    async def scene() -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), cwd=tmp_path, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        line = b""
        async with connect(nats_url, streams=True) as bus:
            deadline = time.monotonic() + 20
            seq = 0
            while time.monotonic() < deadline and not line:
                seq += 1
                now = time.time_ns()
                await bus.publish(Batch(kind="drop", site="local", host="web-1", run="r1", seq=seq,
                                        t0=now, t1=now, events=[{
                                            "count": 4, "source": "counter", "reason": "QDISC_DROP",
                                            "location": "eth0:pfifo_fast"}]))
                try:
                    line = await asyncio.wait_for(proc.stdout.readline(), 0.5)
                except TimeoutError:
                    continue
        proc.kill()
        _out, err = await proc.communicate()
        assert line, err.decode()
        return line.decode().strip()

    assert asyncio.run(scene()) == "web-1 4 QDISC_DROP eth0:pfifo_fast"

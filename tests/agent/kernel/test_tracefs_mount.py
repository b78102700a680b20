"""The agent mounts tracefs itself on a host where it is not mounted, and says so in status.

Runs in a private mount namespace (``unshare --mount --propagation private``) in which tracefs
is unmounted first: the host's own mounts are never touched, and everything goes with the
namespace when the child exits.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from netevents.agent.kernel import tracefs
from netevents.errors import CapabilityError

SCRIPT = textwrap.dedent("""
    import asyncio, json, subprocess
    from pathlib import Path
    for where in ("/sys/kernel/tracing", "/sys/kernel/debug"):
        while subprocess.run(["mountpoint", "-q", where]).returncode == 0:
            subprocess.run(["umount", "-l", where], check=True)
    from netevents.agent.kernel import tracefs
    from netevents.agent.drops.tracepoint import TracepointDrops
    assert tracefs._mounted_tracefs("x") is None, "tracefs still mounted in the namespace"

    class Sink:  # what the runner keeps: states by source, losses by place
        def __init__(self): self.states, self.losses = {}, {}
        def emit(self, *a, **k): return True
        def emit_batch(self, *a, **k): return True
        def lost(self, place, n): self.losses[place] = self.losses.get(place, 0) + n
        def declare_loss(self, place): self.losses.setdefault(place, 0)
        def state(self, source, state, reason=""): self.states[source] = [state, reason]

    async def main():
        src, sink = TracepointDrops(interval=0.2), Sink()
        task = asyncio.create_task(src.run(sink))
        await asyncio.wait_for(src.ready.wait(), 20)
        await asyncio.sleep(0.3)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return sink.states
    states = asyncio.run(main())
    print(json.dumps({"states": states, "note": tracefs.mounted_note,
                      "mounted": subprocess.run(["mountpoint", "-q", "/sys/kernel/tracing"]).returncode == 0}))
""")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare (util-linux) for a private mount namespace")
@pytest.mark.skipif(not os.path.isdir("/sys/kernel/tracing"),
                    reason="this kernel has no /sys/kernel/tracing (no tracefs)")
def test_agent_mounts_tracefs_and_says_so():
    import json

    p = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c",
                        SCRIPT], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["mounted"]
    assert out["note"] == "tracefs was not mounted: the agent mounted it at /sys/kernel/tracing"
    assert out["states"]["drops.tracepoint"] == ["running", out["note"]]
    assert "the agent mounted it" in p.stderr  # the log line


def test_not_mounted_and_not_root_is_one_capability_error(monkeypatch):
    monkeypatch.setattr(tracefs, "_mounted_tracefs", lambda what: None)
    monkeypatch.setattr(tracefs.os, "geteuid", lambda: 1000)
    with pytest.raises(CapabilityError, match=r"tracefs is not mounted \(mount -t tracefs nodev "
                       r"/sys/kernel/tracing, as root\); the kfree_skb tracepoint source"):
        tracefs.find_tracefs(("events/skb/kfree_skb",))
    assert tracefs.mounted_note is None

"""`netevents import FILE.pcap` and `netevents agent --drops` end to end on a real nats-server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netevents.bus import connect

ROOT = Path(__file__).resolve().parents[3]
SAMPLE = Path(__file__).resolve().parent / "testdata" / "net_dm" / "dwdump-sample.pcap"
TRACEFS = Path("/sys/kernel/tracing")
pytestmark = pytest.mark.integration


def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "netevents.app", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ), **kw)


def test_import_publishes_the_capture(nats_url):
    async def main():
        async with connect(nats_url) as bus:
            sub = bus.subscribe(["drop"], hosts=["old-host"])
            await sub.start()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "netevents.app", "import", str(SAMPLE), "--bus", nats_url,
                "--host", "old-host", "--site", "lab", cwd=ROOT,
                env=dict(os.environ),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            assert "25 drops" in out.decode() and "tail drops in the capture 42" in out.decode()
            batch = await sub.next(timeout=5)
            assert batch is not None and batch.site == "lab"
            reasons = {e["reason"]: e["count"] for e in batch.rows() if "payload" in e}
            assert reasons == {"NETFILTER_DROP": 1, "NO_SOCKET": 1, "NOT_SPECIFIED": 1}
            await sub.close()
    asyncio.run(main())


def test_import_of_a_bad_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"\xd4\xc3\xb2\xa1" + b"\x00" * 30)
    proc = _cli("import", str(bad), "--bus", "nats://127.0.0.1:9")
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 1
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("netevents import: error:") and "pcap" in lines[0]


@pytest.mark.skipif(os.geteuid() != 0 or not (TRACEFS / "events/skb/kfree_skb").is_dir(),
                    reason="needs root and tracefs with skb:kfree_skb")
def test_agent_drops_flag_runs_and_sigterm_cleans_up(nats_url, tmp_path):
    # source = "auto" would pick the eBPF program where it loads; this test is about the
    # tracefs instance, so it names the tracepoint.
    config = tmp_path / "agent.toml"
    config.write_text('[drops]\nsource = "tracepoint"\n')

    async def main():
        async with connect(nats_url) as bus:
            sub = bus.subscribe(["status"], hosts=["cli-drops"])
            await sub.start()
            proc = _cli("agent", "--drops", "--bus", nats_url, "--host", "cli-drops",
                        "--status-interval", "0.5", "--config", str(config))
            try:
                status = None
                async with asyncio.timeout(15):
                    while status is None or "drops.tracepoint" not in status["sources"]:
                        b = await sub.next(timeout=10)
                        assert b is not None, "no status from the agent"
                        status = b.events[0]
                assert status["sources"]["drops.tracepoint"]["state"] == "running"
                assert status["sources"]["drops.counter"]["state"] == "running"
                mine = list((TRACEFS / "instances").glob(f"netevents-{proc.pid}-*"))
                assert len(mine) == 1
                proc.send_signal(signal.SIGTERM)
                await asyncio.get_running_loop().run_in_executor(None, proc.wait, 15)
                # The final status arrives after the instance is gone.
                while True:
                    b = await sub.next(timeout=5)
                    assert b is not None, "no final status"
                    if b.events[0]["final"]:
                        break
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            assert proc.returncode == 0, proc.stderr.read()
            assert not mine[0].exists()
            err = proc.stderr.read()
            # Exactly one line names the missing drop monitor.
            assert sum("CONFIG_NET_DROP_MONITOR" in ln for ln in err.splitlines()) <= 1
            await sub.close()
    t = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - t < 30

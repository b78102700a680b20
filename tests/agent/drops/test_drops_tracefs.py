"""The private tracefs instance: created per agent, never the global buffer, gone after exit,
also when the agent is killed with SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from netevents.agent.drops.tracepoint import KfreeSkbInstance
from netevents.agent.kernel.tracefs import sweep_stale
from netevents.errors import CapabilityError, ConfigError

ROOT = Path(__file__).resolve().parents[3]
TRACEFS = Path("/sys/kernel/tracing")
needs_tracefs = pytest.mark.skipif(
    os.geteuid() != 0 or not (TRACEFS / "events/skb/kfree_skb").is_dir(),
    reason="needs root and tracefs with skb:kfree_skb")

AGENT = textwrap.dedent("""
    import asyncio, signal, sys
    from netevents.agent.drops import DropsCollector
    from netevents.agent.drops.tracepoint import TracepointDrops
    from netevents.agent.runner import AgentRunner, RunnerOptions
    from netevents.memory import MemoryBus

    graceful = sys.argv[1] == "graceful"

    async def main():
        bus = MemoryBus()
        tp = TracepointDrops(interval=0.2)
        runner = AgentRunner(bus, [DropsCollector([tp], None)], RunnerOptions(host="t"))
        stop = asyncio.Event()
        if graceful:   # what the agent CLI does: SIGTERM is a clean shutdown
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        task = asyncio.create_task(runner.run(stop))
        await tp.ready.wait()
        print(tp.instance.path, flush=True)
        await task
        final = [b for b in bus.batches("status") if b.events[0]["final"]]
        print("final-status", len(final), flush=True)

    asyncio.run(main())
""")


@needs_tracefs
@pytest.mark.parametrize("mode", ["graceful", "no-handler"])
def test_sigterm_removes_the_instance(mode):
    proc = subprocess.Popen([sys.executable, "-c", AGENT, mode], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith(str(TRACEFS / "instances" / f"netevents-{proc.pid}-")), \
            (line, proc.stderr.read() if not line else "")
        inst = Path(line)
        assert inst.is_dir()
        assert (inst / "events/skb/kfree_skb/enable").read_text().strip() == "1"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not inst.exists(), f"{inst} left behind ({mode}); stderr: {err[-500:]}"
    if mode == "graceful":
        assert proc.returncode == 0 and "final-status 1" in out, err[-1000:]
    else:
        assert proc.returncode == -signal.SIGTERM


@needs_tracefs
def test_instance_is_private_and_filter_runs_in_the_kernel():
    global_enable = (TRACEFS / "events/skb/kfree_skb/enable").read_text()
    inst = KfreeSkbInstance.create(buffer_kb=64, exclude_reasons=frozenset({"NOT_SPECIFIED"}))
    try:
        assert inst.path.parent == TRACEFS / "instances"
        assert inst.filter == "reason != 2"
        assert (inst.path / "events/skb/kfree_skb/filter").read_text().strip() == "reason != 2"
        assert (TRACEFS / "events/skb/kfree_skb/enable").read_text() == global_enable
    finally:
        inst.remove()
    assert not inst.path.exists()
    inst.remove()  # idempotent


@needs_tracefs
def test_unknown_exclude_reason_is_a_config_error():
    with pytest.raises(ConfigError, match="NO_SUCH_REASON"):
        KfreeSkbInstance.create(buffer_kb=64, exclude_reasons=frozenset({"NO_SUCH_REASON"}))
    left = [p for p in (TRACEFS / "instances").glob(f"netevents-{os.getpid()}-*")]
    assert left == []


@needs_tracefs
def test_stale_instances_of_dead_agents_are_swept():
    proc = subprocess.Popen(["sleep", "0"])
    proc.wait()
    stale = TRACEFS / "instances" / f"netevents-{proc.pid}-deadbeef"
    stale.mkdir()
    try:
        assert stale.name in sweep_stale(TRACEFS)
        assert not stale.exists()
    finally:
        if stale.exists():
            stale.rmdir()


def test_missing_tracefs_is_one_clear_capability_error(tmp_path):
    with pytest.raises(CapabilityError) as info:
        KfreeSkbInstance.create(tracefs=tmp_path)
    assert "kfree_skb" in str(info.value)


def test_without_root_the_error_names_the_capability(tmp_path):
    if os.geteuid() == 0:
        # Simulate: a tracefs-like tree whose instances directory we cannot write.
        (tmp_path / "instances").mkdir()
        (tmp_path / "events/skb/kfree_skb").mkdir(parents=True)
        os.chmod(tmp_path / "instances", 0o500)
        code = textwrap.dedent(f"""
            import os
            import netevents.agent.kernel.tracefs as tracefs
            from netevents.errors import CapabilityError
            os.setgid(65534); os.setuid(65534)   # imports first: pyenv is root-only here
            tracefs.TRACEFS_CANDIDATES = ({str(tmp_path)!r},)
            try:
                tracefs.find_tracefs()
            except CapabilityError as e:
                print(e.capability, "|", e)
        """)
        os.chmod(tmp_path, 0o755)
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                             text=True)
        assert out.stdout.startswith("CAP_SYS_ADMIN |"), out.stderr[-800:]
        assert "tracefs" in out.stdout


class _Sink:
    def __init__(self):
        self.events, self.losses = [], {}

    def emit_batch(self, kind, events, **kw):
        self.events.extend(events)
        return True

    def lost(self, place, n):
        self.losses[place] = self.losses.get(place, 0) + n

    def declare_loss(self, place):
        self.losses.setdefault(place, 0)


@needs_tracefs
@pytest.mark.parametrize("exclude", [frozenset(), frozenset({"NO_SOCKET"})])
def test_excluded_reasons_are_filtered_by_the_kernel(exclude):
    import asyncio
    import socket

    from netevents.agent.drops.tracepoint import TracepointDrops

    async def main() -> TracepointDrops:
        tp = TracepointDrops(interval=0.2, exclude_reasons=exclude)
        sink = _Sink()
        task = asyncio.create_task(tp.run(sink))
        await tp.ready.wait()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(50):
            s.sendto(b"x", ("127.0.0.1", 9))   # closed port on loopback: NO_SOCKET
        s.close()
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        tp.sink = sink
        return tp

    tp = asyncio.run(main())
    no_socket = sum(e["count"] for e in tp.sink.events if e["reason"] == "NO_SOCKET")
    if exclude:
        assert no_socket == 0
        num = {v: k for k, v in tp.instance.reasons.items()}["NO_SOCKET"]
        assert tp.instance.filter == f"reason != {num}"
        parsed_out = tp.raw.excluded if tp.raw is not None else tp.parser.excluded
        assert parsed_out == 0   # nothing reached the agent to be dropped there
    else:
        assert no_socket >= 50
    assert not tp.instance.path.exists()

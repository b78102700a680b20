"""Multi-queue capture: N worker processes in one PACKET_FANOUT group per interface.

Python runs one core per process, so rates beyond one core come from ``PACKET_FANOUT``: every
worker process opens its own ring on the same interface and joins the same fanout group (one
group id per capture), and the kernel spreads the frames (by flow hash, cpu, or rx queue;
optionally rolling over to a member whose ring has room). Each worker is an agent of its
own, assembled by :mod:`netevents.agent.compose` from the same ``[agent]`` options as its parent (status
interval, batching, queues, spool, credentials), with one
:class:`~netevents.agent.capture.collector.RingCapture` and its own bus connection, so its frames, gaps
and status (with its own run id and its own loss counters) go straight to the bus.

:class:`CaptureSupervisor` is the collector the agent runs: it owns the configuration, installs
the capture-only tc drop if asked, starts the workers (``python -m netevents.agent.capture.workers
CONFIG_JSON``), restarts a worker that dies (with backoff, counting it at
``capture.worker_exits``), does not restart one that cannot run here (exit code 3, the reason
on its stderr), and stops them all (SIGTERM, then SIGKILL) when cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from typing import Any

from netevents.bus import default_url
from netevents.errors import BusError, CapabilityError

from ..config import AgentConfig, section_to
from .config import CaptureConfig, capture_config, ring_capture

log = logging.getLogger("netevents.agent.capture")

EXIT_UNAVAILABLE = 3


def fanout_group_for(index: int) -> int:
    """A fanout group id for this capture's interface ``index``: unique per agent process."""
    return (os.getpid() * 7 + index) & 0xFFFF


class CaptureSupervisor:
    """Collector that runs the capture in worker processes (one per interface and worker)."""

    name = "capture"

    def __init__(self, cfg: CaptureConfig, agent_cfg: AgentConfig | None = None) -> None:
        self.cfg = cfg
        self.agent = agent_cfg if agent_cfg is not None else AgentConfig()
        self.ifaces = cfg.interfaces
        self.workers = cfg.worker_count
        self.restart_delay = 1.0
        self.max_restart_delay = 30.0
        self.procs: dict[tuple[str, int], asyncio.subprocess.Process] = {}
        self.exits = 0
        self.unavailable: dict[tuple[str, int], str] = {}
        self.started = asyncio.Event()
        self.reports: dict[tuple[str, int], list[dict]] = {}
        """What each worker process said it published and lost when it ended (one per run)."""

    def worker_totals(self) -> dict[str, Any]:
        """The workers' runs, the events they published per kind and what they lost (nonzero
        places, summed): for the agent's exit line and its status."""
        runs: list[str] = []
        published: dict[str, int] = {}
        lost: dict[str, int] = {}
        for reports in self.reports.values():
            for r in reports:
                runs.append(r.get("run", "?"))
                for k, v in (r.get("events") or {}).items():
                    published[k] = published.get(k, 0) + v
                for k, v in (r.get("lost") or {}).items():
                    if v:
                        lost[k] = lost.get(k, 0) + v
        return {"runs": runs, "events": published, "lost": lost}

    def _report(self, sink, key: tuple[str, int], line: str) -> None:
        try:
            doc = json.loads(line)
        except ValueError:
            return
        if isinstance(doc, dict) and "run" in doc:
            self.reports.setdefault(key, []).append(doc)
            t = self.worker_totals()
            sink.state("capture.workers", "running",
                       f"{len(t['runs'])} worker runs ended: published {t['events']}, "
                       f"lost {t['lost'] or 'nothing'}")

    def worker_config(self, iface: str, index: int, worker: int) -> dict:
        """What one worker process is handed: its ring, the capture section and every
        ``[agent]`` option but the bus URL (which may hold a password: it goes in the
        environment, readable by the same user only, not on the command line)."""
        group = self.cfg.fanout_group
        group = (group + index) & 0xFFFF if group is not None else fanout_group_for(index)
        agent = {f: getattr(self.agent, f) for f in self.agent.__dataclass_fields__
                 if f not in ("bus", "sources")}
        return {"iface": iface, "worker": worker, "workers": self.workers, "parent": os.getpid(),
                "fanout_group": group, "agent": agent,
                "capture": {**self.cfg.section(), "iface": iface, "ifaces": [], "workers": 1},
                "spool": str(self.agent.spool_path() / f"capture-{iface}-{worker}")}

    async def run(self, sink) -> None:
        sink.declare_loss("capture.worker_exits")
        drops = []
        if self.cfg.capture_only:
            from .tcdrop import IngressDrop

            for iface in self.ifaces:
                d = IngressDrop(iface, self.cfg.netns)
                d.install()  # raises CapabilityError: then nothing else starts
                drops.append(d)
        try:
            async with asyncio.TaskGroup() as tg:
                for index, iface in enumerate(self.ifaces):
                    for w in range(self.workers):
                        tg.create_task(self._keep(sink, self.worker_config(iface, index, w)))
                self.started.set()
            if self.unavailable:
                # every worker returned (the others never do): none of them can run here
                raise CapabilityError("capture", next(iter(self.unavailable.values())))
        finally:
            for d in drops:
                d.remove()

    async def _keep(self, sink, cfg: dict) -> None:
        key = (cfg["iface"], cfg["worker"])
        delay = self.restart_delay
        while True:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "netevents.agent.capture.workers", json.dumps(cfg),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=_project_root(),
                env={**os.environ, "NETEVENTS_BUS": self.agent.bus or default_url()})
            self.procs[key] = proc
            last = ""

            async def report(p: asyncio.subprocess.Process = proc) -> None:
                # The worker's last stdout line: what it published and lost (JSON).
                assert p.stdout is not None
                async for raw in p.stdout:
                    self._report(sink, key, raw.decode(errors="replace").strip())

            try:
                reader = asyncio.create_task(report())
                # The worker's stderr lines are passed on; the last one says why it ended.
                assert proc.stderr is not None
                async for raw in proc.stderr:
                    line = raw.decode(errors="replace").rstrip()
                    if line:
                        last = line
                        log.warning("capture %s worker %d: %s", key[0], key[1], line)
                code = await proc.wait()
                await reader
            except asyncio.CancelledError:
                await _stop(proc)
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                    async with asyncio.timeout(2):
                        await reader   # its report, once it has exited
                raise
            text = last
            if code == EXIT_UNAVAILABLE:
                reason = text.splitlines()[-1] if text else "unavailable"
                self.unavailable[key] = reason
                log.warning("capture %s worker %d: %s", *key, reason)
                total = len(self.ifaces) * self.workers
                if len(self.unavailable) < total:
                    sink.state("capture", "running", f"{len(self.unavailable)} of {total} "
                                                     f"workers unavailable: {reason}")
                return
            self.exits += 1
            sink.lost("capture.worker_exits", 1)
            log.warning("capture %s worker %d exited with %s; restarting in %.0fs%s", *key, code,
                        delay, f": {text.splitlines()[-1]}" if text else "")
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_restart_delay)


async def _stop(proc: asyncio.subprocess.Process, grace: float = 5.0) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(grace):
            await proc.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


def _project_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---------------------------------------------------------------------------------------------
# The worker process

class _EndsTheWorker:
    """The worker's one collector: when it ends (it could not set its ring up, or failed),
    the worker has nothing left to do and stops."""

    name = "capture"

    def __init__(self, capture: Any, stop: asyncio.Event) -> None:
        self.capture = capture
        self.stop = stop

    async def run(self, sink) -> None:
        try:
            await self.capture.run(sink)
        finally:
            self.stop.set()


PR_SET_PDEATHSIG = 1  # include/uapi/linux/prctl.h


def die_with_parent(parent: int | None) -> bool:
    """Ask the kernel for SIGTERM when the agent that started us dies (so an agent killed with
    SIGKILL leaves no worker capturing and publishing as its host); False if it is already
    gone (we were re-parented before the request took effect)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    return parent is None or os.getppid() == parent


async def worker_main(spec: dict) -> int:
    from ..compose import connect_agent, run_agent
    from .ring import preflight

    if not die_with_parent(spec.get("parent")):
        print("the agent that started this worker is gone", file=sys.stderr)
        return 1

    agent = section_to(AgentConfig, spec["agent"], "agent").validate()
    cap = ring_capture(spec["iface"], capture_config(spec["capture"]), worker=spec["worker"],
                       fanout_group=spec["fanout_group"] if spec["workers"] > 1 else None)
    try:
        preflight(cap.opts.ring)  # a capture that cannot run here must not wait for the bus
    except CapabilityError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_UNAVAILABLE
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with connect_agent(agent, f"netevents-capture-{spec['iface']}-{spec['worker']}") as bus:
            runner = await run_agent(agent, [_EndsTheWorker(cap, stop)], bus, stop,
                                     control=False, spool_dir=spec["spool"])
    except BusError as exc:
        print(f"capture worker {spec['worker']}: bus: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"run": runner.run_id, "events": dict(runner.published_events),
                      "batches": dict(runner.published),
                      "lost": {k: v for k, v in runner.status_event().lost.items() if v}}),
          flush=True)
    state = runner.sources.get("capture", {})
    if state.get("state") in ("unavailable", "failed"):
        print(state.get("reason", "unavailable"), file=sys.stderr)
        return EXIT_UNAVAILABLE
    if cap.invariant_error:
        print(f"capture worker {spec['worker']}: {cap.invariant_error}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    sys.exit(asyncio.run(worker_main(json.loads(sys.argv[1]))))

"""Multi-queue capture: N worker processes in one PACKET_FANOUT group per interface.

Python runs one core per process, so rates beyond one core come from ``PACKET_FANOUT``: every
worker process opens its own ring on the same interface and joins the same fanout group (one
group id per capture), and the kernel spreads the frames (by flow hash, cpu, or rx queue;
optionally rolling over to a member whose ring has room). Each worker runs its own
:class:`~agents.runner.AgentRunner` with one :class:`~agents.capture.collector.RingCapture`
and its own bus connection, so its frames, gaps and status (with its own run id and its own
loss counters) go straight to the bus.

:class:`CaptureSupervisor` is the collector the agent runs: it owns the configuration, installs
the capture-only tc drop if asked, starts the workers (``python -m agents.capture.workers
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

from netevents.errors import CapabilityError

log = logging.getLogger("netevents.agent.capture")

EXIT_UNAVAILABLE = 3


def fanout_group_for(index: int) -> int:
    """A fanout group id for this capture's interface ``index``: unique per agent process."""
    return (os.getpid() * 7 + index) & 0xFFFF


class CaptureSupervisor:
    """Collector that runs the capture in worker processes (one per interface and worker)."""

    name = "capture"

    def __init__(self, ifaces: list[str], workers: int, section: dict, agent_cfg: Any = None,
                 *, bus_url: str | None = None, host: str | None = None,
                 site: str | None = None) -> None:
        from netevents.bus import default_url

        from . import options_from_section

        self.ifaces = ifaces
        self.workers = workers
        self.section = {k: v for k, v in section.items() if k not in ("iface", "ifaces", "workers")}
        self.opts = options_from_section({**self.section, "iface": ifaces[0]})[2]
        self.bus_url = bus_url or getattr(agent_cfg, "bus", None) or default_url()
        self.host = host or getattr(agent_cfg, "host", None) or "localhost"
        self.site = site or getattr(agent_cfg, "site", None) or "local"
        # The agent's bus credentials (files; --creds, --tls-* or [agent]) for the workers'
        # own connections; credentials in the environment reach them anyway.
        self.credentials = {k: getattr(agent_cfg, k, None)
                            for k in ("creds", "nkey_seed", "tls_ca", "tls_cert", "tls_key")}
        # Each worker spools on its own while the bus is away (agents/spool.py).
        self.spool_base = agent_cfg.spool_path() if hasattr(agent_cfg, "spool_path") else None
        self.spool_max_mb = getattr(agent_cfg, "spool_max_mb", 256.0)
        self.restart_delay = 1.0
        self.max_restart_delay = 30.0
        self.procs: dict[tuple[str, int], asyncio.subprocess.Process] = {}
        self.exits = 0
        self.unavailable: dict[tuple[str, int], str] = {}
        self.started = asyncio.Event()

    def worker_config(self, iface: str, index: int, worker: int) -> dict:
        group = self.section.get("fanout_group")
        group = (int(group) + index) & 0xFFFF if group is not None else fanout_group_for(index)
        return {"iface": iface, "worker": worker, "workers": self.workers,
                "fanout_group": group, "section": self.section, "bus": self.bus_url,
                "host": self.host, "site": self.site, "credentials": self.credentials,
                "spool": str(self.spool_base / f"capture-{iface}-{worker}") if self.spool_base else None,
                "spool_max_mb": self.spool_max_mb}

    async def run(self, sink) -> None:
        sink.declare_loss("capture.worker_exits")
        drops = []
        if self.opts["capture_only"]:
            from .tcdrop import IngressDrop

            for iface in self.ifaces:
                d = IngressDrop(iface, self.opts["netns"])
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
            # The bus URL may hold a password: it goes in the environment (readable by the
            # same user only), not on the command line (readable by everyone in /proc).
            argv_cfg = {k: v for k, v in cfg.items() if k != "bus"}
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agents.capture.workers", json.dumps(argv_cfg),
                stderr=asyncio.subprocess.PIPE, cwd=_project_root(),
                env={**os.environ, "NETEVENTS_BUS": cfg["bus"]})
            self.procs[key] = proc
            last = ""
            try:
                # The worker's stderr lines are passed on; the last one says why it ended.
                assert proc.stderr is not None
                async for raw in proc.stderr:
                    line = raw.decode(errors="replace").rstrip()
                    if line:
                        last = line
                        log.warning("capture %s worker %d: %s", key[0], key[1], line)
                code = await proc.wait()
            except asyncio.CancelledError:
                await _stop(proc)
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

async def worker_main(cfg: dict) -> int:
    from agents.runner import AgentRunner, RunnerOptions
    from netevents.bus import Credentials, connect
    from netevents.errors import BusError

    from . import options_from_section, ring_capture
    from .ring import preflight

    section = {**cfg["section"], "iface": cfg["iface"]}
    opts = options_from_section(section)[2]
    cap = ring_capture(cfg["iface"], opts, worker=cfg["worker"],
                       fanout_group=cfg["fanout_group"] if cfg["workers"] > 1 else None)
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
        async with connect(cfg.get("bus"), name=f"netevents-capture-{cfg['iface']}-{cfg['worker']}",
                           credentials=Credentials(**(cfg.get("credentials") or {}))) as bus:
            publisher: Any = bus
            if cfg.get("spool"):
                from agents.spool import ReliablePublisher, Spool

                publisher = ReliablePublisher(bus, Spool(
                    cfg["spool"], max_bytes=int(cfg.get("spool_max_mb", 256.0) * (1 << 20))))
            runner = AgentRunner(publisher, [cap], RunnerOptions(host=cfg["host"], site=cfg["site"]))

            async def watch() -> None:
                # A ring that cannot be set up ends the worker with EXIT_UNAVAILABLE.
                while cap.ring is None and not stop.is_set():
                    state = runner.sources.get("capture", {})
                    if state.get("state") in ("unavailable", "failed"):
                        stop.set()
                        return
                    await asyncio.sleep(0.05)

            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(watch())
                    await runner.run(stop)
            finally:
                if publisher is not bus:
                    await publisher.close()
    except BusError as exc:
        print(f"capture worker {cfg['worker']}: bus: {exc}", file=sys.stderr)
        return 1
    state = runner.sources.get("capture", {})
    if state.get("state") in ("unavailable", "failed"):
        print(state.get("reason", "unavailable"), file=sys.stderr)
        return EXIT_UNAVAILABLE
    if cap.invariant_error:
        print(f"capture worker {cfg['worker']}: {cap.invariant_error}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    sys.exit(asyncio.run(worker_main(json.loads(sys.argv[1]))))

"""The composition root of the agent: the one place that turns an :class:`AgentConfig` into a
running agent.

The ``netevents agent`` and ``netevents up`` commands and every capture worker process build
their agent here, so every ``[agent]`` option (status interval, batch size and wait, queue size,
spool size and policy, in-flight bound, credentials) reaches every source the same way:

    collectors = build_collectors(cfg)             # each source validates its own section
    async with connect_agent(cfg, name) as bus:    # the bus with the agent's credentials
        runner = await run_agent(cfg, collectors, bus, stop)

Capture workers pass ``control=False`` (only the agent process answers control requests) and a
spool directory of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from netevents import __version__
from netevents.bus import Bus, Credentials, connect, redact_url

from . import SOURCES
from .addresses import OwnAddresses, namespaces_of
from .base import Collector
from .config import AgentConfig
from .control import ControlServer
from .runner import AgentRunner, RunnerOptions
from .spool import ReliablePublisher, Spool

log = logging.getLogger("netevents.agent")

def build_collectors(cfg: AgentConfig) -> list[Collector]:
    """Instantiate the enabled sources through the ``netevents.agent.SOURCES`` registry.

    Raises:
        ConfigError: from a source's own validation (naming ``[section] key``).
    """
    collectors = []
    for name, section in cfg.sources.items():
        module_name, _, func = SOURCES[name].partition(":")
        build = getattr(importlib.import_module(module_name), func)
        collectors.append(build(section, cfg))
    return collectors


def runner_options(cfg: AgentConfig) -> RunnerOptions:
    """The runner's options: identity, batching, queues and status cadence from ``[agent]``."""
    return RunnerOptions(site=cfg.site, host=cfg.host, max_events=cfg.batch_max_events,
                         max_wait=cfg.batch_max_wait, queue_size=cfg.queue_size,
                         status_interval=cfg.status_interval)


def credentials(cfg: AgentConfig) -> Credentials:
    """The agent's bus credentials (files named in ``[agent]`` or by the command line)."""
    return Credentials(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(Credentials)})


@contextlib.asynccontextmanager
async def connect_agent(cfg: AgentConfig, name: str) -> AsyncIterator[Bus]:
    """The agent's bus connection (``[agent] bus`` or ``$NETEVENTS_BUS``, its credentials)."""
    async with connect(cfg.bus, name=name, credentials=credentials(cfg)) as bus:
        yield bus


def control_server(cfg: AgentConfig, bus: Bus, collectors: list[Collector]) -> ControlServer:
    """The agent's control server, with the commands its sources offer (``control_commands``)."""
    control = ControlServer(bus, cfg.site, cfg.host, trusted_keys=cfg.operator_keys)
    for c in collectors:
        control.register_source(c)
    return control


async def run_agent(cfg: AgentConfig, collectors: list[Collector], bus: Bus,
                    stop: asyncio.Event, *, control: bool = True,
                    spool_dir: str | Path | None = None) -> AgentRunner:
    """Run ``collectors`` publishing on ``bus`` until ``stop``; returns the runner.

    Batches go out with JetStream acks, in order; while the bus is away they wait in the
    on-disk spool (``spool_dir``, default ``cfg.spool_path()``), which a restarted agent
    replays first.
    """
    spool = Spool(Path(spool_dir) if spool_dir else cfg.spool_path(),
                  max_bytes=int(cfg.spool_max_mb * (1 << 20)), policy=cfg.spool_policy)
    if len(spool):
        log.info("replaying %d spooled batches from %s", len(spool), spool.dir)
    publisher = ReliablePublisher(bus, spool, max_inflight=cfg.max_inflight)
    if control and cfg.addresses:  # the agent process says which addresses are its own
        collectors = [*collectors, OwnAddresses(namespaces_of(cfg.sources.values()))]
    runner = AgentRunner(publisher, collectors, runner_options(cfg))
    if control:
        log.info("agent %s run %s: host %s site %s, sources %s, bus %s", __version__,
                 runner.run_id, cfg.host, cfg.site, ", ".join(c.name for c in collectors),
                 redact_url(bus.url))
    try:
        if control:
            async with control_server(cfg, bus, collectors):
                await runner.run(stop)
        else:
            await runner.run(stop)
    finally:
        await publisher.close()
    if len(spool):
        log.warning("%d batches stay spooled in %s for the next run", len(spool), spool.dir)
    return runner

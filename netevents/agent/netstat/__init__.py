"""netstat: host-wide counter deltas with nstat semantics.

Sources, each read once per interval in a worker thread (never on the event loop):
/proc/net/snmp, /proc/net/netstat, /proc/net/snmp6, /proc/net/softnet_stat, link stats64
(rtnetlink) and qdisc queue stats (rtnetlink), through pyroute2.

One ``netstat`` event per (group, scope) whose counters changed; the first sample of each is a
``baseline`` event with the absolute values. See README.md and sample.toml beside this file.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netevents.errors import ConfigError
from netevents.events import NetstatEvent

from ..config import section_to
from .parse import CounterDeltas, Sample, parse_snmp, parse_snmp6, parse_softnet

log = logging.getLogger("netevents.agent.netstat")

PROC_FILES = {
    "snmp": parse_snmp,
    "netstat": parse_snmp,
    "snmp6": parse_snmp6,
    "softnet_stat": parse_softnet,
}

# struct gnet_stats_queue (include/uapi/linux/gen_stats.h): drops/requeues/overlimits are __u32.
QDISC_COUNTERS = ("drops", "requeues", "overlimits")
QDISC_GAUGES = ("qlen", "backlog")


@dataclass(slots=True)
class NetstatConfig:
    interval: float = 1.0
    proc: str = "/proc"
    links: bool = True
    qdiscs: bool = True
    all: bool = False
    """Publish every (group, scope) every interval, also when nothing changed."""

    def __post_init__(self) -> None:
        if not 0.05 <= self.interval <= 3600:
            raise ConfigError(f"[netstat] interval must be 0.05-3600 seconds, got {self.interval}")


def read_proc(proc: str, missing: set[str]) -> list[Sample]:
    samples: list[Sample] = []
    for name, parser in PROC_FILES.items():
        path = Path(proc, "net", name)
        try:
            text = path.read_text()
        except OSError as exc:
            if name not in missing:
                missing.add(name)
                log.warning("netstat: %s unreadable (%s); carrying on without it", path, exc.strerror)
            continue
        try:
            samples.extend(parser(text))
        except ValueError as exc:
            log.warning("netstat: cannot parse %s: %s", path, exc)
    return samples


def read_rtnl(ipr: Any, links: bool, qdiscs: bool) -> list[Sample]:
    samples: list[Sample] = []
    names: dict[int, str] = {}
    for msg in ipr.get_links():
        name = msg.get("IFLA_IFNAME") or str(msg["index"])
        names[msg["index"]] = name
        stats = msg.get("IFLA_STATS64")
        if links and stats is not None:
            samples.append(Sample("link", name, {k: int(v) for k, v in dict(stats).items()}))
    if qdiscs:
        for msg in ipr.get_qdiscs():
            st2 = msg.get("TCA_STATS2")
            queue = st2.get("TCA_STATS_QUEUE") if st2 is not None else None
            if queue is None:
                continue
            h = msg["handle"]
            scope = f"{names.get(msg['index'], msg['index'])}:{h >> 16:x}:{h & 0xffff:x}"
            samples.append(Sample("qdisc", scope,
                                  {k: int(queue[k]) for k in QDISC_COUNTERS},
                                  {k: int(queue[k]) for k in QDISC_GAUGES}, bits=32))
    return samples


class NetstatCollector:
    name = "netstat"

    def __init__(self, cfg: NetstatConfig | None = None) -> None:
        self.cfg = cfg or NetstatConfig()
        self.deltas = CounterDeltas()
        self._missing: set[str] = set()
        self._ipr: Any = None
        self._rtnl_failed = False

    def read(self) -> list[Sample]:
        """Read every source once (blocking: runs in the collector's worker thread)."""
        samples = read_proc(self.cfg.proc, self._missing)
        if (self.cfg.links or self.cfg.qdiscs) and not self._rtnl_failed:
            try:
                if self._ipr is None:
                    from pyroute2 import IPRoute

                    self._ipr = IPRoute()
                samples.extend(read_rtnl(self._ipr, self.cfg.links, self.cfg.qdiscs))
            except Exception as exc:  # pyroute2 raises a wide range; none may stop the files
                self._rtnl_failed = True
                log.warning("netstat: link/qdisc stats unavailable (%s); carrying on with /proc", exc)
        return samples

    def events(self, samples: list[Sample], now_ns: int) -> list[NetstatEvent]:
        """Sans-IO step: samples -> events (baseline, changed, or all with ``all``)."""
        out = []
        for s in samples:
            d = self.deltas.update(s, now_ns)
            if d.baseline is not None or d.deltas or d.flags or self.cfg.all:
                out.append(NetstatEvent(group=s.group, scope=s.scope, interval_ns=d.interval_ns,
                                        deltas=d.deltas, gauges=d.gauges,
                                        values=d.baseline or {}, flags=d.flags))
        self.deltas.forget_missing({(s.group, s.scope) for s in samples})
        return out

    async def run(self, sink: Any) -> None:
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(1, thread_name_prefix="netstat")
        prev = time.time_ns()
        try:
            next_tick = loop.time()
            while True:
                samples = await loop.run_in_executor(executor, self.read)
                now = time.time_ns()
                for event in self.events(samples, now):
                    sink.emit("netstat", event, t0=prev, t1=now)
                prev = now
                next_tick += self.cfg.interval
                await asyncio.sleep(max(0.0, next_tick - loop.time()))
        finally:
            if self._ipr is not None:
                executor.submit(self._ipr.close)
            executor.shutdown(wait=False)


def build(section: dict[str, Any], agent_cfg: Any = None) -> NetstatCollector:
    return NetstatCollector(section_to(NetstatConfig, section, "netstat"))

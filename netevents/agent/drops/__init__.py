"""Drop events: where (location) and why (skb_drop_reason) the kernel drops packets.

    aggregate.py    sans-IO DropAggregator: per window, one event per drop signature; packets
                    (payload + orig_len) kept up to a cap in packet mode, the overflow counted
    tracepoint.py   skb:kfree_skb through a private tracefs instance
    ebpf/           skb:kfree_skb through a BPF program: flow + netns, aggregated in the kernel
    rawtrace.py     sans-IO walk of the instance's binary ring pages (the default reader)
    netdm.py        NET_DM generic netlink (dropwatch's interface): decoder + collector
    dwdump.py       dropwatch's dwdump pcap captures -> drop events (``netevents import``)
    counters.py     counter-derived drops (link, qdisc, softnet, UDP buffer errors)

:func:`build` returns :class:`DropsCollector`: with ``source = "auto"`` the eBPF program if it
loads, else NET_DM if the kernel has it, else the tracepoint; the counter source alongside any of them (it is the only one on hosts where neither runs).
Each source that cannot run says why in one line and in ``status.sources``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from netevents.errors import CapabilityError, ConfigError

log = logging.getLogger("netevents.agent.drops")

_KEYS = {"sources", "interval", "exclude_reasons", "buffer_kb", "mode", "trunc_len", "queue_len",
         "packet_cap", "packet_reasons", "stats_interval", "read_budget", "counter_interval",
         "netns", "reader", "source", "counter", "filter", "sample_every", "ring_kb",
         "map_entries", "netns_refresh", "program", "tick"}
# source = "auto": the first of these that can run on the host. eBPF first: it knows the flow
# and the namespace of every software drop; NET_DM (the same drops, plus hardware traps of
# devlink-capable switch ASICs: ask for source = "netdm" there) where eBPF cannot load.
AUTO_ORDER = ("ebpf", "netdm", "tracepoint")
EVENT_SOURCES = ("auto", *AUTO_ORDER)


async def _mark_running(sink: Any, name: str, ready: asyncio.Event) -> None:
    await ready.wait()
    sink.state(name, "running")


class DropsCollector:
    """eBPF -> NET_DM -> tracepoint fallback, plus counter-derived drops, as one collector."""

    name = "drops"

    def __init__(self, event_sources: list[Any], counter_source: Any | None) -> None:
        self.event_sources = event_sources   # tried in order; the first that runs is used
        self.counter_source = counter_source
        self.active: Any | None = None

    async def _events(self, sink: Any) -> bool:
        for src in self.event_sources:
            # "running" once the source says it is attached (its ``ready``), not while it is
            # still loading: a status in between says "starting", never a false "running".
            ready = getattr(src, "ready", None)
            sink.state(src.name, "starting" if ready is not None else "running")
            mark = (asyncio.create_task(_mark_running(sink, src.name, ready))
                    if ready is not None else None)
            try:
                self.active = src
                await src.run(sink)
                return True
            except CapabilityError as exc:
                sink.state(src.name, "unavailable", str(exc))
                log.warning("%s: unavailable: %s", src.name, exc)
            finally:
                if mark is not None:
                    mark.cancel()
        self.active = None
        return False

    async def _counters(self, sink: Any) -> bool:
        if self.counter_source is None:
            return False
        try:
            sink.state(self.counter_source.name, "running")
            await self.counter_source.run(sink)
            return True
        except CapabilityError as exc:
            sink.state(self.counter_source.name, "unavailable", str(exc))
            log.warning("%s: unavailable: %s", self.counter_source.name, exc)
            return False

    async def run(self, sink: Any) -> None:
        async with asyncio.TaskGroup() as tg:
            ev = tg.create_task(self._events(sink))
            ct = tg.create_task(self._counters(sink))
        if not ev.result() and not ct.result():
            raise CapabilityError("drops", "no drop source can run on this host "
                                  "(see the drops.* sources in status for why)")


def build(section: dict[str, Any], agent_cfg: Any = None) -> DropsCollector:
    """The drops collector from the ``[drops]`` config section.

    Raises:
        ConfigError: an unknown key or a bad value (the message names it).
    """
    from .counters import CounterDrops
    from .netdm import NetDmDrops
    from .tracepoint import TracepointDrops

    section = dict(section or {})
    unknown = sorted(set(section) - _KEYS)
    if unknown:
        raise ConfigError(f"[drops]: unknown option(s) {unknown}; known: {sorted(_KEYS)}")

    def num(key: str, default: float, kind: type = float) -> Any:
        value = section.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"[drops] {key} must be a positive number, got {value!r}")
        return kind(value)

    def names(key: str) -> frozenset[str]:
        value = section.get(key, [])
        if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
            raise ConfigError(f"[drops] {key} must be a list of drop reason names")
        return frozenset(r.upper().removeprefix("SKB_DROP_REASON_") for r in value)

    if "sources" in section and ("source" in section or "counter" in section):
        raise ConfigError("[drops] give either sources (a list) or source/counter, not both")
    if "sources" in section:
        sources = section["sources"]
        if not isinstance(sources, list) or not set(sources) <= {*AUTO_ORDER, "counter"}:
            raise ConfigError("[drops] sources must be a list of 'netdm', 'ebpf', 'tracepoint', "
                              "'counter'")
    else:
        source = section.get("source", "auto")
        if source not in EVENT_SOURCES:
            raise ConfigError(f"[drops] source must be one of {', '.join(EVENT_SOURCES)}; "
                              f"got {source!r}")
        counter_on = section.get("counter", True)
        if not isinstance(counter_on, bool):
            raise ConfigError("[drops] counter must be true or false")
        sources = [*(AUTO_ORDER if source == "auto" else (source,)),
                   *(("counter",) if counter_on else ())]
    interval = num("interval", 1.0)
    tick = num("tick", 0.05)
    exclude = names("exclude_reasons")
    packet_reasons = names("packet_reasons")
    event_sources: list[Any] = []
    if "netdm" in sources:
        event_sources.append(NetDmDrops(
            mode=section.get("mode", "alert"), trunc_len=num("trunc_len", 128, int),
            queue_len=num("queue_len", 1000, int), interval=interval,
            stats_interval=num("stats_interval", 1.0), packet_cap=num("packet_cap", 256, int),
            packet_reasons=packet_reasons, exclude_reasons=exclude, tick=tick))
    if "ebpf" in sources:
        event_sources.append(_ebpf(section, interval, exclude, tick))
    elif "filter" in section:
        raise ConfigError("[drops] filter applies to the ebpf source only (source = \"ebpf\" "
                          "or \"auto\")")
    if "tracepoint" in sources:
        event_sources.append(TracepointDrops(
            interval=interval, buffer_kb=num("buffer_kb", 4096, int), exclude_reasons=exclude,
            read_budget=num("read_budget", 4 << 20, int),
            reader=section.get("reader", "raw"), tick=tick))
    counter = None
    if "counter" in sources:
        netns = section.get("netns")
        if netns is not None and not isinstance(netns, str):
            raise ConfigError("[drops] netns must be a namespace name (under /run/netns)")
        counter = CounterDrops(interval=num("counter_interval", interval), netns=netns)
    # Keep the configured order (auto: eBPF, NET_DM, tracepoint).
    order = {name: i for i, name in enumerate(sources)}
    event_sources.sort(key=lambda src: order.get(src.name.removeprefix("drops."), 0))
    return DropsCollector(event_sources, counter)


def _kernel_reasons() -> set[str]:
    """Reason names from the tracepoint's format file (empty when it is unreadable)."""
    from .tracepoint import reason_table
    try:
        text = open("/sys/kernel/tracing/events/skb/kfree_skb/format").read()
    except OSError:
        return set()
    return set(reason_table(text).values())


def _ebpf(section: dict[str, Any], interval: float, exclude: frozenset[str],
          tick: float) -> Any:
    """The eBPF source from its options (ebpf/); the filter is parsed here, so a bad
    expression fails at start with the term named."""
    from .ebpf import EbpfDrops, parse_filter

    def count(key: str, default: int, lo: int) -> int:
        value = section.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ConfigError(f"[drops] {key} must be an integer >= {lo}, got {value!r}")
        return value

    text = section.get("filter", "")
    flt = parse_filter(text)
    known = _kernel_reasons()
    unknown = sorted(flt.reasons - known) if known else []
    if unknown:
        raise ConfigError(f"[drops] filter: {', '.join(unknown)}: not a drop reason of this "
                          f"kernel")
    if exclude:
        flt.not_reasons |= set(exclude)
        flt.text = (flt.text + " reason!=" + ",".join(sorted(exclude))).strip()
    program = section.get("program", "auto")
    if program not in ("auto", "btf", "raw"):
        raise ConfigError(f"[drops] program must be auto, btf or raw, got {program!r}")
    refresh = section.get("netns_refresh", 5.0)
    if isinstance(refresh, bool) or not isinstance(refresh, (int, float)) or refresh <= 0:
        raise ConfigError(f"[drops] netns_refresh must be a positive number, got {refresh!r}")
    return EbpfDrops(interval=interval, filter=flt, sample_every=count("sample_every", 0, 0),
                     ring_kb=count("ring_kb", 256, 4), map_entries=count("map_entries", 16384, 16),
                     netns_refresh=float(refresh), program=program, tick=tick)

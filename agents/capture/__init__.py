"""Capture source: AF_PACKET TPACKET_V3 rings -> ``frame`` summaries and ``gap`` records.

    ring.py        the ring: socket + mmap set-up (bind after the ring exists), BPF filter,
                   fanout, and the block walk (the hot loop)
    summary.py     frame summary columns and the L3/L4 key parser (sans-IO)
    gaps.py        GapAccountant (PACKET_STATISTICS -> placed, coalesced gap records) and
                   RxqOvflCounter (SO_RXQ_OVFL on non-ring sockets), both sans-IO
    hwtstamp.py    SIOCSHWTSTAMP / SIOCGHWTSTAMP / ETHTOOL_GET_TS_INFO, ``netevents hwtstamp``
    cwalk.py       the C block walker (walker.c, built once into a cache, loaded with ctypes)
                   that writes msgpack columns directly; falls back to ring.PythonWalker
    collector.py   RingCapture: one ring as a collector (add_reader on the ring's fd)
    workers.py     CaptureSupervisor: N worker processes in one PACKET_FANOUT group
    tcdrop.py      capture-only mode: a tc ingress drop installed for the run and removed after
    sample.toml    the config section, every option with its default

``build(section, agent_cfg)`` is the factory the SOURCES registry names.
"""

from __future__ import annotations

import os
from typing import Any

from netevents.errors import ConfigError

from .collector import CaptureOptions, RingCapture
from .cwalk import WALKERS
from .ring import FANOUT_MODES, RingConfig, compile_filter

_KEYS = {"iface", "ifaces", "workers", "snaplen", "filter", "capture_only", "fanout",
         "rollover", "block_size", "block_nr", "retire_tov_ms", "hwtstamp", "netns",
         "max_batch", "block_delay", "fanout_group", "walker"}


def parse_workers(value: Any) -> int:
    """``N`` or ``"auto"`` (os.cpu_count()). Raises ConfigError."""
    if value in (None, ""):
        return 1
    if value == "auto":
        return os.cpu_count() or 1
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"capture workers must be a number or 'auto', got {value!r}") from None
    if not 1 <= n <= 256:
        raise ConfigError(f"capture workers must be 1..256, got {n}")
    return n


def options_from_section(section: dict) -> tuple[list[str], int, dict]:
    """Validate a ``[capture]`` section: (interfaces, workers, ring/collector keyword options).

    Raises:
        ConfigError: naming the unknown or bad option.
    """
    unknown = set(section) - _KEYS
    if unknown:
        raise ConfigError(f"capture: unknown option(s) {', '.join(sorted(unknown))}")
    ifaces = list(section.get("ifaces") or [])
    if section.get("iface"):
        ifaces.insert(0, section["iface"])
    if not ifaces:
        raise ConfigError("capture: no interface (set iface, or --capture IF)")
    fanout = section.get("fanout", "hash")
    if fanout not in FANOUT_MODES:
        raise ConfigError(f"capture fanout {fanout!r} is not one of {', '.join(FANOUT_MODES)}")
    walker = section.get("walker", "auto")
    if walker not in WALKERS:
        raise ConfigError(f"capture walker {walker!r} is not one of {', '.join(WALKERS)}")
    flt = section.get("filter")
    opts = {
        "snaplen": int(section.get("snaplen", 96)),
        "bpf": compile_filter(flt) if flt else None,
        "fanout_mode": fanout,
        "fanout_rollover": bool(section.get("rollover", False)),
        "block_size": int(section.get("block_size", 1 << 20)),
        "block_nr": int(section.get("block_nr", 8)),
        "retire_tov_ms": int(section.get("retire_tov_ms", 50)),
        "netns": section.get("netns"),
        "hwtstamp": bool(section.get("hwtstamp", True)),
        "capture_only": bool(section.get("capture_only", False)),
        "max_batch": int(section.get("max_batch", 8192)),
        "block_delay": float(section.get("block_delay", 0.0)),
        "fanout_group": section.get("fanout_group"),
        "walker": walker,
    }
    RingConfig(iface=ifaces[0], snaplen=opts["snaplen"], block_size=opts["block_size"],
               block_nr=opts["block_nr"]).validate()
    return ifaces, parse_workers(section.get("workers", 1)), opts


def ring_capture(iface: str, opts: dict, worker: int = 0,
                 fanout_group: int | None = None) -> RingCapture:
    ring = RingConfig(iface=iface, snaplen=opts["snaplen"], block_size=opts["block_size"],
                      block_nr=opts["block_nr"], retire_tov_ms=opts["retire_tov_ms"],
                      fanout_group=fanout_group, fanout_mode=opts["fanout_mode"],
                      fanout_rollover=opts["fanout_rollover"], bpf=opts["bpf"],
                      netns=opts["netns"])
    return RingCapture(CaptureOptions(ring=ring, worker=worker, hwtstamp=opts["hwtstamp"],
                                      max_batch=opts["max_batch"],
                                      block_delay=opts["block_delay"],
                                      walker=opts.get("walker", "auto")))


def build(section: dict, agent_cfg: Any = None):
    """The capture collector for a config section (see sample.toml).

    One interface and one worker: a :class:`RingCapture` in the agent's own process. Otherwise
    a :class:`~agents.capture.workers.CaptureSupervisor` that runs one process per (interface,
    worker), each with its own ring in one fanout group per interface and its own bus connection.

    Raises:
        ConfigError: a bad option (named).
    """
    from .workers import CaptureSupervisor

    ifaces, workers, opts = options_from_section(section)
    if len(ifaces) == 1 and workers == 1 and not opts["capture_only"]:
        return ring_capture(ifaces[0], opts)
    return CaptureSupervisor(ifaces, workers, section, agent_cfg)


__all__ = ["CaptureOptions", "RingCapture", "build", "options_from_section", "parse_workers",
           "ring_capture"]

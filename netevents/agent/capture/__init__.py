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
    bpf.py         the socket's classic BPF program: snap length cut, bus traffic left out
    config.py      CaptureConfig: the [capture] section, typed and validated once
    sample.toml    the config section, every option with its default

``build(section, agent_cfg)`` is the factory the SOURCES registry names.
"""

from __future__ import annotations

from typing import Any

from netevents.bus import default_url

from .collector import CaptureOptions, RingCapture
from .config import CaptureConfig, capture_config, parse_workers, ring_capture


def build(section: dict, agent_cfg: Any = None):
    """The capture collector for a config section (see sample.toml).

    One interface and one worker: a :class:`RingCapture` in the agent's own process. Otherwise
    a :class:`~netevents.agent.capture.workers.CaptureSupervisor` that runs one process per (interface,
    worker), each with its own ring in one fanout group per interface and its own bus connection.

    Raises:
        ConfigError: a bad option (named).
    """
    from .workers import CaptureSupervisor

    cfg = capture_config(section)
    bus = getattr(agent_cfg, "bus", None)
    cfg.exclude_bus(bus or default_url())
    if len(cfg.interfaces) == 1 and cfg.worker_count == 1 and not cfg.capture_only:
        return ring_capture(cfg.interfaces[0], cfg)
    return CaptureSupervisor(cfg, agent_cfg)


__all__ = ["CaptureConfig", "CaptureOptions", "RingCapture", "build", "capture_config",
           "parse_workers", "ring_capture"]

"""The ``[capture]`` section as a typed config, read by :func:`netevents.agent.config.section_to` like
every source's: an unknown key or a value of the wrong type is one error naming
``[capture] key`` (``snaplen = "abc"``, ``hwtstamp = "false"``), checked once at start."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from netevents.errors import ConfigError

from ..config import section_to
from .bpf import RET_K, bus_endpoints, exclude_tcp
from .collector import CaptureOptions, RingCapture
from .cwalk import WALKERS
from .ring import FANOUT_MODES, RingConfig, compile_filter


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


@dataclass(slots=True)
class CaptureConfig:
    iface: str | None = None
    ifaces: list[str] = field(default_factory=list)
    workers: int | str = 1
    """Worker processes per interface in one PACKET_FANOUT group, or ``"auto"``."""
    snaplen: int = 96
    filter: str | None = None
    """pcap filter expression (compiled with ``tcpdump -ddd``) or ``-ddd`` output."""
    capture_only: bool = False
    fanout: str = "hash"
    rollover: bool = False
    # 4 MiB blocks (~26k short frames; at a high rate the 50 ms timer retires them at ~20k): a
    # batch per block spreads its fixed work (encode, publish, acknowledgement) over more
    # frames than 1 MiB ones did (~30% less CPU per frame in bench/capture.py); 4 of them,
    # 16 MiB per ring and worker (was 8 MiB).
    block_size: int = 4 << 20
    block_nr: int = 4
    retire_tov_ms: int = 50
    hwtstamp: bool = True
    netns: str | None = None
    max_batch: int = 32768
    block_delay: float = 0.0
    fanout_group: int | None = None
    walker: str = "auto"
    bus_traffic: bool = False
    """Capture the bus's own traffic too (by default the agent's bus server endpoints are left
    out in the kernel filter, so a capture on the bus host cannot feed on its own publishes)."""
    bpf: list[tuple[int, int, int, int]] | None = field(default=None, init=False)
    """The compiled filter (set by validate)."""

    @property
    def interfaces(self) -> list[str]:
        return ([self.iface] if self.iface else []) + list(self.ifaces)

    @property
    def worker_count(self) -> int:
        return parse_workers(self.workers)

    def validate(self) -> CaptureConfig:
        """Raises ConfigError naming the bad option."""
        if not self.interfaces:
            raise ConfigError("capture: no interface (set iface, or --capture IF)")
        if self.fanout not in FANOUT_MODES:
            raise ConfigError(f"capture fanout {self.fanout!r} is not one of {', '.join(FANOUT_MODES)}")
        if self.walker not in WALKERS:
            raise ConfigError(f"capture walker {self.walker!r} is not one of {', '.join(WALKERS)}")
        parse_workers(self.workers)
        self.ring_config(self.interfaces[0]).validate()
        self.bpf = compile_filter(self.filter) if self.filter else None
        return self

    def exclude_bus(self, urls: str) -> None:
        """Leave the bus servers of ``urls`` out of the capture (bpf.bus_exclusion), unless
        ``bus_traffic`` asks for them. Done once, where the agent is built: workers get the
        resulting program."""
        if self.bus_traffic:
            return
        prefix = exclude_tcp(bus_endpoints(urls))
        if prefix:
            self.bpf = prefix + (self.bpf or [(RET_K, 0, 0, 0xFFFFFFFF)])

    def section(self) -> dict[str, Any]:
        """The section again (what a worker process is handed), with the filter as the
        program it compiled to (``tcpdump -ddd`` text): workers need no tcpdump."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        if self.bpf is not None:
            out["filter"] = "\n".join([str(len(self.bpf))] + [" ".join(map(str, i)) for i in self.bpf])
        return out

    def ring_config(self, iface: str, fanout_group: int | None = None) -> RingConfig:
        return RingConfig(iface=iface, snaplen=self.snaplen, block_size=self.block_size,
                          block_nr=self.block_nr, retire_tov_ms=self.retire_tov_ms,
                          fanout_group=fanout_group, fanout_mode=self.fanout,
                          fanout_rollover=self.rollover, bpf=self.bpf, netns=self.netns)


def missing_interfaces(cfg: CaptureConfig) -> list[str]:
    """The configured interfaces that do not exist (in the capture's namespace)."""
    import socket

    from ..kernel.netns import entered

    missing = []
    with entered(cfg.netns):
        for iface in cfg.interfaces:
            try:
                socket.if_nametoindex(iface)
            except OSError:
                missing.append(iface)
    return missing


def capture_config(section: dict[str, Any]) -> CaptureConfig:
    """A validated :class:`CaptureConfig` from a ``[capture]`` section.

    Raises:
        ConfigError: naming ``[capture] key`` or the bad value.
    """
    return section_to(CaptureConfig, dict(section), "capture").validate()


def ring_capture(iface: str, cfg: CaptureConfig, worker: int = 0,
                 fanout_group: int | None = None) -> RingCapture:
    """One ring on ``iface`` as a collector (one fanout member when ``fanout_group`` is set)."""
    return RingCapture(CaptureOptions(ring=cfg.ring_config(iface, fanout_group), worker=worker,
                                      hwtstamp=cfg.hwtstamp, max_batch=cfg.max_batch,
                                      block_delay=cfg.block_delay, walker=cfg.walker))

"""The ipstats collector: the asyncio shell around sock_diag, the MIB reader and PeerAccountant.

Every ``interval`` seconds, in a thread (100k sockets are a few hundred ms of work that must
not stall the loop): read the MIB, feed the destroy messages received so far to the accountant,
then dump all TCP sockets streamed into it (never holding the whole dump), and publish one ``ipstat`` batch with the window's events and the
``residual`` (published even when no peer is flagged, so "nothing happened" is told apart from
"nothing was seen"). Destroy messages are read by ``loop.add_reader`` as they come.

Own losses (in status, from the start):
    ipstats.destroy_overrun   overruns (ENOBUFS) of the destroy multicast socket: each one is an
                              unknown number of lost destroy messages; counted per overrun
    ipstats.unseen_close      sockets that vanished with no destroy message (their final
                              counters are missing; they show up in the residual)
    ipstats.peer_cap          peer events left out of a batch by ``max_peers``
    ipstats.bad_message       destroy datagrams that did not parse
    ipstats.failed_sample     samples (dump or MIB read) that failed; the next window spans them
    ipstats.reset_overrun     reset tracepoint records the tracefs ring lost (those resets stay
                              in the residual against OutRsts)

Per-peer resets (``resets`` sent, ``resets_in`` received) come from the ``tcp:tcp_send_reset``
and ``tcp:tcp_receive_reset`` tracepoints (``resets.py``); without tracefs the source runs on
and says so in its state, and resets stay in the residual.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any

from netevents.errors import CapabilityError, ConfigError, NetlinkError

from ..base import Sink
from ..config import section_to
from .aggregate import LEVELS, PeerAccountant, Window, residual
from .mib import MibReader, mib_deltas
from .sockdiag import DestroyListener, DiagSocket, TcpSock

log = logging.getLogger("netevents.agent.ipstats")

LOSS_PLACES = ("ipstats.destroy_overrun", "ipstats.unseen_close", "ipstats.peer_cap",
               "ipstats.bad_message", "ipstats.failed_sample", "ipstats.reset_overrun")

_FAMILIES = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}


@dataclass(slots=True)
class IpstatsConfig:
    """The ``[ipstats]`` section. Unknown keys and bad values raise ConfigError naming them."""

    interval: float = 10.0
    """Seconds between samples (the window length)."""
    level: str = "default"
    """``default`` (peers with red flags, small field set) or ``diagnostics`` (everything)."""
    max_peers: int = 1000
    """Most events per batch; the rest is counted (batch ``overflow``, lost ``ipstats.peer_cap``)."""
    netns: str | None = None
    """Network namespace to read (a name under /run/netns or a path); default: the agent's own."""
    families: tuple[str, ...] = ("ipv4", "ipv6")
    grace: int = 2
    """Windows to wait for the destroy message of a socket that left the dump."""
    resets: bool = True
    """Per-peer resets from the reset tracepoints (needs tracefs and root)."""

    @classmethod
    def from_section(cls, section: dict[str, Any]) -> IpstatsConfig:
        """Raises: ConfigError naming ``[ipstats] key`` for an unknown key, a wrong type or a
        bad value."""
        section = dict(section)
        if isinstance(section.get("families"), str):
            section["families"] = [section["families"]]
        cfg = section_to(cls, section, "ipstats")
        cfg.families = tuple(cfg.families)
        if cfg.interval <= 0:
            raise ConfigError(f"ipstats.interval must be a positive number of seconds, not {cfg.interval!r}")
        if cfg.level not in LEVELS:
            raise ConfigError(f"ipstats.level must be one of {', '.join(LEVELS)}, not {cfg.level!r}")
        if cfg.max_peers < 1:
            raise ConfigError(f"ipstats.max_peers must be a positive integer, not {cfg.max_peers!r}")
        if cfg.grace < 0:
            raise ConfigError(f"ipstats.grace must be a non-negative integer, not {cfg.grace!r}")
        if not cfg.families or any(f not in _FAMILIES for f in cfg.families):
            raise ConfigError(f"ipstats.families must be a list of ipv4/ipv6, not {cfg.families!r}")
        if cfg.netns is not None and not cfg.netns:
            raise ConfigError(f"ipstats.netns must be a namespace name or path, not {cfg.netns!r}")
        return cfg


class IpstatsCollector:
    """Per-peer TCP counter deltas from sock_diag, with a residual against the MIB."""

    name = "ipstats"

    def __init__(self, cfg: IpstatsConfig | None = None) -> None:
        self.cfg = cfg or IpstatsConfig()
        self.accountant = PeerAccountant(self.cfg.level, self.cfg.max_peers, self.cfg.grace)
        self._pending: list[TcpSock] = []
        self._sink: Sink | None = None
        self._destroy: DestroyListener | None = None
        self.tracer: Any = None
        self.windows = 0
        self.last_window: Window | None = None
        self.ready = asyncio.Event()
        """Set once the first (baseline) dump is taken: later traffic is counted."""

    # -- control ----------------------------------------------------------------------------------
    @property
    def level(self) -> str:
        return self.accountant.level

    def set_level(self, value: Any) -> dict[str, Any]:
        """Switch the publishing level; takes effect from the next window.

        Raises:
            ValueError: for an unknown level (nothing changes).
        """
        if not isinstance(value, str):
            raise ValueError(f"level must be a string, one of {', '.join(LEVELS)}")
        previous = self.accountant.level
        self.accountant.set_level(value)
        if value != previous:
            log.info("ipstats level %s -> %s", previous, value)
        return {"level": self.accountant.level, "previous": previous}

    def control_commands(self) -> dict[str, Any]:
        """Commands this source adds to the agent's control server."""
        return {"level": self._control_level}

    def _control_level(self, request: dict[str, Any]) -> dict[str, Any]:
        if "value" not in request:
            return {"source": self.name, "level": self.level}  # a query: no change
        return {"source": self.name, **self.set_level(request["value"])}

    # -- destroy messages -------------------------------------------------------------------------
    def _drain_destroy(self) -> None:
        d = self._destroy
        if d is None:
            return
        try:
            overruns = d.read(self._pending)
        except NetlinkError as exc:
            if self._sink is not None:
                self._sink.lost("ipstats.bad_message", 1)
            log.warning("ipstats: bad destroy message: %s", exc)
            return
        if overruns and self._sink is not None:
            self._sink.lost("ipstats.destroy_overrun", overruns)

    # -- run ----------------------------------------------------------------------------------------
    async def run(self, sink: Sink) -> None:
        """Sample until cancelled.

        Raises:
            CapabilityError: if sock_diag, the destroy groups, the namespace or /proc/net
                cannot be used here.
        """
        self._sink = sink
        for place in LOSS_PLACES:
            sink.declare_loss(place)
        families = tuple(_FAMILIES[f] for f in self.cfg.families)
        netns = self.cfg.netns
        loop = asyncio.get_running_loop()
        diag = await asyncio.to_thread(DiagSocket, netns, families=families)
        destroy: DestroyListener | None = None
        mib: MibReader | None = None
        try:
            try:
                destroy = self._destroy = await asyncio.to_thread(DestroyListener, netns)
            except CapabilityError as exc:
                # Still useful without it: sockets that close between samples go unseen
                # (counted in ipstats.unseen_close, their counters land in the residual).
                sink.state(self.name, "running", f"without destroy messages: {exc}")
                log.warning("ipstats: running without destroy messages: %s", exc)
            mib = await asyncio.to_thread(MibReader, netns)
            if destroy is not None:
                loop.add_reader(destroy.fileno(), self._drain_destroy)
            if self.cfg.resets:
                await self._start_resets(sink, netns)
            # Baseline: MIB and dump at the start of the first window.
            prev_mib = mib.read()
            self._drain_destroy()
            await asyncio.to_thread(self._sample, diag, None, self._take_pending(), None)
            self._take_resets(sink)  # what came before the baseline is history
            t0 = time.time_ns()
            self.ready.set()
            next_at = loop.time() + self.cfg.interval
            while True:
                await asyncio.sleep(max(0.0, next_at - loop.time()))
                next_at += self.cfg.interval
                if next_at < loop.time():  # fell behind (huge dump): skip, do not burst
                    next_at = loop.time() + self.cfg.interval
                self._drain_destroy()
                resets = self._take_resets(sink)
                try:
                    # Dump and accounting as one stream, off the loop (100k sockets are a few
                    # hundred ms). Only this step touches the accountant's baselines; destroy
                    # messages arriving meanwhile wait in _pending for the next window.
                    window, cur_mib = await asyncio.to_thread(
                        self._sample, diag, mib, self._take_pending(), resets)
                except (OSError, ValueError, NetlinkError) as exc:
                    # Skip the sample: the next window then spans both intervals (t0, the
                    # baselines and the MIB reading stay), so nothing is counted twice or lost.
                    sink.lost("ipstats.failed_sample", 1)
                    log.warning("ipstats: sample failed, the next window covers it: %s", exc)
                    continue
                t1 = time.time_ns()
                deltas = mib_deltas(prev_mib, cur_mib)
                prev_mib = cur_mib
                self._publish(sink, window, deltas, t0, t1)
                t0 = t1
        finally:
            if self.tracer is not None:
                loop.remove_reader(self.tracer.fd)
                self.tracer.close()
                self.tracer = None
            if destroy is not None:
                loop.remove_reader(destroy.fileno())
                destroy.close()
            self._destroy = None
            if mib is not None:
                mib.close()
            diag.close()

    def _sample(self, diag: DiagSocket, mib: MibReader | None, destroyed: list[TcpSock],
                resets: dict | None) -> tuple[Window, Any]:
        """The MIB, the window's destroy messages and resets, then the dump streamed into
        the accountant (never held whole: PeerAccountant.window_samples).

        Raises: OSError, NetlinkError, ValueError from the MIB read or the dump; the accountant
        keeps the window open then.
        """
        cur_mib = mib.read() if mib is not None else None
        self.accountant.destroyed(destroyed)
        if resets:
            self.accountant.resets(resets)
        return self.accountant.window_samples(diag.sample_chunks()), cur_mib

    # -- resets -------------------------------------------------------------------------------------
    async def _start_resets(self, sink: Sink, netns: str | None) -> None:
        from .resets import ResetTracer

        try:
            self.tracer = await asyncio.to_thread(ResetTracer, netns)
        except CapabilityError as exc:
            sink.state(self.name, "running", f"without per-peer resets: {exc}")
            log.warning("ipstats: running without per-peer resets: %s", exc)
            return
        self.tracer.counter.cookies = self.accountant  # the namespace's sockets, as they are
        asyncio.get_running_loop().add_reader(self.tracer.fd, self.tracer.drain)

    def _take_resets(self, sink: Sink) -> dict | None:
        """The window's resets in this namespace (the sockets it knows, its addresses)."""
        tracer = self.tracer
        if tracer is None:
            return None
        tracer.drain()
        lost = tracer.overruns()
        if lost:
            sink.lost("ipstats.reset_overrun", lost)
        counts = tracer.counter.take()
        tracer.refresh_addresses()  # for the next window: the namespace's addresses as they are now
        return counts

    def _take_pending(self) -> list[TcpSock]:
        pending, self._pending = self._pending, []
        return pending

    def _publish(self, sink: Sink, window: Window, deltas: dict[str, dict[str, int]],
                 t0: int, t1: int) -> None:
        self.windows += 1
        self.last_window = window
        if window.overflow:
            sink.lost("ipstats.peer_cap", window.overflow)
        if window.unseen_closes:
            sink.lost("ipstats.unseen_close", window.unseen_closes)
        mib = {"RetransSegs": deltas["Tcp"].get("RetransSegs"),
               "TCPTimeouts": deltas["TcpExt"].get("TCPTimeouts"),
               "OutRsts": deltas["Tcp"].get("OutRsts"),
               "EstabResets": deltas["Tcp"].get("EstabResets")}
        sink.emit_batch("ipstat", window.events, t0=t0, t1=t1,
                        residual=residual(deltas, window), level=window.level,
                        overflow=window.overflow,
                        mib={k: v for k, v in mib.items() if v is not None},
                        sockets=window.sockets, peers=window.peers_total)

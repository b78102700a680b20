"""Counter-derived drops (source ``counter``): what hosts without NET_DM or tracefs still report.

The kernel counts many drops without saying which packet: interface rx/tx dropped and missed
(link stats64), qdisc drops, softnet ``dropped`` (backlog full), UDP ``RcvbufErrors``,
``MemErrors``, ``InCsumErrors`` and the rest of ``InErrors`` (which also counts the first three). Their increases become drop events whose ``reason`` is named after the counter and
whose ``location`` is the counter (``Udp:RcvbufErrors``, ``link:rx_dropped``, ...).

The files and rtnetlink are read with the netstat source's readers and its nstat delta
arithmetic (``netevents/agent/netstat``); this module only picks the drop counters out of them:

    drop_events(samples, deltas, now)   sans-IO: netstat Samples -> drop event dicts
    CounterDrops                        the collector: reads in one worker thread, which can
                                        enter another network namespace (``netns``)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from netevents.errors import CapabilityError, ConfigError

from ..kernel.netns import enter as enter_netns
from ..netstat import read_proc, read_rtnl
from ..netstat.parse import CounterDeltas, Sample

# (netstat group, counter) -> drop reason name. Groups: /proc/net/snmp{,6}, softnet_stat,
# rtnl_link_stats64 (include/uapi/linux/if_link.h), gnet_stats_queue (linux/gen_stats.h).
DROP_COUNTERS: dict[tuple[str, str], str] = {
    ("Udp", "RcvbufErrors"): "UDP_RCVBUF_ERRORS",
    ("Udp", "MemErrors"): "UDP_MEM_ERRORS",
    ("Udp", "InCsumErrors"): "UDP_CSUM_ERRORS",
    ("Udp", "InErrors"): "UDP_IN_ERRORS",
    ("Udp6", "RcvbufErrors"): "UDP6_RCVBUF_ERRORS",
    ("Udp6", "MemErrors"): "UDP6_MEM_ERRORS",
    ("Udp6", "InCsumErrors"): "UDP6_CSUM_ERRORS",
    ("Udp6", "InErrors"): "UDP6_IN_ERRORS",
    ("softnet", "dropped"): "SOFTNET_DROPPED",
    ("link", "rx_dropped"): "LINK_RX_DROPPED",
    ("link", "tx_dropped"): "LINK_TX_DROPPED",
    ("link", "rx_missed_errors"): "LINK_RX_MISSED",
    ("qdisc", "drops"): "QDISC_DROPS",
}
_GROUPS = frozenset(g for g, _ in DROP_COUNTERS)

# The kernel counts a UDP datagram dropped for a full receive buffer, for socket memory or for a
# bad checksum under its own counter *and* under InErrors (net/ipv4/udp.c, __udp_queue_rcv_skb
# and csum_error): the InErrors event carries only what none of those counted, so one dropped
# datagram is one counted drop.
_IN_ERRORS_PARTS = ("RcvbufErrors", "MemErrors", "InCsumErrors")


def drop_events(samples: list[Sample], deltas: CounterDeltas, now_ns: int,
                netns: int | None = None) -> list[dict[str, Any]]:
    """Increases of the drop counters in ``samples`` as drop event dicts (sans-IO).

    The first sample of each (group, scope) is a baseline and gives nothing.
    """
    events: list[dict[str, Any]] = []
    for s in samples:
        if s.group not in _GROUPS:
            continue
        d = deltas.update(s, now_ns)
        for name, n in d.deltas.items():
            reason = DROP_COUNTERS.get((s.group, name))
            if name == "InErrors" and reason is not None:
                n -= sum(d.deltas.get(part, 0) for part in _IN_ERRORS_PARTS)
            if reason is None or n <= 0:
                continue
            ev: dict[str, Any] = {"count": n, "source": "counter", "reason": reason,
                                  "location": f"{s.group}:{name}", "last_ts": now_ns}
            if d.interval_ns:
                ev["first_ts"] = now_ns - d.interval_ns
            if s.group == "link":
                ev["iface"] = s.scope
            elif s.group == "qdisc":
                ev["iface"] = s.scope.split(":", 1)[0]
            if netns is not None:
                ev["netns"] = netns
            events.append(ev)
    return events


class CounterDrops:
    """Collector: every ``interval`` s, the increase of each drop counter as a drop event.

    ``netns`` (a name under /run/netns) makes the reader thread enter that namespace.
    """

    name = "drops.counter"
    source = "counter"

    def __init__(self, *, interval: float = 1.0, netns: str | None = None,
                 proc: str = "/proc/thread-self") -> None:
        if interval <= 0:
            raise ConfigError("drops.counter_interval must be > 0")
        self.interval = interval
        self.netns = netns
        self.proc = proc  # thread-self: the reader thread's netns, which may be another one
        self.deltas = CounterDeltas()
        self._missing: set[str] = set()
        self.netns_inode: int | None = None
        self._ipr: Any = None
        self._init_error: Exception | None = None

    # -- runs in the reader thread (possibly inside another netns) -----------------------------
    def _init_thread(self) -> None:
        if self.netns:
            try:
                enter_netns(self.netns)
            except CapabilityError as exc:
                self._init_error = exc
                raise OSError(str(exc)) from exc
        with contextlib.suppress(OSError):
            self.netns_inode = os.stat("/proc/thread-self/ns/net").st_ino

    def _read(self) -> list[Sample]:
        """Read the counter files and rtnetlink once (blocking: in the reader thread)."""
        samples = read_proc(self.proc, self._missing)
        try:
            if self._ipr is None:
                from pyroute2 import IPRoute

                self._ipr = IPRoute()  # opened in this thread: lives in its netns
            samples.extend(read_rtnl(self._ipr, links=True, qdiscs=True))
        except Exception:  # pyroute2 raises widely; the /proc counters still count
            self._ipr = None
        return samples

    def sample(self) -> list[dict[str, Any]]:
        """One reading -> drop events for the counters that increased."""
        return drop_events(self._read(), self.deltas, time.time_ns(), self.netns_inode)

    async def run(self, sink: Any) -> None:
        worker = _NetnsThread(self._init_thread)
        try:
            try:
                await worker.call(self.sample)  # baseline
            except OSError as exc:
                why = self._init_error or exc
                raise CapabilityError("netns", f"cannot read drop counters: {why}") from exc
            last = time.time_ns()
            while True:
                await asyncio.sleep(self.interval)
                events = await worker.call(self.sample)
                now = time.time_ns()
                if events:
                    sink.emit_batch("drop", events, t0=last, t1=now, mode="alert")
                last = now
        finally:
            if self._ipr is not None:
                worker.submit(self._ipr.close)
            worker.stop()


class _NetnsThread:
    """One long-lived thread (it may have entered another netns) running calls for the loop.

    A plain thread rather than a ThreadPoolExecutor: it works under any event loop (trio-asyncio
    refuses foreign executors) and its netns is set once by ``init``.
    """

    def __init__(self, init: Callable[[], None]) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._init = init
        self._thread = threading.Thread(target=self._main, name="drops-counter", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        init_error: BaseException | None = None
        try:
            self._init()
        except BaseException as exc:  # reported to every caller
            init_error = exc
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, done = job
            if init_error is not None:
                done(None, init_error)
                continue
            try:
                done(fn(), None)
            except BaseException as exc:
                done(None, exc)

    def submit(self, fn: Callable[[], Any]) -> None:
        self._jobs.put((fn, lambda _r, _e: None))

    async def call(self, fn: Callable[[], Any]) -> Any:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def done(result: Any, exc: BaseException | None) -> None:
            def settle() -> None:
                if fut.done():
                    return
                if exc is not None:
                    fut.set_exception(exc)
                else:
                    fut.set_result(result)
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(settle)

        self._jobs.put((fn, done))
        return await fut

    def stop(self) -> None:
        self._jobs.put(None)

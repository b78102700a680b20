"""``netevents correlate``: the asyncio shell around the :class:`~.correlator.Correlator`.

It subscribes to the inputs, feeds the correlator, ticks it with the wall clock (a replay: the
time of what it has read) and publishes what it makes as ``incident`` batches.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from ...codec import Batch
from ...events import IncidentEvent
from .correlator import Correlator

log = logging.getLogger("netevents.correlate")

INPUT_KINDS = ("drop", "gap", "frame", "ipstat", "status")


async def run_correlate(url: str | None, *, window: float = 10.0, grace: float = 3.0,
                        queue_group: str | None = None, stop: Any = None, site: str = "local",
                        token: str | None = None, correlator: Correlator | None = None,
                        tick_interval: float = 0.5, on_incident: Any = None,
                        ready: Any = None, credentials: Any = None,
                        partition: tuple[int, int] = (0, 1), since: int | None = None,
                        until: int | None = None, publish: bool = True) -> Correlator:
    """Subscribe to the inputs, feed the correlator, publish its incidents until ``stop``.

    Incidents go out as ``incident`` batches from host ``token`` (default
    ``correlator-<hostname>``, with ``-p<K>of<N>`` for a member of a partitioned set) with
    their own run id and sequence numbers.

    ``queue_group`` shares the stream per message (each batch to one member): right for drop
    storms and peers, but the frames of one path then land on different members, which cannot
    match them -- to scale path loss out, run ``partition`` members instead (each reads the
    whole stream and judges its share of the paths).

    ``since``/``until`` (ns) correlate what the streams hold from then on (see
    :mod:`netevents.bus.history`), ticking with the batches' own time (``t1``) so the grace
    periods mean what they mean live; with ``until`` it ends with the window. ``publish=False``
    only reports the incidents (``on_incident``), for a replay of what was published before.

    Raises:
        BusError: if the bus cannot be reached.
    """
    from ...bus import connect
    from ...subjects import default_host

    stop = stop or asyncio.Event()
    publishing = publish   # the flag; publish() below sends
    corr = correlator or Correlator(window=window, grace=grace, partition=partition)
    if token is None:
        token = f"correlator-{default_host()}"
        if corr.partition.n > 1:
            token += f"-p{corr.partition.k}of{corr.partition.n}"
    run = os.urandom(8).hex()
    seq = 0
    async with connect(url, name=f"netevents-{token}", streams=True, credentials=credentials) as bus:
        sub = bus.subscribe(INPUT_KINDS, queue=queue_group, since=since, until=until)
        event_now = 0

        def clock() -> int:   # a replay's "now" is the time of what it has read so far
            return event_now if since is not None else time.time_ns()

        async with sub:
            if ready is not None:
                ready.set()
            loop = asyncio.get_running_loop()
            next_tick = loop.time() + tick_interval

            async def publish(incidents: list[IncidentEvent]) -> None:
                nonlocal seq
                if not incidents:
                    return
                seq += 1
                now = time.time_ns()
                batch = Batch(kind="incident", site=site, host=token, run=run, seq=seq,
                              t0=min((i.first_ts or now) for i in incidents), t1=now,
                              events=list(incidents))
                for inc in incidents:
                    log.info("%s", inc.summary)
                    if on_incident is not None:
                        on_incident(inc)
                if publishing:
                    await bus.publish(batch)

            while not stop.is_set() and not sub.finished:
                batch = await sub.next(timeout=tick_interval)
                if batch is not None:
                    event_now = max(event_now, batch.t1)
                    try:
                        made = corr.feed(batch)
                    except (KeyError, TypeError, ValueError) as exc:  # one bad batch, counted
                        corr.counts["bad_batches"] += 1
                        log.warning("batch %s from %s not correlated: %s", batch.kind, batch.host, exc)
                        made = []
                    await publish(made)
                if loop.time() >= next_tick:
                    next_tick = loop.time() + tick_interval
                    await publish(corr.tick(clock()))
            await publish(corr.tick(clock(), flush=True))
            corr.counts["rejected"] = sum(sub.rejected.values())
            corr.counts["dropped_by_queue"] = sub.dropped
            corr.counts["unreceived"] = sub.unreceived  # announced by status, never received
            await bus.flush()
    return corr

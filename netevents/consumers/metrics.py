"""`netevents metrics`: a Prometheus exporter of the fleet's aggregates (prometheus_client).

:func:`families` (sans-IO) turns a :class:`~netevents.consumers.view.FleetView` and the
subscription's own accounting into metric families; :func:`run_metrics` feeds the view from
the bus and publishes a fresh snapshot every second, which the HTTP thread of
``prometheus_client`` serves (the snapshot is swapped whole, so the thread never reads a view
that the loop is changing).

Exported (all labelled by ``host`` where it applies):

    netevents_drops_total{host,reason,location}        drop counts as published by the agents
    netevents_capture_gap_frames_total{host}           frames the captures lost (gap records)
    netevents_peer_retransmits_total{host,peer}        worst peers (top 50 by retransmits)
    netevents_peer_resets_total{host,peer,direction}   TCP resets sent / received per peer (top 50)
    netevents_peer_timeouts_total{host,peer}           RTO timeouts toward a peer (top 50)
    netevents_peer_drops_total{host,peer,peer_host,reason,location}
                                                       who is hurting whom: the peer host's drops
                                                       on the flows between it and host (top 50
                                                       pairs by retransmits)
    netevents_peer_window_seconds{host,peer}           span of the host's ipstat windows so far
    netevents_incidents_total{type}                    incidents seen on the bus
    netevents_path_frames{from,to,outcome}             delivered / lost / unknown per path
    netevents_agent_lost_total{host,place}             agents' own losses (status lost.*)
    netevents_consumer_missed_batches_total{host,kind} sequence holes seen by this exporter
    netevents_consumer_rejected_messages_total{reason} messages this exporter rejected
    netevents_consumer_lag{what}                       queued / pending / slow-consumer drops /
                                                       unreceived (announced by status, not received)
    netevents_events_total{kind}                       events received per kind
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from ..errors import ConfigError
from .view import FleetView, feed_view

log = logging.getLogger("netevents.metrics")

TOP_PEERS = 50


def families(view: FleetView, rejected: dict[str, int] | None = None) -> list[Any]:
    """Metric families of the view's aggregates (a list to hand to a registry's collector).

    Raises:
        ConfigError: if prometheus_client is not installed.
    """
    try:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    except ImportError:
        raise ConfigError("netevents metrics needs prometheus_client: "
                          "pip install 'netevents[metrics]'") from None
    out: list[Any] = []
    drops = CounterMetricFamily("netevents_drops", "packets dropped, as the agents published them",
                                labels=["host", "reason", "location"])
    for (host, reason, loc), n in view.drop_sites.items():
        drops.add_metric([host, reason, loc], n)
    out.append(drops)
    gaps = CounterMetricFamily("netevents_capture_gap_frames", "frames the captures lost (gap records)",
                               labels=["host"])
    for host, n in view.gaps.items():
        gaps.add_metric([host], n)
    out.append(gaps)
    peers = CounterMetricFamily("netevents_peer_retransmits", "TCP retransmits toward a peer "
                                f"(top {TOP_PEERS})", labels=["host", "peer"])
    for (host, peer), n in view.peers.most_common(TOP_PEERS):
        peers.add_metric([host, peer], n)
    out.append(peers)
    resets = CounterMetricFamily("netevents_peer_resets", "TCP resets per peer, sent or received",
                                 labels=["host", "peer", "direction"])
    for (host, peer, way), n in view.peer_resets.most_common(TOP_PEERS):
        resets.add_metric([host, peer, way], n)
    out.append(resets)
    timeouts = CounterMetricFamily("netevents_peer_timeouts", "TCP RTO timeouts toward a peer",
                                   labels=["host", "peer"])
    for (host, peer), n in view.peer_timeouts.most_common(TOP_PEERS):
        timeouts.add_metric([host, peer], n)
    out.append(timeouts)
    pdrops = CounterMetricFamily("netevents_peer_drops", "the peer host's drops on the flows "
                                 "between it and host (who is hurting whom)",
                                 labels=["host", "peer", "peer_host", "reason", "location"])
    window = GaugeMetricFamily("netevents_peer_window_seconds", "span of the host's ipstat "
                               "windows toward the peer so far", labels=["host", "peer"])
    for r in view.peer_rows("retrans")[:TOP_PEERS]:
        window.add_metric([r["host"], r["peer"]], r["window_s"])
        for reason, loc, n in r["peer_drop_sites"]:
            pdrops.add_metric([r["host"], r["peer"], r["peer_host"] or "", reason, loc], n)
    out += [pdrops, window]
    incidents = CounterMetricFamily("netevents_incidents", "incidents seen on the bus", labels=["type"])
    for t, n in sorted(view.incident_counts.items()):
        incidents.add_metric([t], n)
    out.append(incidents)
    paths = GaugeMetricFamily("netevents_path_frames", "frames per path and outcome (latest path_loss)",
                              labels=["from", "to", "outcome"])
    for r in view.path_rows():
        for outcome in ("delivered", "lost", "unknown"):
            paths.add_metric([r["from"], r["to"], outcome], r[outcome])
    out.append(paths)
    lost = CounterMetricFamily("netevents_agent_lost", "items agents lost themselves (status lost.*)",
                               labels=["host", "place"])
    for host, places in view.agent_losses().items():
        for place, n in places.items():
            lost.add_metric([host, place], n)
    out.append(lost)
    missed = CounterMetricFamily("netevents_consumer_missed_batches",
                                 "batches this exporter did not receive (sequence holes)",
                                 labels=["host", "kind"])
    for (host, kind), n in view.missed.items():
        missed.add_metric([host, kind], n)
    out.append(missed)
    rej = CounterMetricFamily("netevents_consumer_rejected_messages", "messages this exporter rejected",
                              labels=["reason"])
    for reason, n in (rejected or {}).items():
        rej.add_metric([reason], n)
    out.append(rej)
    lag = GaugeMetricFamily("netevents_consumer_lag", "this exporter's backlog", labels=["what"])
    for what, n in view.lag.items():
        lag.add_metric([what], n)
    out.append(lag)
    events = CounterMetricFamily("netevents_events", "events received per kind", labels=["kind"])
    for kind, n in view.events.items():
        events.add_metric([kind], n)
    out.append(events)
    return out


class SnapshotCollector:
    """A prometheus_client collector serving the latest snapshot (swapped whole)."""

    def __init__(self) -> None:
        self.snapshot: list[Any] = []

    def collect(self) -> Iterable[Any]:
        return list(self.snapshot)


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``) -> (host, port).

    Raises:
        ConfigError: if it is not HOST:PORT with a port 0..65535.
    """
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--listen must be HOST:PORT, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


async def run_metrics(url: str | None, listen: str, *, stop: asyncio.Event,
                      started: Any = None, refresh: float = 1.0, credentials: Any = None) -> FleetView:
    """Serve /metrics on ``listen`` while feeding a FleetView from the bus, until ``stop``.

    ``started`` (a callable) gets the (host, port) actually bound (port 0 picks one).

    Raises:
        ConfigError: bad --listen, or prometheus_client missing.
        BusError: the bus cannot be reached.
        OSError: the address cannot be bound.
    """
    host, port = parse_listen(listen)
    families(FleetView())  # fails early with one line when prometheus_client is missing
    from prometheus_client import CollectorRegistry, start_http_server

    from ..bus import connect

    registry = CollectorRegistry(auto_describe=False)
    collector = SnapshotCollector()
    registry.register(collector)
    view = FleetView()
    async with connect(url, name="netevents-metrics", credentials=credentials) as bus:
        httpd, thread = start_http_server(port, addr=host, registry=registry)
        bound = httpd.server_address[:2]
        log.info("serving /metrics on http://%s:%s/metrics", *bound)
        if started is not None:
            started(bound)
        try:
            def snap(sub: Any) -> None:
                collector.snapshot = families(view, dict(sub.rejected))

            await feed_view(bus, view, stop, every=refresh, on_refresh=snap)
        finally:
            httpd.shutdown()
            httpd.server_close()
            thread.join(timeout=5)
    return view

"""The commands that read the bus: `tail`, `top`, `archive`, `verify`, `correlate`, `metrics`,
and `demo` (a namespace fleet with its agents, correlator and view)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from .. import events as ev
from ..bus import connect, default_url
from ..consumers.view import PEER_SORTS
from ..errors import ConfigError
from ..subjects import check_pattern
from .history_commands import (
    add_filter_options,
    add_history_options,
    filter_of,
    kinds_for,
    warn_missing,
    window_of,
)
from .options import add_bus_options, count, credentials, positive
from .runtime import stop_after, stop_on_signals, stopping
from .ui import draw

log = logging.getLogger("netevents")


async def cmd_tail(args: argparse.Namespace) -> int:
    from ..consumers.tail import tail

    for pattern in args.host or ():
        check_pattern(pattern, "host")
    window, filt = window_of(args), filter_of(args)
    kinds = kinds_for(args.kind, filt) if filt else args.kind or None
    return await tail(args.bus, kinds, args.host or None, as_json=args.json,
                      count=args.count, timeout=args.timeout, credentials=credentials(args),
                      since=window.since_ns if window else None,
                      until=window.until_ns if window else None, event_filter=filt)


async def cmd_top(args: argparse.Namespace) -> int:
    from ..consumers.view import FleetView, feed_view

    window, filt = window_of(args), filter_of(args)
    # statuses pass every filter: they are the hosts' health
    kinds = sorted(set(kinds_for(None, filt)) | {"status"}) if filt else None
    keep = (lambda b: b if b.kind == "status" else filt.batch(b)) if filt else None
    bounded = window is not None and window.until_ns is not None
    view = FleetView()
    view.peer_sort = args.sort
    stop = asyncio.Event()
    stop_on_signals(stop)
    async with connect(args.bus, name="netevents-top", credentials=credentials(args)) as bus:
        if window is not None:
            await warn_missing(bus, window, kinds or ev.KINDS)
        async with asyncio.TaskGroup() as tg:
            ready = asyncio.Event()
            tg.create_task(feed_view(bus, view, stop, ready=ready, kinds=kinds, keep=keep,
                                     since=window.since_ns if window else None,
                                     until=window.until_ns if window else None))
            tg.create_task(stop_after(stop, args.duration))
            await ready.wait()
            if sys.stdout.isatty() and args.duration is None and not bounded:
                await draw(view, stop, args.view)
            else:
                await stop.wait()
                print(view.render(args.view))
    return 0


async def cmd_archive(args: argparse.Namespace) -> int:
    from ..consumers.archive import run_archive
    from ..heap import keep_heap

    keep_heap()  # runs of blocks are ~100 KB buffers: no fresh mmap and page faults per batch

    for pattern in args.host or ():
        check_pattern(pattern, "host")
    rotate_bytes = int(args.rotate_mb * 1024 * 1024) if args.rotate_mb else None
    async with stopping(args.duration) as stop:
        totals = await run_archive(args.out, args.bus or default_url(), durable=args.durable,
                                   rotate_bytes=rotate_bytes, rotate_seconds=args.rotate_seconds,
                                   stop=stop, hosts=args.host, hold=args.gap_wait,
                                   credentials=credentials(args), reorder=args.reorder)
    log.info("stopped: %s files, %s frames, %s dropped packets, dropcount %s", totals["files"],
             totals["frames"], totals["drop_packets"], totals["dropcount"])
    return 0


async def cmd_verify(args: argparse.Namespace) -> int:
    from ..consumers.verify import verify_main

    return await asyncio.to_thread(verify_main, args.files, args.json)


async def cmd_correlate(args: argparse.Namespace) -> int:
    from ..consumers.correlate import parse_partition, run_correlate

    partition = parse_partition(args.partition) if args.partition else (0, 1)
    if args.queue_group and partition[1] > 1:
        raise ConfigError("--partition and --queue-group split the work two ways: use one")
    window = window_of(args)
    if window is not None and args.queue_group:
        raise ConfigError("--since replays the whole stream to this correlator: not with --queue-group")
    history = {} if window is None else {"since": window.since_ns, "until": window.until_ns,
                                         "publish": args.publish}

    def show(incident: Any) -> None:  # one line per incident, as it is published
        print(f"[{incident.type}] {incident.summary}", flush=True)

    async with stopping(args.duration) as stop:
        corr = await run_correlate(args.bus, window=args.window, grace=args.grace,
                                   queue_group=args.queue_group, stop=stop, token=args.token,
                                   credentials=credentials(args), partition=partition,
                                   on_incident=None if args.quiet else show, **history)
    made = {k: v for k, v in corr.counts.items() if k.startswith("incident.")}
    log.info("stopped: incidents %s; evicted %s; input batches missed %d (sequence holes) + %d "
             "(announced by status, never received)", made or "none",
             dict(corr.evicted) or "nothing", sum(corr.missed.values()), corr.counts["unreceived"])
    if corr.directory.bad_input:  # values of accepted batches that could not be used
        log.warning("inputs set aside: %s", dict(corr.directory.bad_input))
    return 0


async def cmd_metrics(args: argparse.Namespace) -> int:
    from ..consumers.metrics import run_metrics

    async with stopping(args.duration) as stop:
        await run_metrics(args.bus, args.listen, stop=stop, credentials=credentials(args))
    return 0


async def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return await run_demo(args)


# -- parsers ---------------------------------------------------------------------------------------

def add_reader_parsers(sub: Any) -> None:
    """`tail` and `top`."""
    p = sub.add_parser("tail", help="print events as they arrive",
                       description="Print events from the bus, one line each (or one JSON object "
                       "per event with --json). Batches missed and messages rejected are "
                       "reported on stderr.")
    p.add_argument("--kind", action="append", choices=ev.KINDS, help="kind to show (repeatable; default all)")
    p.add_argument("--host", action="append", metavar="GLOB",
                   help="host name or glob, e.g. web-* (repeatable)")
    p.add_argument("--json", action="store_true", help="one JSON object per event per line")
    p.add_argument("--count", type=count, metavar="N", help="exit after N events (exit 1 if --timeout hits first)")
    p.add_argument("--timeout", type=positive, metavar="S", help="exit after S seconds")
    add_history_options(p, until_help="stop at WHEN (same forms as --since): the replay ends "
                        "there and tail exits")
    add_filter_options(p)
    add_bus_options(p)
    p.set_defaults(func=cmd_tail)

    p = sub.add_parser("top", help="live fleet view: hosts, drop sites, counters, peers, own losses",
                       description="A live view of everything on the bus. Keys: h hosts, d drops, "
                       "c counters, p peers (who is hurting whom: retransmits next to the peer "
                       "host's drops on their flows; s changes its order), l path loss, "
                       "i incidents (from `netevents correlate`), q quit.")
    p.add_argument("--view", choices=("hosts", "drops", "counters", "peers", "paths", "incidents"),
                   default="hosts")
    p.add_argument("--sort", choices=PEER_SORTS, default="retrans",
                   help="order of the peers view (default retrans; key s cycles)")
    p.add_argument("--duration", type=positive, metavar="S", help="collect S seconds, print once, exit")
    add_history_options(p, until_help="stop at WHEN: the view of the window is printed once")
    add_filter_options(p)
    add_bus_options(p)
    p.set_defaults(func=cmd_top)


def add_archive_parsers(sub: Any) -> None:
    """`archive` and `verify`."""
    p = sub.add_parser("archive", help="PcapNG archive of frames, capture gaps and dropped packets",
                       description="Write frame summaries, capture gaps (as epb_dropcount on the "
                       "frame after each gap) and packet-mode drops to rotating PcapNG files in "
                       "DIR, each with a <file>.json sidecar. A durable JetStream consumer makes "
                       "a restart (even after kill -9) resume without a hole.")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--rotate-mb", type=positive, metavar="N", help="start a new file after N MiB")
    p.add_argument("--rotate-seconds", type=positive, metavar="S", help="start a new file after S seconds")
    p.add_argument("--durable", default="archive", metavar="NAME",
                   help="durable consumer name; one archiver per name (default archive)")
    p.add_argument("--host", action="append", metavar="GLOB", help="only these hosts (repeatable)")
    p.add_argument("--gap-wait", type=positive, default=1.0, metavar="S",
                   help="seconds at most a frame batch waits for the gap records it announces "
                   "(gaps_before; batches of agents that do not announce wait this long; default 1)")
    p.add_argument("--reorder", type=positive, default=1.0, metavar="S",
                   help="seconds of capture time packets wait to be merged with other rings' "
                   "into time order (later ones are written as they come, counted in the "
                   "sidecar's out_of_order; default 1)")
    p.add_argument("--duration", type=positive, metavar="S", help="stop after S seconds")
    add_bus_options(p)
    p.set_defaults(func=cmd_archive)

    p = sub.add_parser("verify", help="check archive files with tshark and capinfos",
                       description="Read each file with tshark and capinfos and check that the "
                       "packet count and the total frame.drop_count match what the archive says "
                       "it wrote (the <file>.json sidecar). Exit 0 if every file checks out.")
    p.add_argument("files", nargs="+", metavar="FILE.pcapng")
    p.add_argument("--json", action="store_true", help="one JSON object per file")
    p.set_defaults(func=cmd_verify)


def add_fleet_parsers(sub: Any) -> None:
    """`correlate`, `metrics` and `demo`."""
    p = sub.add_parser("correlate", help="cross-host incidents: drop storms, path loss, peers",
                       description="Subscribe to drop, gap, frame, ipstat and status batches of "
                       "every host, correlate them (netevents/consumers/correlate/) and publish "
                       "incident batches as host correlator-<hostname>.")
    p.add_argument("--window", type=positive, default=10.0, metavar="S",
                   help="seconds a drop storm's evidence stays together (default 10)")
    p.add_argument("--grace", type=positive, default=3.0, metavar="S",
                   help="seconds a frame waits for its match before it is judged (default 3)")
    p.add_argument("--partition", metavar="K/N",
                   help="be member K of N correlators (K counts from 0: 0/2 and 1/2 are the two "
                   "members of a pair) that share the work by key: each reads the "
                   "whole stream and judges its share of the paths (by address pair), drop storms "
                   "(by reason and location) and peers; incidents come from "
                   "correlator-<hostname>-pKofN. The way to scale path loss out")
    p.add_argument("--queue-group", metavar="NAME",
                   help="share the stream with other correlators in this NATS queue group, per "
                   "message: fine for drop storms and peers, but a path's frames land on "
                   "different members and cannot be matched (use --partition for path loss)")
    p.add_argument("--token", metavar="HOST", help="host token of the incidents (default correlator-<hostname>)")
    p.add_argument("--quiet", action="store_true",
                   help="do not print each incident as it is published (the summary still ends the run)")
    p.add_argument("--duration", type=positive, metavar="S", help="stop after S seconds")
    add_history_options(p, until_help="stop at WHEN: correlate the window, print its incidents, exit")
    p.add_argument("--publish", action="store_true",
                   help="with --since: publish the incidents found in the window too (by default "
                   "a replay only prints them: the incident stream already holds the originals)")
    add_bus_options(p)
    p.set_defaults(func=cmd_correlate)

    p = sub.add_parser("metrics", help="Prometheus exporter of the fleet's aggregates",
                       description="Serve /metrics (prometheus_client, extra 'metrics'): drops by "
                       "host/reason/location, capture gaps, worst peers, incidents, path loss and "
                       "the pipeline's own losses (agents' lost.*, missed batches, rejected messages).")
    p.add_argument("--listen", default="127.0.0.1:9464", metavar="ADDR",
                   help="HOST:PORT to serve on (default 127.0.0.1:9464; port 0 picks one)")
    p.add_argument("--duration", type=positive, metavar="S", help="stop after S seconds")
    add_bus_options(p)
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("demo", help="a fleet of namespace hosts with real faults, correlated live",
                       description="Build >= 3 network-namespace hosts on a bridge namespace, run an "
                       "agent per host (in the root namespace, reading each host's namespace), "
                       "generate traffic and real faults (lossy link, firewall drop, full UDP "
                       "receive buffer), run the correlator and open top. Removes everything on exit.")
    p.add_argument("--duration", type=positive, metavar="S",
                   help="run S seconds without the live view, then print the incidents seen")
    p.add_argument("--hosts", type=int, default=3, metavar="N", help="namespace hosts (default 3, min 3)")
    p.add_argument("--loss", type=float, default=0.0, metavar="PCT",
                   help="random loss added on the hub's link to the second host, percent: an "
                   "nftables bridge rule drops PCT%% of its frames (NETFILTER_DROP on the path). "
                   "That link is always rate-limited (tbf 2mbit, short queue: QDISC_DROP tail "
                   "drops). Default 0")
    p.add_argument("--json", action="store_true", help="with --duration: incidents as JSON lines")
    p.add_argument("--keep-logs", action="store_true",
                   help="keep the demo's work directory (agent and traffic logs, configs) and say "
                   "where it is; by default it is removed on exit")
    p.set_defaults(func=cmd_demo)

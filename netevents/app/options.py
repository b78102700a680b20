"""Options several commands share, and their translation into configuration: the bus and its
credentials, the agent's options (into an :class:`~netevents.agent.config.AgentConfig`), positive numbers.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from netevents.agent import SOURCES
from netevents.agent.config import AgentConfig, load_file

from ..bus import Credentials
from ..errors import ConfigError

DEFAULT_SOURCES = ("netstat", "drops", "ipstats")
"""Sources `agent` and `up` run when none is named (each that cannot run on this host says so
in one line and the others carry on). Capture needs an interface: --capture IF."""

SOURCE_FLAGS = {
    "netstat": "host-wide counter deltas: /proc/net/snmp, netstat, snmp6, softnet, links, qdiscs",
    "drops": "drop events (reason, location): NET_DM, else eBPF (flow, netns), else the "
             "kfree_skb tracepoint; plus counter-derived drops",
    "ipstats": "per-peer TCP counter deltas (sock_diag), with a residual against the MIB",
}

AUTH_OPTIONS = (("creds", "a NATS .creds file (JWT + nkey seed)", "NETEVENTS_CREDS"),
                ("nkey_seed", "a file holding an nkey seed (SU...)", "NETEVENTS_NKEY_SEED"),
                ("tls_ca", "CA bundle that verifies the server (tls:// URLs)", "NETEVENTS_TLS_CA"),
                ("tls_cert", "client certificate for mutual TLS", "NETEVENTS_TLS_CERT"),
                ("tls_key", "key of the client certificate", "NETEVENTS_TLS_KEY"))


def default_store() -> Path:
    env = os.environ.get("NETEVENTS_STORE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "netevents" / "nats"


def positive(value: str) -> float:
    """argparse type: a number > 0."""
    try:
        f = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if f <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {value}")
    return f


def count(value: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more: {value}")
    return n


# -- the bus and its credentials ----------------------------------------------------------------

BUS_SCHEMES = ("nats", "tls", "ws", "wss")


def bus_url(value: str) -> str:
    """argparse type: a NATS server URL (or a comma-separated list of them).

    ``$NETEVENTS_BUS`` goes through here too (it is the option's default)."""
    for part in value.split(","):
        scheme, sep, rest = part.strip().partition("://")
        if not sep or scheme.lower() not in BUS_SCHEMES or not rest:
            raise argparse.ArgumentTypeError(
                f"{part.strip()!r} is not a NATS URL: use {', '.join(s + '://' for s in BUS_SCHEMES)} "
                "HOST:PORT (e.g. nats://127.0.0.1:4222)")
    return value


def add_bus_options(p: argparse.ArgumentParser) -> None:
    """--bus and the credential options, for every command that connects to the bus."""
    p.add_argument("--bus", metavar="URL", type=bus_url, default=os.environ.get("NETEVENTS_BUS") or None,
                   help="NATS URL: nats://, tls://, ws:// or wss:// HOST:PORT (default "
                        "$NETEVENTS_BUS or nats://127.0.0.1:4222)")
    g = p.add_argument_group("bus credentials (user:password can also go in the URL)")
    for name, text, env in AUTH_OPTIONS:
        g.add_argument(f"--{name.replace('_', '-')}", dest=name, metavar="FILE",
                       help=f"{text} (default ${env})")


def credentials(args: argparse.Namespace) -> Credentials:
    """Credentials from the options; each falls back to its environment variable
    (:class:`~netevents.bus.Credentials`). The agent's come from its config
    (:func:`netevents.agent.compose.credentials`), where these options are merged in."""
    return Credentials(**{name: getattr(args, name, None) for name, _text, _env in AUTH_OPTIONS})


# -- the agent ------------------------------------------------------------------------------------

def add_agent_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=os.environ.get("NETEVENTS_HOST") or None,
                   help="host token in subjects (default $NETEVENTS_HOST, else the short hostname)")
    p.add_argument("--site", default=os.environ.get("NETEVENTS_SITE") or None,
                   help="site token in subjects (default $NETEVENTS_SITE, else local)")
    p.add_argument("--operator-keys", metavar="KEYS|FILE",
                   default=os.environ.get("NETEVENTS_OPERATOR_KEYS") or None,
                   help="operator public keys whose signed control requests the agent serves "
                        "(ed25519:..., or a file such as the fleet's operators.pub; default "
                        "$NETEVENTS_OPERATOR_KEYS)")
    p.add_argument("--config", metavar="FILE", help="agent config file (TOML; see deploy/agent.toml)")
    p.add_argument("--status-interval", type=positive, metavar="S",
                   help="seconds between status heartbeats (default 5)")
    p.add_argument("--spool", metavar="DIR",
                   help="where batches wait while the bus is away (default "
                        "/var/lib/netevents/spool/SITE-HOST as root)")
    g = p.add_argument_group("sources (none given: the defaults of the command)")
    for name in SOURCES:
        if name in SOURCE_FLAGS:
            g.add_argument(f"--{name}", dest=f"src_{name}", action="store_true",
                           help=SOURCE_FLAGS[name])
    g.add_argument("--interval", type=positive, metavar="S",
                   help="netstat sampling interval in seconds (default 1)")
    g.add_argument("--ipstats-level", choices=("default", "diagnostics"), metavar="LEVEL",
                   help="ipstats publishing level: default (peers with red flags) or "
                        "diagnostics (every peer and local/peer pair); implies --ipstats")
    c = p.add_argument_group("capture (AF_PACKET TPACKET_V3: frame summaries and gap records)")
    c.add_argument("--capture", action="append", metavar="IF", dest="capture_ifaces",
                   help="capture on interface IF (repeatable)")
    c.add_argument("--workers", metavar="N|auto",
                   help="capture worker processes per interface in one PACKET_FANOUT group "
                        "(default 1; auto = one per core)")
    c.add_argument("--snaplen", type=int, metavar="N", help="bytes kept per frame (default 96)")
    c.add_argument("--filter", metavar="EXPR",
                   help="pcap filter expression (compiled with tcpdump -ddd) or -ddd output")
    c.add_argument("--capture-only", action="store_true",
                   help="mirror/SPAN port: drop captured frames at ingress, after the capture "
                        "(removed on exit)")


def _apply_capture_options(args: argparse.Namespace, cfg: AgentConfig) -> None:
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


def agent_config(args: argparse.Namespace,
                 default_sources: tuple[str, ...] = DEFAULT_SOURCES) -> AgentConfig:
    """The agent configuration from --config and the command line (the command line wins).

    Raises:
        ConfigError: naming the option or ``[section] key`` at fault.
    """
    cfg = load_file(args.config) if getattr(args, "config", None) else AgentConfig()
    if getattr(args, "host", None):
        cfg.host = args.host
    if getattr(args, "site", None):
        cfg.site = args.site
    if getattr(args, "status_interval", None):
        cfg.status_interval = args.status_interval
    if getattr(args, "spool", None):
        cfg.spool_dir = args.spool
    if getattr(args, "bus", None):
        cfg.bus = args.bus
    if getattr(args, "operator_keys", None):
        cfg.operator_keys = args.operator_keys
    for name, _text, _env in AUTH_OPTIONS:
        if getattr(args, name, None):
            setattr(cfg, name, getattr(args, name))
    for name in SOURCES:
        if getattr(args, f"src_{name}", False):
            cfg.sources.setdefault(name, {})
    _apply_capture_options(args, cfg)
    level = getattr(args, "ipstats_level", None)
    if level:
        cfg.sources.setdefault("ipstats", {})["level"] = level
    if not cfg.sources:
        for name in default_sources:
            if name in SOURCES:
                cfg.sources[name] = {}
    if "netstat" in cfg.sources and getattr(args, "interval", None):
        cfg.sources["netstat"]["interval"] = args.interval
    return cfg.validate()

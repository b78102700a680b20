"""The commands that set a fleet up: `auth` (per-host NATS users, :mod:`netevents.auth`) and
`streams` (create the JetStream streams once)."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import secrets
from typing import Any

from ..auth import Fleet, FleetUser, hash_password, host_token, render_authorization
from ..bus import connect, default_url, redact_url
from ..bus.streams import apply_limits, parse_limits, stream_rows
from ..errors import BusError, ConfigError
from ..subjects import check_token
from .options import add_bus_options, credentials, positive


async def cmd_auth(args: argparse.Namespace) -> int:
    return _run_auth(args)


async def cmd_streams(args: argparse.Namespace) -> int:
    url = args.bus or default_url()
    async with connect(url, name="netevents-streams", reconnect=False,
                       credentials=credentials(args)) as bus:
        try:
            async with asyncio.timeout(args.timeout):
                await bus.ensure_streams(replicas=args.replicas)
                for line in await apply_retention(bus, args):
                    print(f"netevents streams: {line}")
        except TimeoutError:
            raise BusError(f"streams not created within {args.timeout:g}s (may this user "
                           "publish on $JS.API.STREAM.>? is JetStream enabled?)") from None
        if args.show:
            show_streams(await stream_rows(bus.nc), as_json=args.json)
            return 0
    print(f"netevents streams: NETEVENTS_EVENTS, NETEVENTS_STATS, NETEVENTS_FRAMES present on {redact_url(url)}")
    return 0


def add_retention_options(p: argparse.ArgumentParser) -> None:
    """--max-age / --max-bytes STREAM=VALUE (streams, server, up)."""
    g = p.add_argument_group("retention (STREAM is events, stats or frames)")
    g.add_argument("--max-age", action="append", metavar="STREAM=DUR",
                   help="keep a stream's messages this long (7d, 12h; unlimited); repeatable. "
                   "Defaults: events 7d, stats 1d, frames 1h")
    g.add_argument("--max-bytes", action="append", metavar="STREAM=SIZE",
                   help="cap a stream's size, oldest removed first (500M, 20G; unlimited); "
                   "repeatable. Default: frames 1G")


async def apply_retention(bus: Any, args: argparse.Namespace) -> list[str]:
    """Apply --max-age/--max-bytes to the existing streams. Raises ConfigError (bad values)."""
    try:
        limits = parse_limits(getattr(args, "max_age", None), getattr(args, "max_bytes", None))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return await apply_limits(bus.js, limits) if limits else []


def show_streams(rows: list[dict[str, Any]], *, as_json: bool = False) -> None:
    import json

    from ..bus.history import format_duration

    if as_json:
        print(json.dumps(rows))
        return
    for r in rows:
        age = format_duration(r["max_age_s"]) if r["max_age_s"] else "unlimited"
        size = "unlimited" if (r["max_bytes"] or -1) < 0 else f"{r['max_bytes']} bytes"
        print(f"{r['stream']} ({r['name']}): max age {age}, max bytes {size}, discard "
              f"{r['discard']}, replicas {r['replicas']}")
        held = (f"{r['first']} .. {r['last']} (sequences {r['first_seq']}..{r['last_seq']})"
                if r["messages"] else "nothing")
        print(f"  holds {r['messages']} messages, {r['bytes']} bytes: {held}; "
              f"{r['consumers']} consumers")


def add_deploy_parsers(sub: Any) -> None:
    """`auth` and `streams`."""
    _add_auth_parser(sub, cmd_auth)
    p = sub.add_parser("streams", help="create the JetStream streams, set and show their retention",
                       description="Create the netevents streams on a server, for deployments "
                       "where agents may only publish their own subjects (deploy/README.md); "
                       "set how long and how much each keeps (--max-age, --max-bytes) and show it "
                       "(--show).")
    p.add_argument("--replicas", type=int, metavar="N",
                   help="stream replicas: 3 on a 3-node cluster (default $NETEVENTS_REPLICAS or 1)")
    p.add_argument("--timeout", type=positive, default=15.0, metavar="S", help=argparse.SUPPRESS)
    p.add_argument("--show", action="store_true",
                   help="print each stream's limits and what it holds (oldest and newest message)")
    p.add_argument("--json", action="store_true", help="with --show: one JSON document")
    add_retention_options(p)
    add_bus_options(p)
    p.set_defaults(func=cmd_streams)


def _run_auth(args: argparse.Namespace) -> int:
    """`netevents auth ...`. Raises ConfigError (exit 2) for bad names or an existing user."""
    fleet = Fleet(args.fleet)
    if args.auth_cmd == "render":
        print(f"netevents auth: wrote {fleet.save()}")
        return 0
    if args.auth_cmd == "list":
        for u in sorted(fleet.users.values(), key=lambda u: u.name):
            print(f"{u.name}\t{u.role}\t{'bcrypt' if u.password.startswith('$2') else 'plain'}")
        return 0
    if args.auth_cmd == "routes":
        conf = fleet.set_routes(args.nodes, rotate=args.rotate)
        print(f"netevents auth: wrote {conf}: copy it next to every node's cluster-N.conf "
              "(it is included inside cluster { }) and restart the nodes")
        return 0
    if args.auth_cmd == "remove":
        fleet.remove(args.user)
        print(f"netevents auth: removed {args.user}; reload the server (nats-server --signal reload)")
        return 0
    role = args.auth_cmd if args.auth_cmd != "add-host" else "agent"
    host = getattr(args, "host", None)
    if role == "agent":
        host = args.name if not args.token else host_token(args.name)
        check_token(host, "host")
    roles = [role] + (["leaf"] if role == "agent" and args.leaf else [])
    for r in roles:
        user, env = fleet.add(r, args.name, args.bus, site=args.site, host=host,
                              rotate=args.rotate, plain=args.plain,
                              durables=getattr(args, "durable", None))
        kind = "bcrypt" if user.password.startswith("$2") else "plain (no bcrypt here)"
        owns = f", owns durables {', '.join(user.durables or [args.name])}" \
            if r in ("consumer", "operator", "correlator") else ""
        key = (f"; its control key is in the credentials file, agents trust "
               f"{fleet.root / 'operators.pub'}") if r == "operator" else ""
        print(f"netevents auth: {user.name} ({r}, password {kind}{owns}); credentials in {env}; "
              f"server include {fleet.root / 'auth.conf'} (reload the server to apply){key}")
    return 0


def durable_option(q: argparse.ArgumentParser) -> None:
    q.add_argument("--durable", action="append", metavar="NAME",
                   help="a durable consumer name this user owns (`netevents archive --durable "
                        "NAME`; repeatable; default: NAME of the user). No user can read, pull, "
                        "acknowledge or delete another's durables")


def _add_auth_parser(sub: Any, func: Any) -> None:
    """The `netevents auth` subcommands."""
    p = sub.add_parser("auth", help="per-host NATS users and the server's authorization block",
                       description="Manage the fleet's NATS users in a directory: fleet.json, "
                       "auth.conf (include it in the server config) and credentials/<user>.env "
                       "(NETEVENTS_BUS with user and password; an EnvironmentFile). "
                       "See deploy/README.md.")
    asub = p.add_subparsers(dest="auth_cmd", metavar="ACTION", required=True)

    def common(q: argparse.ArgumentParser, new_user: bool = True) -> None:
        q.add_argument("--fleet", metavar="DIR", default=os.environ.get("NETEVENTS_FLEET", "fleet"),
                       help="the fleet directory (default $NETEVENTS_FLEET or ./fleet)")
        if new_user:
            q.add_argument("--bus", metavar="URL", default="nats://127.0.0.1:4222",
                           help="server URL the credentials file points at (default nats://127.0.0.1:4222)")
            q.add_argument("--rotate", action="store_true", help="the user exists: give it a new password")
            q.add_argument("--plain", action="store_true",
                           help="store the plain password in auth.conf instead of a bcrypt hash")
        q.set_defaults(func=func)

    q = asub.add_parser("add-host", help="an agent user allowed only netevents.v1.*.<site>.<host>")
    q.add_argument("name", metavar="HOST", help="the agent's --host token")
    q.add_argument("--site", default="local", help="site token (default local)")
    q.add_argument("--token", action="store_true",
                   help="HOST is a host name: turn it into a token (dots and others become -)")
    q.add_argument("--leaf", action="store_true",
                   help="also a leaf.<site>.<host> user for this host's leaf node (deploy/nats/leaf.conf)")
    common(q)
    for role, text in (("consumer", "read-only: events and its own durable pull consumers"),
                       ("operator", "read-only plus signed control requests (netevents ctl): "
                        "its key goes into its credentials file, agents trust operators.pub"),
                       ("admin", "creates the streams (netevents streams)")):
        q = asub.add_parser(role, help=text)
        q.add_argument("name", metavar="NAME", help="user name token (the user is <role>.NAME)")
        if role != "admin":
            durable_option(q)
        common(q)
        q.set_defaults(site=None, host=None)
    q = asub.add_parser("correlator", help="read-only plus incidents as <site>.<host>")
    q.add_argument("name", metavar="NAME")
    q.add_argument("--site", default="local")
    q.add_argument("--host", required=True, help="host token its incidents carry")
    durable_option(q)
    common(q)
    q = asub.add_parser("routes", help="the cluster's route user and routes (routes.conf)")
    q.add_argument("nodes", nargs="+", metavar="HOST:PORT",
                   help="every node's cluster listener, e.g. nats-1:6222 nats-2:6222 nats-3:6222")
    q.add_argument("--rotate", action="store_true", help="a new route password")
    common(q, new_user=False)
    q = asub.add_parser("remove", help="remove a user")
    q.add_argument("user", metavar="USER", help="full user name, e.g. agent.dc1.web-1")
    common(q, new_user=False)
    q = asub.add_parser("render", help="rewrite auth.conf from fleet.json")
    common(q, new_user=False)
    q = asub.add_parser("list", help="list the users")
    common(q, new_user=False)


# -- `netevents server`: who may connect ------------------------------------------------------

def is_loopback(address: str) -> bool:
    if address in ("localhost", ""):
        return address == "localhost"
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def server_security(args: argparse.Namespace) -> tuple[str, dict[str, str], Any]:
    """The embedded server's authorization and TLS config from `netevents server` options:
    (config text, ``user``/``password`` for the server's own stream set-up, a TLS context for
    it or None).

    ``--auth DIR`` serves the fleet's users (``netevents auth``) plus a one-off admin user that
    exists only in this run's config; ``--listen`` on a non-loopback address without
    ``--auth`` needs an explicit ``--insecure``.

    Raises:
        ConfigError: for an exposed server without either, a fleet directory without users,
            or TLS options that do not go together.
    """
    conf, login, ctx = "", {}, None
    if args.auth:
        fleet = Fleet(args.auth)
        if not fleet.users:
            raise ConfigError(f"--auth {args.auth}: no users in {fleet.root / 'fleet.json'} "
                              "(create them with `netevents auth add-host/consumer/admin ...`)")
        password = secrets.token_urlsafe(24)
        me = FleetUser(f"admin.server-{secrets.token_hex(4)}", "admin", hash_password(password))
        conf += render_authorization([*fleet.users.values(), me])
        login = {"user": me.name, "password": password}
    elif not is_loopback(args.listen) and not args.insecure:
        raise ConfigError(f"--listen {args.listen}: refusing to serve a non-loopback address "
                          "without authorization: anyone who reaches the port could publish as "
                          "any host. Pass --auth DIR (the fleet directory of `netevents auth`), "
                          "or --insecure if that is really meant")
    if args.tls_cert or args.tls_key or args.tls_ca or args.tls_verify:
        if not (args.tls_cert and args.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together (--tls-ca, --tls-verify need them)")
        if args.tls_verify and not args.tls_ca:
            raise ConfigError("--tls-verify needs --tls-ca (the CA client certificates are signed by)")
        for opt in ("tls_cert", "tls_key", "tls_ca"):
            value = getattr(args, opt)
            if value and not os.path.isfile(value):
                raise ConfigError(f"--{opt.replace('_', '-')}: no such file: {value}")
        block = {"cert_file": os.path.abspath(args.tls_cert), "key_file": os.path.abspath(args.tls_key)}
        if args.tls_ca:
            block["ca_file"] = os.path.abspath(args.tls_ca)
        body = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in block.items())
        conf += "tls {\n" + body + ("  verify: true\n" if args.tls_verify else "") + "  timeout: 2\n}\n"
        import ssl

        # Our own child on loopback: the certificate names the public host, not 127.0.0.1.
        ctx = ssl.create_default_context(cafile=args.tls_ca) if args.tls_ca else ssl.create_default_context()
        ctx.check_hostname = False
        if not args.tls_ca:
            ctx.verify_mode = ssl.CERT_NONE
        if args.tls_verify:
            ctx.load_cert_chain(args.tls_cert, args.tls_key)
    return conf, login, ctx


def add_server_security_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("who may connect (a non-loopback --listen needs --auth or --insecure)")
    g.add_argument("--auth", metavar="DIR", default=os.environ.get("NETEVENTS_FLEET") or None,
                   help="serve the users of this fleet directory (`netevents auth`; default "
                        "$NETEVENTS_FLEET)")
    g.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --listen without --auth: anyone who reaches it is any host")
    g.add_argument("--tls-cert", metavar="FILE", help="server certificate (clients use tls:// URLs)")
    g.add_argument("--tls-key", metavar="FILE", help="key of the server certificate")
    g.add_argument("--tls-ca", metavar="FILE", help="CA that signed client certificates (with --tls-verify)")
    g.add_argument("--tls-verify", action="store_true", help="require client certificates signed by --tls-ca")

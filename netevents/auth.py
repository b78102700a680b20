"""Per-host NATS credentials: who may publish and read what, and the server's auth block.

    Permissions            what one user may publish and subscribe to (NATS subject lists)
    agent_permissions      a host agent: its own event subjects, its own control subject
    consumer_permissions   read-only: events plus the JetStream API durable pull consumers need
    operator_permissions   a consumer that may also send control requests (`netevents ctl`)
    correlator_permissions a consumer that may also publish its own incidents
    admin_permissions      creates and changes the streams (`netevents streams`)
    FleetUser              one user of the fleet: name, role, site/host, password (bcrypt or plain)
    render_authorization   users -> the NATS ``authorization { users = [...] }`` block (text)
    Fleet                  the shell: a directory holding fleet.json, auth.conf and one
                           credentials env file per user; `netevents auth ...` drives it

Everything above Fleet is sans-IO. The NATS server enforces the permissions: an agent holding
web-1's credentials that publishes as web-2 gets a permissions violation and the message goes
nowhere (tests/deploy/test_permissions.py shows it with a real server).
"""

from __future__ import annotations

import json
import os
import secrets
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .errors import ConfigError
from .subjects import MAX_TOKEN, PREFIX, check_token

STREAMS = ("NETEVENTS_EVENTS", "NETEVENTS_STATS", "NETEVENTS_FRAMES")
ROLES = ("agent", "leaf", "consumer", "operator", "correlator", "admin")


@dataclass(slots=True)
class Permissions:
    """NATS permissions of one user; deny wins over allow (nats-server semantics)."""

    publish_allow: list[str] = field(default_factory=list)
    publish_deny: list[str] = field(default_factory=list)
    subscribe_allow: list[str] = field(default_factory=list)
    subscribe_deny: list[str] = field(default_factory=list)
    allow_responses: bool = False
    """May publish one reply to the reply subject of each request it received (control)."""

    def as_conf(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for verb in ("publish", "subscribe"):
            block = {k: v for k, v in (("allow", getattr(self, f"{verb}_allow")),
                                       ("deny", getattr(self, f"{verb}_deny"))) if v}
            if block:
                out[verb] = block
        if self.allow_responses:
            out["allow_responses"] = True
        return out


def agent_permissions(site: str, host: str) -> Permissions:
    """A host agent: publish its own events, answer its own control subject, nothing else.

    ``netevents.v1.*.<site>.<host>`` also matches the control and incident kinds, which are not
    the agent's to send: both are denied explicitly (an agent must not command another agent
    or forge a correlator's conclusion). JetStream acks of its publishes come back on its
    ``_INBOX`` reply subject, so acked publishing needs no ``$JS.API`` permission.
    """
    site, host = check_token(site, "site"), check_token(host, "host")
    return Permissions(
        publish_allow=[f"{PREFIX}.*.{site}.{host}"],
        publish_deny=[f"{PREFIX}.control.>", f"{PREFIX}.incident.>"],
        subscribe_allow=[f"{PREFIX}.control.{site}.{host}", "_INBOX.>"],
        allow_responses=True)


def leaf_permissions(site: str, host: str) -> Permissions:
    """The hub's view of a host's leaf node (deploy/nats/leaf.conf): the agent's permissions,
    plus publishing on ``_INBOX.>``. Over a leaf connection the hub forwards only what the
    leaf's user may publish and ``allow_responses`` does not carry the agent's control replies
    back, so the replies need the inbox allowance. The host still cannot publish any event
    subject but its own; it could answer a request whose inbox it learned."""
    perm = agent_permissions(site, host)
    perm.publish_allow.append("_INBOX.>")
    return perm


def _pull_consumer_api() -> list[str]:
    """The JetStream API subjects a durable pull consumer of our streams uses (nats-py):
    consumer info/create/delete (a restarted archive re-creates its consumer at the ack floor),
    fetch (MSG.NEXT), acks; stream info. STREAM.CREATE of exactly our
    three streams is included because ``Bus.subscribe(durable=...)`` makes sure they exist
    first (creating an existing stream with its own config is a no-op; a different config is
    refused by the server, so this cannot change a stream)."""
    api = ["$JS.API.INFO"]
    for s in STREAMS:
        api += [f"$JS.API.STREAM.INFO.{s}", f"$JS.API.STREAM.CREATE.{s}",
                f"$JS.API.CONSUMER.INFO.{s}.*", f"$JS.API.CONSUMER.CREATE.{s}",
                f"$JS.API.CONSUMER.DELETE.{s}.*",
                f"$JS.API.CONSUMER.CREATE.{s}.>", f"$JS.API.CONSUMER.DURABLE.CREATE.{s}.*",
                f"$JS.API.CONSUMER.MSG.NEXT.{s}.*", f"$JS.ACK.{s}.>"]
    return api


def consumer_permissions() -> Permissions:
    """Read-only: every event subject, live or through durable pull consumers; publishes no
    event and no control request (both denied explicitly), reads no control requests."""
    return Permissions(publish_allow=_pull_consumer_api(), publish_deny=[f"{PREFIX}.>"],
                       subscribe_allow=[f"{PREFIX}.>", "_INBOX.>"],
                       subscribe_deny=[f"{PREFIX}.control.>"])


def operator_permissions() -> Permissions:
    """A consumer that may also send control requests to any agent (`netevents ctl`)."""
    return Permissions(publish_allow=[*_pull_consumer_api(), f"{PREFIX}.control.>"],
                       subscribe_allow=[f"{PREFIX}.>", "_INBOX.>"],
                       subscribe_deny=[f"{PREFIX}.control.>"])


def correlator_permissions(site: str, host: str) -> Permissions:
    """A consumer that may also publish incidents (and its status) as ``<site>.<host>``."""
    site, host = check_token(site, "site"), check_token(host, "host")
    return Permissions(publish_allow=[*_pull_consumer_api(), f"{PREFIX}.incident.{site}.{host}",
                                      f"{PREFIX}.status.{site}.{host}"],
                       subscribe_allow=[f"{PREFIX}.>", "_INBOX.>"],
                       subscribe_deny=[f"{PREFIX}.control.>"])


def admin_permissions() -> Permissions:
    """Creates and changes streams (`netevents streams`); reads events; sends no events."""
    return Permissions(publish_allow=["$JS.API.>", "$JS.ACK.>"],
                       subscribe_allow=[f"{PREFIX}.>", "_INBOX.>"])


def host_token(name: str) -> str:
    """A host name (``web-1.dc1.example.com``, a Kubernetes node name) -> a subject token: every
    character outside ``[A-Za-z0-9_-]`` becomes ``-`` (``web-1-dc1-example-com``). The same
    rule the Kubernetes DaemonSet applies to spec.nodeName (deploy/README.md).

    Raises:
        ConfigError: if nothing usable is left or it is longer than a token may be.
    """
    token = "".join(c if c.isascii() and (c.isalnum() or c in "_-") else "-" for c in name)
    if not token.strip("-") or len(token) > MAX_TOKEN:
        raise ConfigError(f"cannot make a host token of {name!r}")
    return token


@dataclass(slots=True)
class FleetUser:
    """One NATS user: ``agent.<site>.<host>``, ``consumer.<name>``, ``operator.<name>``, ...

    ``password`` is what the server's config holds: a bcrypt hash (``$2b$...``) or, when
    bcrypt is not available here, the password itself.
    """

    name: str
    role: str
    password: str
    site: str | None = None
    host: str | None = None

    def permissions(self) -> Permissions:
        """Raises ConfigError for an unknown role or a missing site/host."""
        site_makers = {"agent": agent_permissions, "leaf": leaf_permissions,
                       "correlator": correlator_permissions}
        if self.role in site_makers:
            if not (self.site and self.host):
                raise ConfigError(f"user {self.name}: a {self.role} needs a site and a host")
            return site_makers[self.role](self.site, self.host)
        makers = {"consumer": consumer_permissions, "operator": operator_permissions,
                  "admin": admin_permissions}
        if self.role not in makers:
            raise ConfigError(f"user {self.name}: unknown role {self.role!r} (roles: {', '.join(ROLES)})")
        return makers[self.role]()


def user_name(role: str, name: str, site: str | None = None) -> str:
    """``agent.<site>.<host>`` for agents, ``<role>.<name>`` for the others (dots keep the
    parts apart: site ``a-b`` + host ``c`` differs from site ``a`` + host ``b-c``)."""
    if role in ("agent", "leaf"):
        return f"{role}.{check_token(site, 'site')}.{check_token(name, 'host')}"
    return f"{role}.{check_token(name, 'name')}"


def _conf_value(value: Any, indent: str) -> str:
    """A value in NATS config syntax (JSON-like; strings double-quoted, so ``$`` in a bcrypt
    hash is not read as a variable reference)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        inner = indent + "  "
        return "[\n" + "".join(f"{inner}{_conf_value(v, inner)}\n" for v in value) + indent + "]"
    if isinstance(value, dict):
        inner = indent + "  "
        body = "".join(f"{inner}{k}: {_conf_value(v, inner)}\n" for k, v in value.items())
        return "{\n" + body + indent + "}"
    raise TypeError(f"no NATS config form for {type(value).__name__}")


def render_authorization(users: list[FleetUser]) -> str:
    """The ``authorization { users = [...] }`` block for nats-server (an include file).

    Raises:
        ConfigError: for a user with an unknown role, or two users of one name.
    """
    seen: set[str] = set()
    entries = []
    for u in sorted(users, key=lambda u: u.name):
        if u.name in seen:
            raise ConfigError(f"user {u.name} appears twice")
        seen.add(u.name)
        entries.append({"user": u.name, "password": u.password, "permissions": u.permissions().as_conf()})
    head = ("# Generated by `netevents auth` from fleet.json: do not edit, re-run `netevents auth "
            "render`.\n# Included by the server configs in deploy/nats/ (include \"auth.conf\").\n")
    return head + "authorization " + _conf_value({"users": entries}, "") + "\n"


def hash_password(password: str) -> str:
    """bcrypt of ``password`` (what nats-server compares against) when the C library offers
    it; otherwise the password itself (nats-server accepts plain passwords too).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt  # libxcrypt has bcrypt; the module is gone in Python 3.13

        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 10))
    except (ImportError, ValueError, OSError, AttributeError):
        return password
    return hashed if hashed and hashed.startswith("$2") else password


def bus_url_with_user(url: str, user: str, password: str) -> str:
    """``nats://host:4222`` -> ``nats://user:password@host:4222`` (the password is URL-safe)."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise ConfigError(f"--bus {url!r}: not a URL like nats://host:4222")
    netloc = f"{user}:{password}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# ---------------------------------------------------------------------------------------------
# The shell: a fleet directory

class Fleet:
    """A directory with ``fleet.json`` (the users; hashes only when bcrypt is available),
    ``auth.conf`` (rendered, included by the server) and ``credentials/<user>.env`` (mode 0600,
    ``NETEVENTS_BUS=nats://user:password@server:port``, an EnvironmentFile / Secret)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.users: dict[str, FleetUser] = {}
        path = self.root / "fleet.json"
        if path.exists():
            try:
                doc = json.loads(path.read_text())
                for u in doc["users"]:
                    self.users[u["name"]] = FleetUser(**u)
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{path}: not a fleet file ({exc})") from None

    def add(self, role: str, name: str, bus: str, *, site: str | None = None,
            host: str | None = None, rotate: bool = False, plain: bool = False) -> tuple[FleetUser, Path]:
        """Add (or with ``rotate`` re-key) a user; write its credentials file and auth.conf.

        Raises:
            ConfigError: if the user exists and ``rotate`` is not set, or a token is invalid.
        """
        uname = user_name(role, host if role in ("agent", "leaf") else name, site)
        if uname in self.users and not rotate:
            raise ConfigError(f"user {uname} exists already (--rotate gives it a new password)")
        password = secrets.token_urlsafe(24)
        user = FleetUser(uname, role, password if plain else hash_password(password), site, host)
        user.permissions()  # validates role, site and host before anything is written
        self.users[uname] = user
        env = self.root / "credentials" / f"{uname}.env"
        lines = [f"NETEVENTS_BUS={bus_url_with_user(bus, uname, password)}"]
        if role == "agent":
            lines += [f"NETEVENTS_SITE={site}", f"NETEVENTS_HOST={host}"]
        self._write(env, "\n".join(lines) + "\n")
        self.save()
        return user, env

    def remove(self, uname: str) -> None:
        if self.users.pop(uname, None) is None:
            raise ConfigError(f"no user {uname} in {self.root / 'fleet.json'}")
        (self.root / "credentials" / f"{uname}.env").unlink(missing_ok=True)
        self.save()

    def save(self) -> Path:
        doc = {"users": [asdict(u) for u in sorted(self.users.values(), key=lambda u: u.name)]}
        self._write(self.root / "fleet.json", json.dumps(doc, indent=1) + "\n")
        conf = self.root / "auth.conf"
        self._write(conf, render_authorization(list(self.users.values())))
        return conf

    @staticmethod
    def _write(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)

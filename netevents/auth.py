"""Per-host NATS credentials: who may publish and read what, and the server's auth block.

    Permissions            what one user may publish and subscribe to (NATS subject lists)
    inbox_prefix           ``_INBOX.<user>``: the only inboxes a user may subscribe to
    agent_permissions      a host agent: its own event subjects, control subject and inbox
    consumer_permissions   read-only: events plus the JetStream API of the durables it owns
    operator_permissions   a consumer that may also send control requests (`netevents ctl`)
    correlator_permissions a consumer that may also publish its own incidents
    admin_permissions      creates and changes the streams (`netevents streams`)
    FleetUser              one user of the fleet: name, role, site/host, password (bcrypt or
                           plain), the durables it owns, an operator's public key
    render_authorization   users -> the NATS ``authorization { users = [...] }`` block (text)
    new_operator_key, ...  ed25519 keys that sign control requests (netevents/agent/control.py)
    Fleet                  the shell: a directory holding fleet.json, auth.conf, operators.pub
                           and one credentials env file per user; `netevents auth ...` drives it

Everything above Fleet is sans-IO. The NATS server enforces the permissions: an agent holding
web-1's credentials that publishes as web-2 gets a permissions violation and the message goes
nowhere; no user but admin reads another's inbox; a consumer touches only its own durables
(tests/deploy/test_permissions.py and test_attacks.py show it with a real server).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import warnings
from collections.abc import Iterable, Sequence
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


def inbox_prefix(user: str) -> str:
    """``_INBOX.<user>``: the inbox prefix a client of ``user`` uses (netevents.bus.connect sets
    it from the URL's user) and the only inboxes that user may subscribe to. User names are
    dot-separated tokens whose first token is the role, so no user's prefix covers another's."""
    return f"_INBOX.{user}"


def agent_permissions(site: str, host: str) -> Permissions:
    """A host agent: publish its own events, answer its own control subject, nothing else.

    ``netevents.v1.*.<site>.<host>`` also matches the control and incident kinds, which are not
    the agent's to send: both are denied explicitly (an agent must not command another agent
    or forge a correlator's conclusion). JetStream acks of its publishes come back on its own
    inbox (``_INBOX.agent.<site>.<host>.>``, the only inbox it may read), so acked publishing
    needs no ``$JS`` permission at all. ``allow_responses`` lets it answer what it received,
    which is only what operators publish on its control subject (the agent itself answers
    only ``_INBOX`` reply subjects, never a JetStream one).
    """
    site, host = check_token(site, "site"), check_token(host, "host")
    return Permissions(
        publish_allow=[f"{PREFIX}.*.{site}.{host}"],
        publish_deny=[f"{PREFIX}.control.>", f"{PREFIX}.incident.>"],
        subscribe_allow=[f"{PREFIX}.control.{site}.{host}",
                         f"{inbox_prefix(user_name('agent', host, site))}.>"],
        allow_responses=True)


def leaf_permissions(site: str, host: str) -> Permissions:
    """The hub's view of a host's leaf node (deploy/nats/leaf.conf): the agent's permissions,
    plus publishing into operators' inboxes. Over a leaf connection the hub forwards only what
    the leaf's user may publish and ``allow_responses`` does not carry the agent's control
    replies back, so the replies need that allowance; it reaches no consumer's, admin's or
    agent's inbox and no JetStream reply subject. The leaf receives the host agent's inbox."""
    perm = agent_permissions(site, host)
    perm.publish_allow.append(f"{inbox_prefix('operator')}.>")
    perm.subscribe_allow.append(f"{inbox_prefix(user_name('leaf', host, site))}.>")
    return perm


def durable_names(durables: Iterable[str]) -> dict[str, list[str]]:
    """Stream -> the JetStream consumer names of ``durables``: ``Bus.subscribe(durable=D)``
    makes one consumer ``D-<kind>`` per kind, on the stream of that kind."""
    from .events import STREAM_OF

    out: dict[str, list[str]] = {s: [] for s in STREAMS}
    for d in durables:
        check_token(d, "durable")
        for kind, stream in STREAM_OF.items():
            out[stream].append(f"{d}-{kind}")
    return out


def _pull_consumer_api(durables: Iterable[str]) -> list[str]:
    """The JetStream API subjects a durable pull consumer of our streams uses (nats-py), for
    the durables this user owns and no other: create (the named and the filtered subject:
    a restarted archive re-creates its consumer at the ack floor), info, delete, fetch
    (MSG.NEXT) and acks; stream info. No unnamed (ephemeral) create, no consumer list, no
    access to anyone else's consumer. STREAM.CREATE of exactly our three streams is included
    because ``Bus.subscribe(durable=...)`` makes sure they exist first (creating an existing
    stream with its own config is a no-op; a different config is refused by the server, so
    this cannot change a stream)."""
    api = ["$JS.API.INFO"]
    for s, names in durable_names(durables).items():
        api += [f"$JS.API.STREAM.INFO.{s}", f"$JS.API.STREAM.CREATE.{s}"]
        for c in names:
            api += [f"$JS.API.CONSUMER.CREATE.{s}.{c}", f"$JS.API.CONSUMER.CREATE.{s}.{c}.>",
                    f"$JS.API.CONSUMER.INFO.{s}.{c}", f"$JS.API.CONSUMER.DELETE.{s}.{c}",
                    f"$JS.API.CONSUMER.MSG.NEXT.{s}.{c}", f"$JS.ACK.{s}.{c}.>"]
    return api


def _reader(user: str, durables: Sequence[str] | None, name: str, extra: list[str]) -> Permissions:
    return Permissions(publish_allow=[*_pull_consumer_api([name] if durables is None else durables),
                                      *extra],
                       publish_deny=[] if extra else [f"{PREFIX}.>"],
                       subscribe_allow=[f"{PREFIX}.>", f"{inbox_prefix(user)}.>"],
                       subscribe_deny=[f"{PREFIX}.control.>"])


def consumer_permissions(name: str, durables: Sequence[str] | None = None) -> Permissions:
    """Read-only ``consumer.<name>``: every event subject, live or through the durables it owns
    (default: one named like the user, ``netevents archive --durable <name>``); publishes no
    event and no control request (both denied explicitly), reads no control requests."""
    return _reader(user_name("consumer", name), durables, name, [])


def operator_permissions(name: str, durables: Sequence[str] | None = None) -> Permissions:
    """A consumer that may also send control requests to any agent (`netevents ctl`, signed
    with the operator's key: the agents check the signature, not this permission)."""
    return _reader(user_name("operator", name), durables, name, [f"{PREFIX}.control.>"])


def correlator_permissions(site: str, host: str, name: str = "correlate",
                           durables: Sequence[str] | None = None) -> Permissions:
    """A consumer that may also publish incidents (and its status) as ``<site>.<host>``."""
    site, host = check_token(site, "site"), check_token(host, "host")
    return _reader(user_name("correlator", name), durables, name,
                   [f"{PREFIX}.incident.{site}.{host}", f"{PREFIX}.status.{site}.{host}"])


def admin_permissions() -> Permissions:
    """Creates and changes streams (`netevents streams`); reads events and every inbox; sends
    no events."""
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
    durables: list[str] | None = None
    """Durable names a consumer, operator or correlator owns (None: one named like the user)."""
    key: str | None = None
    """An operator's public key (``ed25519:<base64>``), which agents trust for control."""

    def permissions(self) -> Permissions:
        """Raises ConfigError for an unknown role or a missing site/host."""
        if self.role not in ROLES:
            raise ConfigError(f"user {self.name}: unknown role {self.role!r} (roles: {', '.join(ROLES)})")
        short = self.name.partition(".")[2]
        if self.role in ("agent", "leaf", "correlator") and not (self.site and self.host):
            raise ConfigError(f"user {self.name}: a {self.role} needs a site and a host")
        if self.role in ("agent", "leaf"):
            maker = agent_permissions if self.role == "agent" else leaf_permissions
            return maker(self.site, self.host)
        if self.role == "correlator":
            return correlator_permissions(self.site, self.host, short, self.durables)
        if self.role == "consumer":
            return consumer_permissions(short, self.durables)
        if self.role == "operator":
            return operator_permissions(short, self.durables)
        return admin_permissions()


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
# Operator keys: ed25519, written ``ed25519:<base64>`` (a private key is its 32-byte seed)

KEY_PREFIX = "ed25519:"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _key_bytes(text: str, what: str) -> bytes:
    text = text.strip()
    if not text.startswith(KEY_PREFIX):
        raise ConfigError(f"{what}: not an ed25519 key ({KEY_PREFIX}<base64>): {text[:20]!r}")
    try:
        raw = base64.b64decode(text[len(KEY_PREFIX):], validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"{what}: not an ed25519 key ({KEY_PREFIX}<base64 of 32 bytes>)")
    return raw


def new_operator_key() -> tuple[str, str]:
    """A fresh key pair: (private ``ed25519:<seed>``, public ``ed25519:<key>``)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    seed = secrets.token_bytes(32)
    pub = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)
    return KEY_PREFIX + _b64(seed), KEY_PREFIX + _b64(pub)


def _text_or_file(value: str, what: str) -> str:
    """``value`` itself when it holds a key, else the contents of the file it names."""
    if KEY_PREFIX in value:
        return value
    try:
        return Path(value).read_text()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {value}: {exc.strerror}") from None


def load_signing_key(value: str, what: str = "--operator-key") -> Any:
    """An operator's private key from ``ed25519:<seed>`` or a file holding it (the
    ``NETEVENTS_OPERATOR_KEY=`` line `netevents auth operator` writes works too).

    Raises:
        ConfigError: if there is no readable key.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    text = _text_or_file(value, what)
    token = next((KEY_PREFIX + t.partition(KEY_PREFIX)[2] for t in text.split() if KEY_PREFIX in t), text)
    return Ed25519PrivateKey.from_private_bytes(_key_bytes(token, what))


def load_trusted_keys(value: str, what: str = "operator_keys") -> list[Any]:
    """Operator public keys from ``ed25519:<key>`` items (comma or space separated) or a file
    of them (``operators.pub``: one key per line, then the user; ``#`` comments).

    Raises:
        ConfigError: if a key does not parse or there is none.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    text = _text_or_file(value, what)
    lines = [ln.split("#", 1)[0] for ln in text.splitlines()]
    tokens = [t for ln in lines for t in ln.replace(",", " ").split() if t.startswith(KEY_PREFIX)]
    if not tokens:
        raise ConfigError(f"{what}: no {KEY_PREFIX} key in {value[:60]!r}")
    return [Ed25519PublicKey.from_public_bytes(_key_bytes(t, what)) for t in tokens]


def sign(key: Any, data: bytes) -> str:
    """The base64 ed25519 signature of ``data``."""
    return _b64(key.sign(data))


def verify(keys: Iterable[Any], data: bytes, signature: str) -> bool:
    """Whether ``signature`` (base64) is one of ``keys``' signature of ``data``."""
    from cryptography.exceptions import InvalidSignature

    try:
        raw = base64.b64decode(signature, validate=True)
    except (ValueError, TypeError):
        return False
    for k in keys:
        try:
            k.verify(raw, data)
            return True
        except InvalidSignature:
            continue
    return False


# ---------------------------------------------------------------------------------------------
# The shell: a fleet directory

class Fleet:
    """A directory with ``fleet.json`` (the users; hashes only when bcrypt is available),
    ``auth.conf`` (rendered, included by the server), ``operators.pub`` (the operators' public
    keys, which agents trust for control requests) and ``credentials/<user>.env`` (mode 0600,
    ``NETEVENTS_BUS=nats://user:password@server:port``, an EnvironmentFile / Secret; an
    operator's also holds its private key, ``NETEVENTS_OPERATOR_KEY``)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.users: dict[str, FleetUser] = {}
        self.routes: dict[str, Any] = {}
        """The cluster's route user: ``{"nodes": [host:port, ...], "password": ...}``."""
        path = self.root / "fleet.json"
        if path.exists():
            try:
                doc = json.loads(path.read_text())
                for u in doc["users"]:
                    self.users[u["name"]] = FleetUser(**u)
                self.routes = dict(doc.get("routes") or {})
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{path}: not a fleet file ({exc})") from None

    def add(self, role: str, name: str, bus: str, *, site: str | None = None,
            host: str | None = None, rotate: bool = False, plain: bool = False,
            durables: Sequence[str] | None = None) -> tuple[FleetUser, Path]:
        """Add (or with ``rotate`` re-key) a user; write its credentials file and auth.conf.

        Raises:
            ConfigError: if the user exists and ``rotate`` is not set, or a token is invalid.
        """
        uname = user_name(role, host if role in ("agent", "leaf") else name, site)
        if uname in self.users and not rotate:
            raise ConfigError(f"user {uname} exists already (--rotate gives it a new password)")
        password = secrets.token_urlsafe(24)
        user = FleetUser(uname, role, password if plain else hash_password(password), site, host,
                         list(durables) if durables else None)
        user.permissions()  # validates role, site, host and durables before anything is written
        env = self.root / "credentials" / f"{uname}.env"
        lines = [f"NETEVENTS_BUS={bus_url_with_user(bus, uname, password)}"]
        if role == "operator":
            private, user.key = new_operator_key()
            lines.append(f"NETEVENTS_OPERATOR_KEY={private}")
        self.users[uname] = user
        if role == "agent":
            lines += [f"NETEVENTS_SITE={site}", f"NETEVENTS_HOST={host}"]
            trusted = self.operator_keys()
            if trusted:  # operators added later: ship operators.pub (--operator-keys FILE)
                lines.append(f"NETEVENTS_OPERATOR_KEYS={','.join(trusted)}")
        self._write(env, "\n".join(lines) + "\n")
        self.save()
        return user, env

    def remove(self, uname: str) -> None:
        if self.users.pop(uname, None) is None:
            raise ConfigError(f"no user {uname} in {self.root / 'fleet.json'}")
        (self.root / "credentials" / f"{uname}.env").unlink(missing_ok=True)
        self.save()

    def set_routes(self, nodes: Sequence[str], rotate: bool = False) -> Path:
        """The cluster's routes between ``nodes`` (``host:port`` of each node's cluster
        listener), authenticated by one route user; writes ``routes.conf``, which every node
        includes inside ``cluster { }`` (deploy/nats/cluster-N.conf). A node skips the route to
        itself.

        Raises:
            ConfigError: for a node that is not host:port.
        """
        for n in nodes:
            host, sep, port = n.rpartition(":")
            if not sep or not host or not port.isdigit() or any(c in host for c in "@/ \"'"):
                raise ConfigError(f"route node {n!r}: not host:port (the cluster listener)")
        password = self.routes.get("password") if not rotate else None
        self.routes = {"nodes": list(nodes), "password": password or secrets.token_urlsafe(24)}
        self.save()
        return self.root / "routes.conf"

    def _render_routes(self) -> str:
        pw = self.routes["password"]
        urls = "".join(f"  {json.dumps(f'nats-route://route:{pw}@{n}')}\n" for n in self.routes["nodes"])
        return ("# Generated by `netevents auth routes`: include it inside cluster { } on every node.\n"
                "# Routes log in as this user; a server without the password cannot join.\n"
                f"authorization {{\n  user: \"route\"\n  password: {json.dumps(hash_password(pw))}\n"
                f"  timeout: 2\n}}\nroutes: [\n{urls}]\n")

    def operator_keys(self) -> list[str]:
        """The public keys of the fleet's operators."""
        return [u.key for u in sorted(self.users.values(), key=lambda u: u.name)
                if u.role == "operator" and u.key]

    def save(self) -> Path:
        doc: dict[str, Any] = {"users": [asdict(u) for u in sorted(self.users.values(), key=lambda u: u.name)]}
        if self.routes:
            doc["routes"] = self.routes
            self._write(self.root / "routes.conf", self._render_routes())
        self._write(self.root / "fleet.json", json.dumps(doc, indent=1) + "\n")
        pub = "".join(f"{u.key} {u.name}\n" for u in sorted(self.users.values(), key=lambda u: u.name)
                      if u.role == "operator" and u.key)
        self._write(self.root / "operators.pub",
                    "# operator keys agents trust for control requests (--operator-keys FILE)\n" + pub)
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

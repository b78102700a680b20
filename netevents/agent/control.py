"""The agent's control server: requests on ``netevents.v1.control.<site>.<host>``, answered.

A request is a JSON object or a msgpack map, ``{"cmd": "level", "value": "diagnostics"}``; the
reply uses the same encoding:

    {"ok": true,  "cmd": "level", "host": "h1", "site": "local", "result": {...}}
    {"ok": false, "cmd": "level", "host": "h1", "site": "local", "error": "unknown level 'x' ..."}

Commands are registered per name by whoever owns them (a source adds its commands with
:meth:`ControlServer.register`, or hands over ``control_commands()`` and the agent registers
them with :meth:`ControlServer.register_source`). A handler gets the request map and returns the
result map (or an awaitable of it); it raises ``ValueError`` or ``ConfigError`` for a bad value,
which becomes an error reply with nothing changed. Unknown commands and undecodable requests get
an error reply too; nothing a requester sends can stop the server.

Usage from the agent command, with the :class:`~netevents.bus.Bus` it already holds::

    control = ControlServer(bus, site, host)
    for c in collectors:
        control.register_source(c)
    async with control:
        await runner.run(stop)

and from a client: ``await control_request(bus, host, "level", "diagnostics", site=site,
key=operator_key)``.

Only an operator commands an agent, whatever path a request took (a stream redelivery, a push
consumer someone pointed at the control subject, a reader replaying what it saw): an agent
that trusts operator keys (``trusted_keys``, ``[agent] operator_keys``,
``$NETEVENTS_OPERATOR_KEYS``; `netevents auth operator` makes them) serves a request only if it
carries an ed25519 signature of one of them over the whole request -- command, value, target
site and host, a timestamp within :data:`WINDOW` seconds and a nonce it has not seen (replay
protection). An agent on an authenticated bus that trusts no key refuses every request; only
an anonymous local bus (`netevents up`) serves unsigned ones. Replies go only to ``_INBOX``
reply subjects, never to a JetStream ack subject.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from netevents.auth import load_signing_key, load_trusted_keys, sign, verify
from netevents.errors import BusError, ConfigError
from netevents.subjects import control_subject

log = logging.getLogger("netevents.agent.control")

Handler = Callable[[dict[str, Any]], "dict[str, Any] | Awaitable[dict[str, Any]]"]

MAX_REQUEST_BYTES = 64 * 1024
WINDOW = 60.0
"""Seconds a signed request is valid either side of its timestamp; its nonce is remembered
that long, so a replay within the window is refused as one and after it as too old."""
_SIGNED = b"netevents-control-v1\n"


def signed_bytes(req: dict[str, Any]) -> bytes:
    """What an operator signs: every field of the request but ``sig``, canonical JSON."""
    body = {k: v for k, v in req.items() if k != "sig"}
    return _SIGNED + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def signed_request(key: Any, site: str, host: str, cmd: str, value: Any = None, *,
                   now: float | None = None) -> dict[str, Any]:
    """A control request for ``site``/``host`` signed with an operator's private key."""
    req: dict[str, Any] = {"cmd": cmd, "site": site, "host": host,
                           "ts": round(time.time() if now is None else now, 3),
                           "nonce": secrets.token_hex(12)}
    if value is not None:
        req["value"] = value
    req["sig"] = sign(key, signed_bytes(req))
    return req


class ControlRequestError(Exception):
    """A request that cannot be served: the message goes back in the error reply."""


def decode_request(data: bytes) -> tuple[dict[str, Any], str]:
    """A request payload -> (map, encoding ``"json"`` or ``"msgpack"``).

    Raises:
        ControlRequestError: if it is too large, neither JSON nor msgpack, or not a map with a
            string ``cmd``.
    """
    if len(data) > MAX_REQUEST_BYTES:
        raise ControlRequestError(f"request of {len(data)} bytes is larger than {MAX_REQUEST_BYTES}")
    stripped = data.lstrip()
    if stripped[:1] == b"{":
        try:
            req, enc = json.loads(stripped), "json"
        except (ValueError, UnicodeDecodeError) as exc:
            raise ControlRequestError(f"request is not valid JSON: {exc}") from None
    else:
        try:
            req, enc = msgpack.unpackb(data, raw=False, strict_map_key=True), "msgpack"
        except Exception as exc:  # msgpack raises several unrelated types on bad input
            raise ControlRequestError(f"request is neither JSON nor msgpack: {type(exc).__name__}") from None
    if not isinstance(req, dict):
        raise ControlRequestError(f"request must be a map, not {type(req).__name__}")
    if not isinstance(req.get("cmd"), str):
        raise ControlRequestError("request has no 'cmd' string")
    return req, enc


def encode(reply: dict[str, Any], encoding: str) -> bytes:
    if encoding == "json":
        return json.dumps(reply, separators=(",", ":")).encode()
    return msgpack.packb(reply, use_bin_type=True)


class ControlServer:
    """Serves control requests for one agent (one site/host) over the bus."""

    def __init__(self, bus: Any, site: str, host: str, trusted_keys: Any = None) -> None:
        """``trusted_keys``: operator public keys (objects, or ``ed25519:...`` text or a file
        of them); default ``$NETEVENTS_OPERATOR_KEYS``.

        Raises:
            ConfigError: if the keys do not load.
        """
        self.bus = bus
        self.site = site
        self.host = host
        self.subject = control_subject(site, host)
        self.handlers: dict[str, Handler] = {"commands": self._commands}
        self.served: Counter[str] = Counter()
        """Replies sent, by outcome (``ok``, ``error``) for status and tests."""
        self.refused: Counter[str] = Counter()
        """Requests refused before any command ran, by reason (``unsigned``, ``signature``,
        ``target``, ``stale``, ``replay``, ``no-key``), and replies withheld (``reply``)."""
        if trusted_keys is None:
            trusted_keys = os.environ.get("NETEVENTS_OPERATOR_KEYS") or None
        if isinstance(trusted_keys, str):
            trusted_keys = load_trusted_keys(trusted_keys)
        self.trusted: list[Any] = list(trusted_keys or [])
        self.require_signature = bool(self.trusted) or getattr(bus, "user", None) is not None
        """Signed requests only: keys are trusted, or the bus knows us as a user (a fleet)."""
        self._nonces: dict[str, float] = {}
        self._sub: Any = None

    def register(self, cmd: str, handler: Handler) -> None:
        """Add a command.

        Raises:
            ValueError: if ``cmd`` is already registered (two owners of one command).
        """
        if cmd in self.handlers:
            raise ValueError(f"control command {cmd!r} is already registered")
        self.handlers[cmd] = handler

    def register_source(self, source: Any) -> None:
        """Register the commands of a source that offers ``control_commands()``; others are skipped."""
        commands = getattr(source, "control_commands", None)
        if commands is None:
            return
        for cmd, handler in commands().items():
            self.register(cmd, handler)

    def _commands(self, _req: dict[str, Any]) -> dict[str, Any]:
        return {"commands": sorted(self.handlers)}

    def _refuse(self, reason: str, text: str) -> None:
        self.refused[reason] += 1
        log.warning("control request refused (%s): %s", reason, text)
        raise ControlRequestError(f"refused: {text}")

    def authorize(self, req: dict[str, Any], now: float | None = None) -> None:
        """Check that an operator sent ``req`` for this agent, now, once.

        Raises:
            ControlRequestError: naming why it is refused (counted in :attr:`refused`).
        """
        if not self.require_signature:
            return
        if not self.trusted:
            self._refuse("no-key", "this agent trusts no operator key (set [agent] operator_keys "
                         "or $NETEVENTS_OPERATOR_KEYS from `netevents auth operator`)")
        sig = req.get("sig")
        if not isinstance(sig, str):
            self._refuse("unsigned", "unsigned request: only requests signed by an operator key "
                         "are served (netevents ctl --operator-key)")
        if not verify(self.trusted, signed_bytes(req), sig):
            self._refuse("signature", "the signature is not one of a trusted operator key")
        if req.get("site") != self.site or req.get("host") != self.host:
            self._refuse("target", f"signed for {req.get('site')}/{req.get('host')}, "
                         f"this is {self.site}/{self.host}")
        now = time.time() if now is None else now
        ts, nonce = req.get("ts"), req.get("nonce")
        if not isinstance(ts, (int, float)) or isinstance(ts, bool) or abs(now - ts) > WINDOW:
            self._refuse("stale", f"timestamp {ts!r} is not within {WINDOW:g}s of now")
        if not isinstance(nonce, str) or not 8 <= len(nonce) <= 64:
            self._refuse("signature", "no nonce")
        for old, seen in list(self._nonces.items()):
            if now - seen > 2 * WINDOW:
                del self._nonces[old]
        if nonce in self._nonces:
            self._refuse("replay", "this request was served already")
        self._nonces[nonce] = now

    async def handle(self, data: bytes) -> bytes:
        """One request payload -> the reply payload. Never raises for anything the requester sent."""
        encoding = "json"
        reply: dict[str, Any] = {"ok": False, "site": self.site, "host": self.host}
        try:
            req, encoding = decode_request(data)
            cmd = reply["cmd"] = req["cmd"]
            self.authorize(req)
            handler = self.handlers.get(cmd)
            if handler is None:
                raise ControlRequestError(
                    f"unknown command {cmd!r} (commands: {', '.join(sorted(self.handlers))})")
            result = handler(req)
            if inspect.isawaitable(result):
                result = await result
            reply["ok"] = True
            reply["result"] = result
        except (ControlRequestError, ValueError, ConfigError) as exc:
            reply["error"] = str(exc)
        except Exception as exc:  # a broken handler is an error reply, not a dead server
            log.exception("control command failed")
            reply["error"] = f"internal error: {type(exc).__name__}: {exc}"
        self.served["ok" if reply["ok"] else "error"] += 1
        return encode(reply, encoding)

    async def _on_msg(self, msg: Any) -> None:
        payload = await self.handle(msg.data)
        if msg.reply and not msg.reply.startswith("_INBOX."):
            # A JetStream delivery ($JS.ACK...) or anything else that is not a requester's
            # inbox: answering could acknowledge someone's messages away.
            self.refused["reply"] += 1
            log.warning("control reply withheld: reply subject %s is not an inbox", msg.reply)
        elif msg.reply:
            try:
                await msg.respond(payload)
            except Exception as exc:  # the requester went away; nothing else to do
                log.debug("control reply failed: %s", exc)

    async def start(self) -> ControlServer:
        """Subscribe to the control subject.

        Raises:
            BusError: if the subscription fails.
        """
        try:
            self._sub = await self.bus.nc.subscribe(self.subject, cb=self._on_msg)
            await self.bus.nc.flush()
        except Exception as exc:
            raise BusError(f"cannot serve control requests on {self.subject}: {exc}") from exc
        return self

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # closing anyway
                log.debug("control unsubscribe failed: %s", exc)

    async def __aenter__(self) -> ControlServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def control_request(bus: Any, host: str, cmd: str, value: Any = None, *,
                          site: str = "local", timeout: float = 5.0,
                          key: Any = None) -> dict[str, Any]:
    """Send one control request and return the decoded reply map.

    ``key``: the operator's private key (an object, or ``ed25519:...`` text or a file holding
    it; default ``$NETEVENTS_OPERATOR_KEY``) that signs the request; without one it goes
    unsigned, which only an agent on an anonymous local bus serves.

    Raises:
        SubjectError: for an invalid site or host token.
        ConfigError: if the key does not load.
        TimeoutError: if no agent answered within ``timeout`` seconds.
        BusError: for other bus failures.
    """
    import nats.errors

    subject = control_subject(site, host)
    key = key if key is not None else os.environ.get("NETEVENTS_OPERATOR_KEY") or None
    if isinstance(key, str):
        key = load_signing_key(key)
    if key is not None:
        req = signed_request(key, site, host, cmd, value)
    else:
        req = {"cmd": cmd}
        if value is not None:
            req["value"] = value
    try:
        msg = await bus.nc.request(subject, json.dumps(req).encode(), timeout=timeout)
    except nats.errors.NoRespondersError:
        raise TimeoutError(f"no agent serves control requests on {subject}") from None
    except nats.errors.TimeoutError:
        refused = bus.violation(subject) if hasattr(bus, "violation") else None
        if refused:  # the server threw the request away: say so, not "no reply"
            raise BusError(f"control request on {subject} refused: {refused}") from None
        raise TimeoutError(f"no reply from {host} on {subject} within {timeout:g}s") from None
    except (nats.errors.Error, OSError) as exc:
        refused = bus.violation(subject) if hasattr(bus, "violation") else None
        raise BusError(f"control request on {subject} failed: {refused or exc}") from exc
    try:
        reply = json.loads(msg.data)
    except ValueError:
        raise BusError(f"the reply on {subject} is not JSON: {msg.data[:80]!r}") from None
    if not isinstance(reply, dict):
        raise BusError(f"the reply on {subject} is not a map: {reply!r}")
    return reply

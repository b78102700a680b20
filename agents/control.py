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

and from a client: ``await control_request(bus, host, "level", "diagnostics", site=site)``.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from netevents.errors import BusError, ConfigError
from netevents.subjects import control_subject

log = logging.getLogger("netevents.agent.control")

Handler = Callable[[dict[str, Any]], "dict[str, Any] | Awaitable[dict[str, Any]]"]

MAX_REQUEST_BYTES = 64 * 1024


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

    def __init__(self, bus: Any, site: str, host: str) -> None:
        self.bus = bus
        self.site = site
        self.host = host
        self.subject = control_subject(site, host)
        self.handlers: dict[str, Handler] = {"commands": self._commands}
        self.served: Counter[str] = Counter()
        """Replies sent, by outcome (``ok``, ``error``) for status and tests."""
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

    async def handle(self, data: bytes) -> bytes:
        """One request payload -> the reply payload. Never raises for anything the requester sent."""
        encoding = "json"
        reply: dict[str, Any] = {"ok": False, "site": self.site, "host": self.host}
        try:
            req, encoding = decode_request(data)
            cmd = reply["cmd"] = req["cmd"]
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
        if msg.reply:
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
                          site: str = "local", timeout: float = 5.0) -> dict[str, Any]:
    """Send one control request and return the decoded reply map.

    Raises:
        SubjectError: for an invalid site or host token.
        TimeoutError: if no agent answered within ``timeout`` seconds.
        BusError: for other bus failures.
    """
    import nats.errors

    req: dict[str, Any] = {"cmd": cmd}
    if value is not None:
        req["value"] = value
    subject = control_subject(site, host)
    try:
        msg = await bus.nc.request(subject, json.dumps(req).encode(), timeout=timeout)
    except nats.errors.NoRespondersError:
        raise TimeoutError(f"no agent serves control requests on {subject}") from None
    except nats.errors.TimeoutError:
        raise TimeoutError(f"no reply from {host} on {subject} within {timeout:g}s") from None
    except (nats.errors.Error, OSError) as exc:
        raise BusError(f"control request on {subject} failed: {exc}") from exc
    try:
        reply = json.loads(msg.data)
    except ValueError:
        raise BusError(f"the reply on {subject} is not JSON: {msg.data[:80]!r}") from None
    if not isinstance(reply, dict):
        raise BusError(f"the reply on {subject} is not a map: {reply!r}")
    return reply

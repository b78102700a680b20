"""The way in of a connection's core subscriptions: from the socket to a handler, past nats-py's
per-message machinery.

:func:`routes` gives a connection's table of subscription id -> ``handler(subject, data)``. A
message of a subscription in that table goes to its handler as soon as its bytes are read:

- **the reader**: the connection's protocol parser (``nc._ps``) reads the complete messages at
  the front of its buffer in one call (:func:`scan`: ``netevents.bus._cnats`` in C, or the same
  in Python) and hands each to its handler; any other operation (PING, INFO, -ERR, +OK) goes to
  nats-py's own parser, one line at a time. nats-py's parser matches a regular expression per
  message, copies its bytes twice and awaits a coroutine for each.
- **the message hook**: whatever nats-py's parser still delivers (``nc._process_msg``: a message
  it had half read when the reader was installed, or every message when the reader cannot be
  installed) goes to the handler too, without nats-py's header parse, ``Msg`` object, queue and
  callback task.

Messages of other subscriptions (JetStream pulls, request replies) take nats-py's path
(``_process_msg``), in the order they came. Both parts are installed only when nats-py's
private API is what this module knows (the signature of ``_process_msg``, the parser's buffer
and state); otherwise nats-py's path is kept, which costs CPU and loses nothing.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from nats.errors import ProtocolError
from nats.protocol import parser as nats_parser

log = logging.getLogger("netevents.bus")

_PROCESS_MSG_ARGS = ("sid", "subject", "reply", "data", "headers")
MAX_CONTROL_LINE = nats_parser.MAX_CONTROL_LINE_SIZE
"""nats-py's longest control line (4096, also the server's default; _cnats.c has the same)."""

END, OTHER, MALFORMED = 0, 1, 2
"""Why :func:`scan` stopped: the buffer ends (or its last message is incomplete), another
operation starts there, or a MSG/HMSG line there is malformed."""


def scan_py(buf: bytes | bytearray) -> tuple[int, list[tuple], int]:
    """The complete MSG and HMSG messages at the front of ``buf``, as ``(consumed, [(sid, subject,
    reply, payload, headers or None)], stop)``: what ``_cnats.scan`` returns, in Python (without
    the C extension, and the reference its tests hold it to)."""
    items: list[tuple] = []
    pos, n = 0, len(buf)
    while pos < n:
        head = bytes(buf[pos:pos + 5])
        if head[:3] == b"MSG" and head[3:4] in (b" ", b"\t"):
            headers, skip = False, 3
        elif head[:4] == b"HMSG" and head[4:5] in (b" ", b"\t"):
            headers, skip = True, 4
        else:
            if len(head) < 5 and (b"HMSG".startswith(head[:4]) or b"MSG".startswith(head[:3])):
                break   # the start of a message op, cut by the read: wait
            return pos, items, OTHER
        end = bytes(buf[pos:pos + MAX_CONTROL_LINE]).find(b"\r\n", skip)
        if end < 0:
            return pos, items, (MALFORMED if n - pos >= MAX_CONTROL_LINE else END)
        args = bytes(buf[pos + skip:pos + end]).replace(b"\t", b" ").split()
        base = 4 if headers else 3
        if len(args) not in (base, base + 1):
            return pos, items, MALFORMED
        sid, total = _number(args[1]), _number(args[-1])
        hsize = _number(args[-2]) if headers else 0
        if sid < 0 or total < 0 or hsize < 0 or hsize > total:
            return pos, items, MALFORMED
        body = pos + end + 2
        if n - body < total + 2:
            break   # the payload has not all come: wait
        reply = args[2] if len(args) == base + 1 else b""
        items.append((sid, args[0], reply, bytes(buf[body + hsize:body + total]),
                      bytes(buf[body:body + hsize]) if headers else None))
        pos = body + total + 2
    return pos, items, END


def _number(text: bytes) -> int:
    return int(text) if 0 < len(text) <= 18 and text.isdigit() else -1


try:
    from ._cnats import scan
except ImportError:  # built without a C compiler: the same in Python
    scan = scan_py


def routes(nc: Any) -> dict[int, Any] | None:
    """Subscription id -> ``handler(subject, data)`` for the core subscriptions of ``nc`` (see the
    module's docstring); installed on first use. None when this nats-py has no
    ``_process_msg`` as this module knows it: nats-py's path then.

    A handler must not block: it runs inside the connection's read loop (the subscription's
    decodes and queues the batch). An exception it raises goes to the connection's error
    callback, as nats-py does with a callback's."""
    table = getattr(nc, "_netevents_routes", None)
    if table is not None:
        return table
    slow = getattr(nc, "_process_msg", None)
    if slow is None or not hasattr(nc, "stats") or not hasattr(nc, "_error_cb"):
        return None
    try:  # the parser's call as this module knows it, or nats-py's own path
        if tuple(inspect.signature(slow).parameters) != _PROCESS_MSG_ARGS:
            return None
    except (TypeError, ValueError):
        return None
    table = {}
    stats = nc.stats

    async def process_msg(sid: int, subject: bytes, reply: bytes, data: bytes,
                          headers: bytes | None) -> None:
        route = table.get(sid)
        if route is None:
            return await slow(sid, subject, reply, data, headers)
        failed = _deliver(stats, route, subject, data)
        if failed is not None:
            await nc._error_cb(failed)

    nc._process_msg = process_msg
    nc._netevents_routes = table
    _install_reader(nc, table, slow)
    return table


def _deliver(stats: dict, route: Any, subject: bytes, data: bytes) -> Exception | None:
    """Hand a message to its handler, counted as nats-py counts one; the handler's exception
    is returned for the connection's error callback (as nats-py does with a callback's)."""
    stats["in_msgs"] += 1
    stats["in_bytes"] += len(data)
    try:
        route(subject, data)
    except Exception as exc:  # noqa: BLE001 - reported, never ends the read loop
        return exc
    return None


def _install_reader(nc: Any, table: dict[int, Any], slow: Any) -> bool:
    """Put :func:`scan` in front of the connection's parser (``nc._ps.parse``); False (nats-py's
    parser kept) when the parser is not the one this module knows."""
    ps = getattr(nc, "_ps", None)
    awaiting_line = getattr(nats_parser, "AWAITING_CONTROL_LINE", None)
    if ps is None or awaiting_line is None or type(getattr(ps, "buf", None)) is not bytearray \
            or not hasattr(ps, "state") or not inspect.iscoroutinefunction(getattr(ps, "parse", None)):
        log.debug("nats-py's protocol parser kept (not the one netevents knows)")
        return False
    parse_one = ps.parse   # nats-py's, for everything that is not a message
    stats = nc.stats

    async def parse(data: bytes = b"") -> None:
        if ps.state != awaiting_line:   # nats-py is in the middle of a message: its parser
            await parse_one(data)       # ends it (its messages come by the message hook)
            return
        buf = ps.buf
        buf.extend(data)
        while buf:
            consumed, items, stop = scan(buf)
            if consumed:
                del buf[:consumed]
            for sid, subject, reply, payload, headers in items:
                route = table.get(sid)
                if route is None:
                    await slow(sid, subject, reply, payload, headers)
                elif (failed := _deliver(stats, route, subject, payload)) is not None:
                    await nc._error_cb(failed)
            if stop == END or ps.buf is not buf:   # all read, or the connection was reset
                return
            if stop == MALFORMED:
                raise ProtocolError("nats: malformed MSG")
            end = buf.find(b"\r\n")
            if end < 0:   # the line is not complete: wait (nats-py would, too)
                return
            line = bytearray(buf[:end + 2])
            del buf[:end + 2]
            ps.buf = line
            try:
                await parse_one()   # that one line, by nats-py (it raises on an unknown one)
            finally:
                if ps.buf is line:  # not reset by what the line did (a reconnect)
                    ps.buf = buf
            if ps.buf is not buf:
                return

    ps.parse = parse
    return True

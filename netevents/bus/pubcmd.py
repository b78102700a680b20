"""PUB/HPUB protocol commands with one copy of the payload instead of nats-py's two, and a core
publish with a message id that writes its header itself (:func:`publish_with_id`).

nats-py builds a publish's command with ``+`` (``nats.protocol.command``: the line, the headers,
the payload, CRLF), each ``+`` a new bytes object: a payload of a few MB (a frame batch) is
copied twice there before the transport sees it, a tenth of the capture agent's CPU
(bench/capture.py). :func:`pub_cmd` and :func:`hpub_cmd` give the same bytes from one
``bytes.join``.

:func:`install` puts them in place of nats-py's, whose client calls them through that module at
every publish (``prot_command.hpub_cmd(...)`` in ``Client._send_publish``), only when nats-py's
functions have the expected signatures and give byte for byte what these give on a set of
probes; otherwise it leaves nats-py alone (and says so in the debug log): an unexpected nats-py
costs the copy, never a wrong command. tests/bus/test_pubcmd.py holds both to the same bytes.
"""

from __future__ import annotations

import inspect
import logging
import re
from typing import Any

import nats.errors

from ..codec import EncodedParts

log = logging.getLogger("netevents.bus")

_CRLF = b"\r\n"


def pub_cmd(subject: str, reply: str, payload: Any) -> bytes:
    line = f"PUB {subject} {reply} {len(payload)}\r\n".encode()
    if type(payload) is EncodedParts:
        return b"".join([line, *payload.parts, _CRLF])
    return b"".join((line, payload, _CRLF))


def hpub_cmd(subject: str, reply: str, hdr: Any, payload: Any) -> bytes:
    hdr_len = len(hdr)
    line = f"HPUB {subject} {reply} {hdr_len} {hdr_len + len(payload)}\r\n".encode()
    if type(payload) is EncodedParts:  # a batch's buffers: joined here, the one copy
        return b"".join([line, hdr, *payload.parts, _CRLF])
    return b"".join((line, hdr, payload, _CRLF))


def installed() -> bool:
    """Are these in place (so a publish may carry an :class:`EncodedParts`)?"""
    return _installed


_PROBES_PUB = [(s, r, p) for s in ("a", "netevents.v1.frame.s.h") for r in ("", "_INBOX.x.1")
               for p in (b"", b"x", b"\r\n" * 70, bytearray(b"abc"))]
_PROBES_HPUB = [(s, r, h, p) for s, r, p in _PROBES_PUB
                for h in (bytearray(b"NATS/1.0\r\nNats-Msg-Id: h:r:frame:1\r\n\r\n"), b"")]
_installed = False


def install() -> bool:
    """Use :func:`pub_cmd`/:func:`hpub_cmd` in nats-py (once per process) if they are
    equivalent to nats-py's own; True when in place."""
    global _installed
    if _installed:
        return True
    try:
        from nats.protocol import command
    except ImportError:
        return False
    theirs_pub, theirs_hpub = getattr(command, "pub_cmd", None), getattr(command, "hpub_cmd", None)
    try:
        same = (list(inspect.signature(theirs_pub).parameters) == ["subject", "reply", "payload"]  # type: ignore[arg-type]
                and list(inspect.signature(theirs_hpub).parameters)  # type: ignore[arg-type]
                == ["subject", "reply", "hdr", "payload"]
                and all(theirs_pub(*a) == pub_cmd(*a) for a in _PROBES_PUB)  # type: ignore[misc]
                and all(theirs_hpub(*a) == hpub_cmd(*a) for a in _PROBES_HPUB))  # type: ignore[misc]
    except Exception as exc:  # noqa: BLE001 - an unexpected nats-py: leave it as it is
        log.debug("nats-py publish commands kept (probe failed: %s)", exc)
        return False
    if not same:
        log.debug("nats-py publish commands kept (they differ from the one-copy ones)")
        return False
    command.pub_cmd, command.hpub_cmd = pub_cmd, hpub_cmd
    _installed = True
    return True


_MSG_ID = re.compile(r"[!-~]{1,512}\Z")
"""A ``Nats-Msg-Id`` that nats-py would write unchanged (printable ASCII, no space to strip)."""
_HDR_HEAD, _HDR_TAIL = b"NATS/1.0\r\nNats-Msg-Id: ", b"\r\n\r\n"
_CLIENT_PARTS = ("_send_command", "_flush_queue", "_flush_pending", "_max_payload",
                 "_pending_data_size", "_max_pending_size", "stats", "is_closed",
                 "is_draining_pubs", "is_connected")


async def publish_with_id(nc: Any, subject: str, payload: Any, msg_id: str) -> bool:
    """A core publish of ``payload`` with its one ``Nats-Msg-Id`` header, as nats-py's
    ``Client.publish(subject, payload, headers={"Nats-Msg-Id": msg_id})`` sends it (the same
    bytes, the same errors, the same flush), without its per-publish header building (a regular
    expression per key, a bytearray grown piece by piece) and subject check: 14% of a
    fleet publisher's CPU (bench/fleet.py), 3-7 us of 17-22 per publish of a small batch. For ``subject`` made of checked tokens
    (``subjects.event_subject``). False, with nothing sent, when this does not apply (an id
    nats-py would rewrite, a client without the parts this writes to, the one-copy commands not
    installed): the caller then publishes through nats-py."""
    if not _installed or _MSG_ID.match(msg_id) is None or not _client_known(nc):
        return False
    if nc.is_closed:
        raise nats.errors.ConnectionClosedError
    if nc.is_draining_pubs:
        raise nats.errors.ConnectionDrainingError
    size = len(payload)
    if not nc.is_connected and (nc._max_pending_size <= 0
                                or size + nc._pending_data_size > nc._max_pending_size):
        raise nats.errors.OutboundBufferLimitError
    if size > nc._max_payload:
        raise nats.errors.MaxPayloadError
    cmd = hpub_cmd(subject, "", b"".join((_HDR_HEAD, msg_id.encode(), _HDR_TAIL)), payload)
    stats = nc.stats
    stats["out_msgs"] += 1
    stats["out_bytes"] += size
    await nc._send_command(cmd)
    if nc._flush_queue is not None and nc._flush_queue.empty():
        await nc._flush_pending()
    return True


def _client_known(nc: Any) -> bool:
    known = getattr(nc, "_netevents_pub_known", None)
    if known is None:
        known = all(hasattr(nc, a) for a in _CLIENT_PARTS)
        if not known:
            log.debug("nats-py's publish kept (the client lacks %s)",
                      [a for a in _CLIENT_PARTS if not hasattr(nc, a)])
        try:
            nc._netevents_pub_known = known
        except AttributeError:
            return known
    return known

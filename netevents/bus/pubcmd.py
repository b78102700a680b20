"""PUB/HPUB protocol commands with one copy of the payload instead of nats-py's two.

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
from typing import Any

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

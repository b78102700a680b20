"""Subject names of the v1 wire contract and the token rule that keeps them safe.

    netevents.v1.<kind>.<site>.<host>       events
    netevents.v1.control.<site>.<host>      control requests to one agent

A token is ``[A-Za-z0-9_-]+``. Anything else (a dot, a space, ``*`` or ``>``) is refused, so a
hostname can never inject extra subject tokens or wildcards.
"""

from __future__ import annotations

import fnmatch
import re
import socket

from .errors import SubjectError

PREFIX = "netevents.v1"
_TOKEN = re.compile(r"[A-Za-z0-9_-]+\Z")
MAX_TOKEN = 128


def check_token(value: object, what: str) -> str:
    """Return ``value`` if it is a valid subject token.

    Raises:
        SubjectError: if it is not a non-empty string of ``[A-Za-z0-9_-]`` up to 128 chars.
    """
    if type(value) is str and value in _VALID:  # hot path: every publish checks its tokens
        return value
    if not isinstance(value, str) or not _TOKEN.match(value) or len(value) > MAX_TOKEN:
        raise SubjectError(
            f"invalid {what} {value!r}: a {what} must be 1-{MAX_TOKEN} characters of "
            "[A-Za-z0-9_-] (no dots, spaces or wildcards)"
        )
    if type(value) is str:
        if len(_VALID) >= 65536:
            _VALID.clear()
        _VALID.add(value)
    return value


_VALID: set[str] = set()
"""Tokens already found valid (bounded): a fleet's hosts repeat on every batch."""


_PATTERN = re.compile(r"^[A-Za-z0-9_\-*?\[\]!]+$")


def check_pattern(value: object, what: str) -> str:
    """Return ``value`` if it is a token or a glob of tokens (``web-*``, ``db-[12]``).

    Raises:
        SubjectError: naming the characters a pattern may hold.
    """
    if not isinstance(value, str) or not _PATTERN.match(value) or len(value) > MAX_TOKEN:
        raise SubjectError(
            f"invalid {what} {value!r}: a {what} name or glob is 1-{MAX_TOKEN} characters of "
            "[A-Za-z0-9_-] and the glob characters * ? [ ] ! (no dots or spaces)")
    return value


def event_subject(kind: str, site: str, host: str) -> str:
    return f"{PREFIX}.{check_token(kind, 'kind')}.{check_token(site, 'site')}.{check_token(host, 'host')}"


def control_subject(site: str, host: str) -> str:
    return f"{PREFIX}.control.{check_token(site, 'site')}.{check_token(host, 'host')}"


def filter_subject(kind: str | None = None, site: str | None = None, host: str | None = None) -> str:
    """A subscription subject; ``None`` (or a glob) in a position becomes the ``*`` wildcard.

    Globs such as ``web-*`` cannot be expressed in NATS, so they subscribe to ``*`` and the
    subscriber filters with :func:`host_matches`.
    """

    def tok(value: str | None, what: str) -> str:
        if value is None:
            return "*"
        check_pattern(value, what)
        return "*" if any(c in value for c in "*?[") else value

    return f"{PREFIX}.{tok(kind, 'kind')}.{tok(site, 'site')}.{tok(host, 'host')}"


def host_matches(host: str, patterns: list[str] | tuple[str, ...] | None) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(host, p) for p in patterns)


def parse_subject(subject: str) -> tuple[str, str, str]:
    """Split an event subject into ``(kind, site, host)``.

    Raises:
        SubjectError: if it is not ``netevents.v1.<kind>.<site>.<host>``.
    """
    parts = subject.split(".")
    if len(parts) != 5 or ".".join(parts[:2]) != PREFIX:
        raise SubjectError(f"not a netevents v1 subject: {subject!r}")
    return parts[2], parts[3], parts[4]


def default_host() -> str:
    """This machine's short hostname as a token; characters a token cannot hold become ``-``.

    The fallback keeps ``netevents agent`` usable on hosts whose name has dots (FQDNs): the
    short name is used. ``--host`` overrides and is checked strictly.
    """
    name = socket.gethostname().split(".")[0]
    name = re.sub(r"[^A-Za-z0-9_-]", "-", name)[:MAX_TOKEN]
    return name or "localhost"

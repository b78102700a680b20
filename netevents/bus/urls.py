"""Where the bus is and who we are to it: URLs, their credentials, the default address."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from ..errors import ConfigError

DEFAULT_URL = "nats://127.0.0.1:4222"


def redact_url(url: str) -> str:
    """``nats://user:secret@host:4222`` -> ``nats://user:***@host:4222``: never log a password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{netloc}"))


def split_url_credentials(url: str) -> tuple[str, dict[str, str]]:
    """The URL without ``user:password@`` and those as ``nats.connect`` options.

    Passed as options (not left in the URL) they are also used for the servers the client
    discovers in a cluster, so an agent can fail over to another node with its credentials.
    """
    parts = urlsplit(url)
    if parts.username is None:
        return url, {}
    netloc = parts.netloc.rsplit("@", 1)[1]
    opts = {"user": unquote(parts.username)}
    if parts.password is not None:
        opts["password"] = unquote(parts.password)
    return urlunsplit(parts._replace(netloc=netloc)), opts


def default_url() -> str:
    """``$NETEVENTS_BUS``, else ``nats://127.0.0.1:4222``."""
    return os.environ.get("NETEVENTS_BUS") or DEFAULT_URL


@dataclass(slots=True)
class Credentials:
    """How to authenticate to the bus. Each falls back to an environment variable.

    ``user:password`` can also be given in the URL (``nats://agent-web-1:secret@nats:4222``).
    """

    creds: str | None = None
    """A NATS ``.creds`` file (JWT + nkey seed), ``$NETEVENTS_CREDS``."""
    nkey_seed: str | None = None
    """A file holding an nkey seed (``SU...``), ``$NETEVENTS_NKEY_SEED``."""
    tls_ca: str | None = None
    """CA bundle to verify the server (``tls://`` URLs), ``$NETEVENTS_TLS_CA``."""
    tls_cert: str | None = None
    """Client certificate for mutual TLS, ``$NETEVENTS_TLS_CERT``."""
    tls_key: str | None = None
    """Key of the client certificate, ``$NETEVENTS_TLS_KEY``."""

    def options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect``.

        Raises:
            ConfigError: if a named file does not exist or the TLS material does not load.
        """
        def pick(value: str | None, env: str) -> str | None:
            chosen = value or os.environ.get(env) or None
            if chosen and not Path(chosen).is_file():
                raise ConfigError(f"{env.lower().replace('netevents_', '--').replace('_', '-')}: "
                                  f"no such file: {chosen}")
            return chosen

        out: dict[str, Any] = {}
        creds = pick(self.creds, "NETEVENTS_CREDS")
        seed = pick(self.nkey_seed, "NETEVENTS_NKEY_SEED")
        ca = pick(self.tls_ca, "NETEVENTS_TLS_CA")
        cert = pick(self.tls_cert, "NETEVENTS_TLS_CERT")
        key = pick(self.tls_key, "NETEVENTS_TLS_KEY")
        if creds:
            out["user_credentials"] = creds
        if seed:
            import importlib.util

            if importlib.util.find_spec("nkeys") is None:  # nats-py signs with it at connect time
                raise ConfigError("--nkey-seed needs the 'nkeys' package (pip install nkeys)")
            out["nkeys_seed"] = seed
        if ca or cert:
            import ssl

            try:
                ctx = ssl.create_default_context(cafile=ca)
                if cert:
                    ctx.load_cert_chain(cert, key)
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(f"cannot load TLS material: {exc}") from None
            out["tls"] = ctx
        return out


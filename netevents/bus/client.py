"""The connection: :func:`connect` -> :class:`Bus` (streams, publish, subscribe).

nats-py and OS errors are translated into :class:`~netevents.errors.BusError` here, saying
what happened: a refused login names the user, a permissions violation the user and subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import nats
import nats.errors
import nats.js.errors

from ..codec import HEADER_ROOM, MAX_BATCH_BYTES, Batch, encode_batch
from ..errors import BusError
from ..subjects import event_subject
from . import pubcmd
from .streams import stream_configs
from .subscription import Subscription
from .urls import Credentials, default_url, redact_url, split_url_credentials

log = logging.getLogger("netevents.bus")

_SUBJECT_USER = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\Z")
_VIOLATION = re.compile(r'permissions violation for (publish|subscription) to "([^"]*)"', re.I)


class MsgIdKey:
    """A per-connection (or per-run) secret that makes ``Nats-Msg-Id``s only its holder can
    make: the readable ``host:run:kind:seq`` plus a keyed BLAKE2b (128 bits) of it.

    JetStream's duplicate window is per stream, so with plain ids any host that learnt another's
    run id could publish that host's future ids first and have its real batches dropped as
    duplicates; with a secret it cannot, and a retry of the same batch (same key) still gets the
    same id. Keyed BLAKE2b is a MAC by design, and a copy of the keyed state costs ~1 us a batch
    where HMAC-SHA256 cost ~4 us (the fleet benchmark's publishers spent ~12% of their CPU there).
    """

    __slots__ = ("_mac",)

    def __init__(self, secret: bytes | None = None) -> None:
        self._mac = hashlib.blake2b(key=secret or secrets.token_bytes(32), digest_size=16)

    def __call__(self, batch: Batch) -> str:
        plain = batch.msg_id
        mac = self._mac.copy()
        mac.update(plain.encode())
        return f"{plain}:{mac.hexdigest()}"


def batch_limit(server_max_payload: int | None) -> int:
    """The largest batch that fits a server whose ``max_payload`` is ``server_max_payload``
    (None or 0: unknown, the bus's own limit) with its ``Nats-Msg-Id`` header."""
    if not server_max_payload:
        return MAX_BATCH_BYTES
    # A tiny max_payload (tests, odd deployments) keeps half for the batch rather than nothing.
    room = min(HEADER_ROOM, server_max_payload // 2)
    return min(server_max_payload - room, MAX_BATCH_BYTES)


class Bus:
    """A connection to the netevents bus. Create with :func:`connect`."""

    def __init__(self, nc: nats.NATS, url: str, user: str | None = None) -> None:
        self.nc = nc
        self.url = url
        self.user = user
        """Who the bus knows us as (the URL's user, ``creds``/``nkey``), None when anonymous."""
        self.js = nc.jetstream()
        self.errors: Counter[str] = Counter()
        """Counted asynchronous errors (``slow_consumer``, ``disconnected``,
        ``permissions_violation``, ...)."""
        self.violations: dict[str, str] = {}
        """Subject (lower case, as nats-py reports it) -> the refused verb (``publish``,
        ``subscribe``)."""
        self._msg_id = MsgIdKey()

    def violation(self, subject: str) -> str | None:
        """A sentence naming the user and subject if the server refused ``subject`` to us."""
        verb = self.violations.get(subject.lower())
        if verb is None:
            return None
        return f"permissions violation: user {self.user or '(anonymous)'} may not {verb} " \
               f"{'on' if verb == 'publish' else 'to'} {subject}"

    def note_error(self, exc: Exception) -> str:
        """Count an asynchronous error; remember and log a permissions violation once."""
        if isinstance(exc, nats.errors.SlowConsumerError):
            self.errors["slow_consumer"] += 1
            return "slow_consumer"
        m = _VIOLATION.search(str(exc))
        if m is None:
            self.errors[type(exc).__name__] += 1
            log.debug("nats error: %s", exc)
            return type(exc).__name__
        self.errors["permissions_violation"] += 1
        verb, subject = m.group(1).lower(), m.group(2).lower()
        if subject not in self.violations:
            self.violations[subject] = "publish" if verb == "publish" else "subscribe"
            log.warning("%s", self.violation(subject))
        return "permissions_violation"

    # -- streams -------------------------------------------------------------------------------
    async def ensure_streams(self, frames_max_bytes: int = 1 << 30, replicas: int | None = None) -> None:
        """Create the three streams if missing; idempotent when several processes race.

        ``replicas`` defaults to ``$NETEVENTS_REPLICAS`` or 1 (use 3 on a 3-node cluster).
        """
        if replicas is None:
            replicas = int(os.environ.get("NETEVENTS_REPLICAS", "1"))
        for cfg in stream_configs(frames_max_bytes, replicas):
            try:
                await self.js.add_stream(cfg)
            except nats.js.errors.BadRequestError as exc:
                # 10058: stream name already in use (with a different config) -> keep it.
                if getattr(exc, "err_code", None) != 10058:
                    raise BusError(f"cannot create stream {cfg.name}: {exc}") from exc
            except (nats.errors.Error, nats.js.errors.Error) as exc:
                raise BusError(f"cannot create stream {cfg.name}: {exc}") from exc

    # -- publishing ----------------------------------------------------------------------------
    def msg_id(self, batch: Batch) -> str:
        """This connection's keyed ``Nats-Msg-Id`` of ``batch`` (:class:`MsgIdKey`)."""
        return self._msg_id(batch)

    async def publish(self, batch: Batch, *, ack: bool = False, timeout: float = 5.0,
                      msg_id: str | None = None) -> None:
        """Publish one batch on ``netevents.v1.<kind>.<site>.<host>``.

        With ``ack`` the call waits for JetStream to store it (and raises BusError if it
        does not); otherwise it is a core publish that the streams capture. ``msg_id``
        defaults to :meth:`msg_id` (the same for a retry of the batch on this connection).
        """
        data = encode_batch(batch, max_bytes=self.max_payload)
        subject = event_subject(batch.kind, batch.site, batch.host)
        msg_id = msg_id or self.msg_id(batch)
        if not ack:
            try:
                if await pubcmd.publish_with_id(self.nc, subject, data, msg_id):
                    return
            except (nats.errors.Error, OSError) as exc:
                raise self._publish_failed(subject, exc) from exc
        await self.publish_raw(subject, data, msg_id, ack=ack, timeout=timeout)

    async def publish_raw(self, subject: str, data: bytes, msg_id: str | None = None, *,
                          ack: bool = False, timeout: float = 5.0) -> None:
        """Raises BusError; for a subject the server refused us, naming user and subject."""
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        try:
            if ack:
                await self.js.publish(subject, data, headers=headers, timeout=timeout)
            else:
                await self.nc.publish(subject, data, headers=headers)
        except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
            raise self._publish_failed(subject, exc) from exc

    def _publish_failed(self, subject: str, exc: Exception) -> BusError:
        refused = self.violation(subject)
        if refused:
            return BusError(f"publish to {subject} refused: {refused}")
        return BusError(f"publish to {subject} failed: {type(exc).__name__}: {exc}")

    @property
    def accepts_parts(self) -> bool:
        """:meth:`publish_raw` takes an :class:`~netevents.codec.EncodedParts` as ``data``
        (the publish command joins its buffers: bus/pubcmd.py)."""
        return pubcmd.installed()

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    @property
    def max_payload(self) -> int:
        """The largest batch this connection publishes: :data:`~netevents.codec.MAX_BATCH_BYTES`,
        or less when the server's ``max_payload`` is smaller -- then that minus the room its
        headers take (:data:`~netevents.codec.HEADER_ROOM`; nats-server counts headers in
        ``max_payload``), so an agent splits a batch instead of having the server refuse it."""
        return batch_limit(self.nc.max_payload)

    async def flush(self, timeout: float = 5.0) -> None:
        try:
            await self.nc.flush(timeout=timeout)
        except (nats.errors.Error, OSError) as exc:
            raise BusError(f"flush failed: {exc}") from exc

    # -- subscribing ---------------------------------------------------------------------------
    def subscribe(self, kinds: list[str] | tuple[str, ...] | None = None,
                  hosts: list[str] | tuple[str, ...] | None = None, site: str | None = None,
                  *, durable: str | None = None, queue_size: int = 10_000,
                  pending_limit: int = 200_000, manual_ack: bool = False,
                  queue: str | None = None, since: int | str | None = None,
                  until: int | str | None = None) -> Subscription:
        """An async iterator of decoded batches of the given kinds, hosts (globs) and site.

        ``durable`` uses a durable JetStream consumer of that name (per kind), so a consumer
        that restarts resumes where it stopped; each batch is acknowledged when the next one
        is requested -- or, with ``manual_ack``, when the caller passes it to
        :meth:`Subscription.ack` (a consumer that holds batches before it has really handled
        them, like the archive's reorder window). Without ``durable``, a live core subscription.

        ``queue`` joins a NATS queue group of that name (core subscriptions): each message goes
        to one member, so several instances share a stream. A member then sees only part of
        each (host, run, kind) sequence, so its holes are not losses: they are counted in
        :attr:`Subscription.shared_holes`, not in ``missed`` (only the group's union can tell).
        With ``durable``, members sharing one durable name share its messages the same way.

        ``since`` (ns since the epoch, or text: ``15m``, ``2h``, an ISO time) replays what the
        streams hold from then on through an ephemeral consumer per kind, then goes on live;
        with ``until`` it stops there (the iteration ends, :attr:`Subscription.finished`).
        See :mod:`netevents.bus.history`.

        Raises:
            SubjectError: for an unknown kind or an invalid site token.
        """
        return Subscription(self, kinds, hosts, site, durable=durable, queue_size=queue_size,
                            pending_limit=pending_limit, manual_ack=manual_ack, queue=queue,
                            since=since, until=until)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.nc.drain()
        with contextlib.suppress(Exception):
            await self.nc.close()


@contextlib.asynccontextmanager
async def connect(url: str | None = None, *, name: str = "netevents", connect_timeout: float = 5.0,
                  reconnect: bool = True, streams: bool = False,
                  credentials: Credentials | None = None, tls: Any = None) -> AsyncIterator[Bus]:
    """Connect to the bus: ``async with netevents.connect(url) as bus: ...``.

    ``url`` defaults to ``$NETEVENTS_BUS``, then ``nats://127.0.0.1:4222``. With ``streams`` the
    JetStream streams are created if missing. ``credentials`` (default: from the environment,
    see :class:`Credentials`) authenticate the connection; ``tls``, an ``ssl.SSLContext``,
    overrides theirs.

    Raises:
        BusError: if no server answers at ``url``, or it refuses the credentials.
        ConfigError: if a credentials or TLS file is missing.
    """
    url = url or default_url()
    pubcmd.install()  # the publish commands copy a payload once (pubcmd.py)
    auth = (credentials or Credentials()).options()
    server_url, url_auth = split_url_credentials(url)
    auth.update(url_auth)
    if tls is not None:
        auth["tls"] = tls
    user = url_auth.get("user") or ("(creds)" if "user_credentials" in auth else None) \
        or ("(nkey)" if "nkeys_seed" in auth else None)
    if url_auth.get("user") and _SUBJECT_USER.match(url_auth["user"]):
        # Each user reads only its own inboxes (netevents.auth.inbox_prefix): replies, acks
        # and pulled messages of one user are invisible to every other.
        auth.setdefault("inbox_prefix", f"_INBOX.{url_auth['user']}")
    shown = redact_url(url)
    holder: dict[str, Bus] = {}
    early: list[Exception] = []

    async def error_cb(exc: Exception) -> None:
        bus = holder.get("bus")
        if bus is not None:
            bus.note_error(exc)
        else:
            early.append(exc)
            log.debug("nats error while connecting: %s", exc)

    async def disconnected_cb() -> None:
        if "bus" in holder:
            holder["bus"].errors["disconnected"] += 1

    try:
        # nats-py retries an unreachable first server forever when reconnects are on; the
        # first connection gets a deadline of its own so a wrong URL fails with one clear line.
        async with asyncio.timeout(connect_timeout):
            nc = await nats.connect(
                servers=[server_url], name=name, connect_timeout=connect_timeout, error_cb=error_cb,
                disconnected_cb=disconnected_cb, allow_reconnect=reconnect,
                max_reconnect_attempts=-1 if reconnect else 0, reconnect_time_wait=0.5, **auth)
    except TimeoutError:
        refused = _refusal(early, user)
        if refused:
            raise BusError(f"cannot connect to the bus at {shown}: {refused}") from None
        raise BusError(f"cannot connect to the bus at {shown}: no NATS server answered within "
                       f"{connect_timeout:g}s (start one with 'netevents server' or "
                       "'netevents up', or set --bus / $NETEVENTS_BUS)") from None
    except (nats.errors.Error, OSError) as exc:
        refused = _refusal([*early, exc], user)
        if refused:
            raise BusError(f"cannot connect to the bus at {shown}: {refused}") from None
        raise BusError(f"cannot connect to the bus at {shown}: {type(exc).__name__} {exc}".rstrip()
                       + " (start one with 'netevents server', or set --bus / $NETEVENTS_BUS)") from None
    bus = holder["bus"] = Bus(nc, url, user)
    try:
        if streams:
            await bus.ensure_streams()
        yield bus
    finally:
        await bus.close()



def _refusal(errors: list[Exception], user: str | None) -> str | None:
    """The server's refusal of our login, as a sentence naming the user, if it refused."""
    for exc in errors:
        text = str(exc).lower()
        who = f"user {user}" if user else "a client without credentials"
        if "authorization violation" in text or isinstance(exc, nats.errors.AuthorizationError):
            return (f"the server refused {who}: authorization violation (wrong user or password, "
                    "or a credential the server does not know: see `netevents auth`)")
        if "expired" in text:
            return f"the server refused {who}: the credential has expired ({exc})"
        if "authentication" in text or "tls" in text and "required" in text:
            return f"the server refused {who}: {exc}"
    return None

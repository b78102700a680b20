"""History: replay the streams from a start time (``--since``), up to an end (``--until``).

A reading command that asks for history gets, per kind, an *ephemeral* JetStream pull consumer
that starts at the first message stored at or after ``since`` (``DeliverPolicy.BY_START_TIME``).
Nothing durable is left behind: the consumer is deleted when the subscription closes, and the
server removes it by itself after :data:`INACTIVE` seconds should the process die first.

Without ``until`` the same consumer goes on delivering what is stored from then on: the replay
turns into the live feed with no seam, hence no batch lost or delivered twice between the two
(the subscription's :class:`~netevents.bus.intake.Intake` drops duplicates by sequence anyway).
With ``until`` each consumer stops at the first message stored after it, or once it has caught
up and the clock has passed ``until`` (:class:`ReplayCursor`).

Sans-IO here: :func:`parse_duration`, :func:`parse_time`, :class:`Window`,
:func:`parse_ack_subject` (a message's stream sequence, stored time and pending count),
:class:`ReplayCursor` (the stop rule) and :func:`held_from` (what a window asks for that a
stream no longer holds). The IO: :func:`open_replay`, :func:`close_replay`,
:func:`stream_first`.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from dataclasses import dataclass
from typing import Any

from ..errors import BusError, ConfigError

INACTIVE = 60.0
"""Seconds after which the server deletes a replay consumer nobody pulls from (a killed reader)."""

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
NS = 1_000_000_000


def parse_duration(text: str) -> float:
    """``15m``, ``2h``, ``1h30m``, ``90s``, ``7d``, ``1w``, ``500ms`` -> seconds.

    Raises:
        ValueError: naming the units a duration may use.
    """
    s = text.strip().lower().replace(" ", "")
    pos, total = 0, 0.0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise ValueError(f"not a duration: {text!r} (a number and a unit: ms, s, m, h, d, w; "
                         "e.g. 15m, 2h, 1h30m)")
    return total


def parse_time(text: str, now_ns: int | None = None) -> int:
    """A point in time as nanoseconds since the epoch.

    ``now``; a duration meaning that long ago (``15m``, ``2h``); a time of day today
    (``14:00``, ``9:30:05``, local time); or an ISO 8601 timestamp (``2024-05-01T14:00``,
    ``2024-05-01 14:00:05Z``, ``...+02:00``; without a zone it is local time).

    Raises:
        ValueError: when it is none of these.
    """
    now_ns = time.time_ns() if now_ns is None else now_ns
    s = text.strip()
    if s.lower() == "now":
        return now_ns
    if _DURATION.match(s.lower()):
        try:
            return now_ns - int(parse_duration(s) * NS)
        except ValueError:
            pass   # 2024-05-01 starts like a number too
    if re.fullmatch(r"\d{1,2}:\d\d(:\d\d(\.\d+)?)?", s):   # a time of day: today, local time
        today = dt.datetime.fromtimestamp(now_ns / NS).date().isoformat()
        hour, rest = s.split(":", 1)
        s = f"{today}T{int(hour):02d}:{rest}"
    try:
        when = dt.datetime.fromisoformat(s.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {text!r} (a duration ago such as 15m or 2h, a time of "
                         "day such as 14:00, an ISO "
                         "timestamp such as 2024-05-01T14:00 or 2024-05-01T12:00Z, or now)") from None
    if when.tzinfo is None:
        when = when.astimezone()   # local time
    return int(when.timestamp()) * NS + when.microsecond * 1000


def format_duration(seconds: float) -> str:
    """``1209600`` -> ``14d``, ``5400`` -> ``1h30m``, ``0.5`` -> ``500ms`` (what a person typed)."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    out, rest = "", int(round(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out += f"{rest // size}{unit}"
            rest %= size
    return out


def format_ns(ns: int) -> str:
    """A timestamp as local ISO time to the second (what messages show)."""
    return dt.datetime.fromtimestamp(ns / NS).astimezone().isoformat(timespec="seconds")


@dataclass(frozen=True, slots=True)
class Window:
    """A time window ``[since, until]`` in ns; ``until`` None: from ``since`` on, live."""

    since_ns: int
    until_ns: int | None = None

    @classmethod
    def parse(cls, since: str | None, until: str | None, now_ns: int | None = None) -> Window | None:
        """The window of ``--since`` / ``--until`` (None when neither is given).

        ``--until`` alone is refused: history starts somewhere.

        Raises:
            ConfigError: naming the option at fault.
        """
        if since is None and until is None:
            return None
        now_ns = time.time_ns() if now_ns is None else now_ns
        if since is None:
            raise ConfigError("--until needs --since (where the history starts)")
        try:
            start = parse_time(since, now_ns)
        except ValueError as exc:
            raise ConfigError(f"--since: {exc}") from None
        end = None
        if until is not None:
            try:
                end = parse_time(until, now_ns)
            except ValueError as exc:
                raise ConfigError(f"--until: {exc}") from None
            if end <= start:
                raise ConfigError(f"--until ({format_ns(end)}) is not after --since ({format_ns(start)})")
        if start > now_ns:
            raise ConfigError(f"--since ({format_ns(start)}) is in the future")
        return cls(start, end)

    def contains(self, ts_ns: int) -> bool:
        return ts_ns >= self.since_ns and (self.until_ns is None or ts_ns <= self.until_ns)

    def describe(self) -> str:
        end = format_ns(self.until_ns) if self.until_ns is not None else "now, then live"
        return f"{format_ns(self.since_ns)} .. {end}"


@dataclass(frozen=True, slots=True)
class AckMeta:
    """What a JetStream message's reply subject says about it."""

    stream: str
    stream_seq: int
    ts_ns: int
    pending: int


def parse_ack_subject(reply: str | None) -> AckMeta | None:
    """Parse ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`` (and the
    v2 form with domain and account hash); None for anything else."""
    if not reply or not reply.startswith("$JS.ACK."):
        return None
    t = reply.split(".")
    try:
        if len(t) == 9:
            return AckMeta(t[2], int(t[5]), int(t[7]), int(t[8]))
        if len(t) >= 11:
            return AckMeta(t[4], int(t[7]), int(t[9]), int(t[10]))
    except ValueError:
        return None
    return None


class ReplayCursor:
    """The stop rule of one replay consumer (sans-IO; the caller passes the clock).

    ``message(meta, now)`` for every message: False (and :attr:`done`) for the first one stored
    after ``until``, which is not delivered; a message with nothing pending behind it, once the
    clock has passed ``until``, is delivered and ends the replay. ``idle(now, pending)`` after a
    fetch that found nothing: done once the clock has passed ``until`` and the server has
    nothing pending for the consumer. Without ``until`` it never
    ends (the replay goes on live).
    """

    def __init__(self, until_ns: int | None) -> None:
        self.until_ns = until_ns
        self.done = False
        self.delivered = 0
        self.last_ts: int | None = None

    def message(self, meta: AckMeta | None, now_ns: int) -> bool:
        if self.done:
            return False
        if self.until_ns is None or meta is None:
            self.delivered += 1
            return True
        if meta.ts_ns > self.until_ns:
            self.done = True
            return False
        self.delivered += 1
        self.last_ts = meta.ts_ns
        if meta.pending == 0 and now_ns >= self.until_ns:
            self.done = True
        return True

    def idle(self, now_ns: int, pending: int = 0) -> None:
        if self.until_ns is not None and now_ns >= self.until_ns and not pending:
            self.done = True


def held_from(window: Window, stream: str, first_ts_ns: int | None, first_seq: int,
              messages: int, max_age_s: float | None = None) -> str | None:
    """What a window asks for that ``stream`` no longer holds, as one sentence (None: it holds
    all of it). ``first_ts_ns`` / ``first_seq`` / ``messages`` are the stream's state."""
    if window.until_ns is not None and first_ts_ns is not None and first_ts_ns > window.until_ns \
            and first_seq > 1:
        return (f"{stream} holds nothing of the window: its oldest message is from "
                f"{format_ns(first_ts_ns)} (sequences 1..{first_seq - 1} are gone)"
                + (f"; its max age is {max_age_s:g}s" if max_age_s else ""))
    if first_ts_ns is None or messages == 0:
        if first_seq > 1:
            return f"{stream} is empty: its {first_seq - 1} messages are gone (retention)"
        return None
    if first_seq > 1 and first_ts_ns > window.since_ns:
        lost_s = (first_ts_ns - window.since_ns) / NS
        return (f"{stream} no longer holds {format_ns(window.since_ns)} .. {format_ns(first_ts_ns)} "
                f"({lost_s:.0f}s of the window; {first_seq - 1} older messages removed by its limits"
                + (f", max age {max_age_s:g}s" if max_age_s else "") + ")")
    return None


# -- IO ------------------------------------------------------------------------------------------

async def open_replay(js: Any, stream: str, subject: str, since_ns: int) -> Any:
    """An ephemeral pull consumer on ``subject`` of ``stream`` from ``since_ns`` on.

    Raises:
        BusError: if the stream is missing or the consumer cannot be made.
    """
    import nats.errors
    import nats.js.errors
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    start = dt.datetime.fromtimestamp(since_ns / NS, tz=dt.UTC)
    cfg = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start,
                         ack_policy=AckPolicy.NONE, inactive_threshold=INACTIVE,
                         description="netevents history replay (ephemeral)")
    try:
        return await js.pull_subscribe(subject, stream=stream, config=cfg)
    except (nats.errors.Error, nats.js.errors.Error) as exc:
        raise BusError(f"cannot replay {stream} ({subject}): {exc}") from exc


async def close_replay(js: Any, psub: Any) -> None:
    """Unsubscribe and delete the replay consumer (never leave one behind)."""
    import contextlib

    with contextlib.suppress(Exception):
        await psub.unsubscribe()
    stream, name = getattr(psub, "_stream", None), getattr(psub, "_consumer", None)
    if stream and name:
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, name)


async def stream_state(nc: Any, stream: str) -> dict[str, Any]:
    """A stream's config and state as the server reports them (``$JS.API.STREAM.INFO``), with
    ``state.first_ts_ns`` / ``last_ts_ns`` added (nats-py's StreamState leaves the times out).

    Raises:
        BusError: if the stream cannot be read.
    """
    import json

    import nats.errors

    try:
        msg = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=5.0)
        doc = json.loads(msg.data)
    except (nats.errors.Error, OSError, ValueError) as exc:
        raise BusError(f"cannot read stream {stream}: {exc}") from exc
    if "error" in doc:
        raise BusError(f"cannot read stream {stream}: {doc['error'].get('description', doc['error'])}")
    st = doc.setdefault("state", {})
    st["first_ts_ns"] = _ts_ns(st.get("first_ts")) if st.get("messages") else None
    st["last_ts_ns"] = _ts_ns(st.get("last_ts")) if st.get("messages") else None
    return doc


async def missing_from(nc: Any, window: Window, streams: list[str] | tuple[str, ...]) -> list[str]:
    """For each stream, what of ``window`` it no longer holds (sentences; empty: all held)."""
    out = []
    for stream in streams:
        doc = await stream_state(nc, stream)
        st, cfg = doc["state"], doc.get("config") or {}
        age = (cfg.get("max_age") or 0) / NS or None
        text = held_from(window, stream, st["first_ts_ns"], int(st.get("first_seq") or 0),
                         int(st.get("messages") or 0), age)
        if text:
            out.append(text)
    return out


def _ts_ns(value: Any) -> int | None:
    """A stream state timestamp (RFC 3339 with nanoseconds, as the server writes it) in ns."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return int(value.timestamp()) * NS + value.microsecond * 1000
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$", str(value))
    if not m:
        return None
    base = dt.datetime.fromisoformat(m.group(1) + (m.group(3) or "Z").replace("Z", "+00:00"))
    frac = (m.group(2) or "0")[:9].ljust(9, "0")
    return int(base.timestamp()) * NS + int(frac)

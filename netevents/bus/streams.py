"""The three JetStream streams (events, stats, frames) and which kinds each one captures."""

from __future__ import annotations

from typing import Any

from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from .. import events as ev
from ..codec import MAX_BATCH_BYTES


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



# -- retention an operator sets -------------------------------------------------------------------

STREAMS: dict[str, str] = {"events": "NETEVENTS_EVENTS", "stats": "NETEVENTS_STATS",
                           "frames": "NETEVENTS_FRAMES"}
"""Short names (what the options take) -> stream names."""

_SIZE = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
         "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40,
         "tib": 1 << 40}


def parse_size(text: str) -> int:
    """``500M``, ``20G``, ``1.5T``, ``4096`` -> bytes (binary units); ``unlimited`` -> -1.

    Raises:
        ValueError: naming the units.
    """
    import re

    s = text.strip().lower()
    if s in ("unlimited", "none", "-1"):
        return -1
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", s)
    if not m or m.group(2) not in _SIZE:
        raise ValueError(f"not a size: {text!r} (bytes, or a number with K, M, G, T; or unlimited)")
    return int(float(m.group(1)) * _SIZE[m.group(2)])


def parse_limits(max_age: list[str] | None, max_bytes: list[str] | None) -> dict[str, dict[str, Any]]:
    """``--max-age events=14d --max-bytes frames=20G`` -> ``{"NETEVENTS_EVENTS": {"max_age":
    1209600.0}, "NETEVENTS_FRAMES": {"max_bytes": 21474836480}}``; a max age of ``unlimited``
    (or 0) is 0, JetStream's "no limit".

    Raises:
        ValueError: naming the stream or value at fault.
    """
    from .history import parse_duration

    out: dict[str, dict[str, Any]] = {}
    for option, items, parse in (("max_age", max_age, parse_duration), ("max_bytes", max_bytes, parse_size)):
        for item in items or ():
            name, sep, value = item.partition("=")
            stream = STREAMS.get(name.strip().lower())
            if not sep or stream is None:
                raise ValueError(f"--{option.replace('_', '-')} {item!r}: use STREAM=VALUE with "
                                 f"STREAM one of {', '.join(STREAMS)}")
            if option == "max_age" and value.strip().lower() in ("unlimited", "none", "0"):
                out.setdefault(stream, {})[option] = 0.0
                continue
            try:
                out.setdefault(stream, {})[option] = parse(value)
            except ValueError as exc:
                raise ValueError(f"--{option.replace('_', '-')} {name}: {exc}") from None
    return out


async def apply_limits(js: Any, limits: dict[str, dict[str, Any]]) -> list[str]:
    """Set each stream's ``max_age`` / ``max_bytes`` (the streams must exist); returns one line
    per change. Lowering a limit removes what exceeds it at once (JetStream's rule).

    Raises:
        BusError: if a stream cannot be read or updated.
    """
    import nats.errors
    import nats.js.errors

    from ..errors import BusError

    done = []
    for stream, values in limits.items():
        try:
            cfg = (await js.stream_info(stream)).config
            for k, v in values.items():
                setattr(cfg, k, v)
            await js.update_stream(cfg)
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise BusError(f"cannot set the limits of {stream}: {exc}") from exc
        done.append(f"{stream}: " + ", ".join(f"{k} {_shown(k, v)}" for k, v in values.items()))
    return done


def _shown(key: str, value: Any) -> str:
    if key == "max_age":
        return "unlimited" if not value else f"{value:g}s"
    return "unlimited" if value is None or value < 0 else f"{value} bytes"


async def stream_rows(nc: Any) -> list[dict[str, Any]]:
    """What ``netevents streams --show`` prints: per stream its limits and what it holds."""
    from .history import NS, format_ns, stream_state

    rows = []
    for short, stream in STREAMS.items():
        doc = await stream_state(nc, stream)
        cfg, st = doc.get("config") or {}, doc["state"]
        rows.append({
            "stream": stream, "name": short, "subjects": cfg.get("subjects"),
            "max_age_s": (cfg.get("max_age") or 0) / NS, "max_bytes": cfg.get("max_bytes", -1),
            "discard": cfg.get("discard"), "replicas": cfg.get("num_replicas"),
            "messages": st.get("messages", 0), "bytes": st.get("bytes", 0),
            "first_seq": st.get("first_seq"), "last_seq": st.get("last_seq"),
            "first": format_ns(st["first_ts_ns"]) if st.get("first_ts_ns") else None,
            "last": format_ns(st["last_ts_ns"]) if st.get("last_ts_ns") else None,
            "consumers": st.get("consumer_count", 0)})
    return rows

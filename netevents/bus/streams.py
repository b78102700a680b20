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


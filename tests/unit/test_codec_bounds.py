"""Bounded decoding: a hostile message costs a small multiple of its size in memory, time linear
in its size, and the largest batch is one constant the bus's max_payload matches."""

from __future__ import annotations

import time
import tracemalloc

import msgpack
import pytest

from netevents import events as ev
from netevents.bus import EmbeddedServer
from netevents.codec import HEADER_ROOM, MAX_BATCH_BYTES, MAX_PAYLOAD, decode_batch
from netevents.errors import CodecError, SchemaError

MEMORY_FACTOR = 24
"""Peak memory of a decode over the message's size: Python objects are 10-20x their msgpack."""
SECONDS_PER_MB = 0.25


def env(events, kind="drop", **extra) -> dict:
    return {"v": 1, "kind": kind, "site": "s", "host": "h", "run": "r", "seq": 1, "t0": 1,
            "t1": 2, **extra, "events": events}


def array_of(n: int, item: bytes) -> bytes:
    return b"\xdd" + n.to_bytes(4, "big") + item * n


HEAD = msgpack.packb(env([]))[:-1]  # the envelope up to its empty events array
N = 8_000_000
BOMBS = {
    "8M empty maps as events": (HEAD + array_of(N, b"\x80"), SchemaError),
    "unknown key of 8M empty maps": (
        HEAD + b"\x91\x83\xa5count\x01\xa6source\xa7counter\xa1x" + array_of(N - 40, b"\x80"),
        SchemaError),
    "unknown envelope key of 8M empty maps": (
        b"\x8a" + msgpack.packb(env([]))[1:] + b"\xa1x" + array_of(N - 100, b"\x80"), SchemaError),
    "200 tiny unknown keys per event": (msgpack.packb(env(
        [{"count": 1, "source": "counter", **{f"k{i}": 0 for i in range(200)}}] * 7000)),
        SchemaError),
    "4G-entry map header": (b"\xdf\xff\xff\xff\xff", CodecError),
    "4G-element events header": (HEAD + b"\xdd\xff\xff\xff\xff", CodecError),
    "nesting 100k deep": (HEAD + b"\x91" * 100_000, CodecError),
    "deep free-form detail": (msgpack.packb(env([{"type": "peer", "summary": "s", "details": {
        "x": [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]}}], kind="incident")), SchemaError),
    "flags of 4000 empty strings": (msgpack.packb(env(
        [{"peer": "p", "flags": [""] * 4000}] * 500, kind="ipstat")), None),
    "a flags list over the limit": (msgpack.packb(env(
        [{"peer": "p", "flags": [""] * (ev.MAX_LIST + 1)}], kind="ipstat")), SchemaError),
    "deltas of 4000 counters": (msgpack.packb(env(
        [{"group": "g", "deltas": {f"{i}": 300 for i in range(4000)}}] * 60, kind="netstat")), None),
    "100k minimal drop events": (msgpack.packb(env([{"count": 300, "source": "ebpf"}] * 100_000)),
                                 None),
    "frame columns of 100k values": (msgpack.packb(env(
        {"ts": [300] * 100_000, "len": [300] * 100_000, "head": [b"ab"] * 100_000},
        kind="frame")), None),
}


@pytest.mark.parametrize("name", BOMBS)
def test_a_hostile_message_costs_a_small_multiple_of_its_size(name):
    data, error = BOMBS[name]
    assert len(data) <= MAX_BATCH_BYTES
    t = time.process_time()
    try:
        decode_batch(data)
    except CodecError as exc:
        assert error is not None and isinstance(exc, error), exc
    else:
        assert error is None, f"{name} was accepted"
    seconds = time.process_time() - t
    assert seconds <= SECONDS_PER_MB * max(1.0, len(data) / 1e6), f"{seconds:.2f}s"
    tracemalloc.start()
    try:
        decode_batch(data)
    except CodecError:
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak <= MEMORY_FACTOR * len(data) + 1_000_000, f"{peak / len(data):.1f}x"


def test_the_largest_batch_and_the_server_share_one_constant():
    assert MAX_BATCH_BYTES == MAX_PAYLOAD - HEADER_ROOM
    assert EmbeddedServer().max_payload == MAX_PAYLOAD

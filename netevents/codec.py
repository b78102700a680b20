"""Sans-IO batch envelope: encode, decode, validate.

One NATS message is one batch: a msgpack map with ``v, kind, site, host, run, seq, t0, t1,
events`` plus optional batch fields (``boot``, ``agent``, kind-specific ones from
:data:`netevents.events.BATCH_FIELDS`). ``frame`` batches carry their events column-wise
(``events`` is a map of equal-length lists); every other kind carries a list of maps.

:func:`decode_batch` never trusts its input: anything that is not a valid v1 batch raises one
:class:`~netevents.errors.CodecError` subclass whose message names the problem, and whose
``reason`` is a stable short name for counting rejects. Unknown keys are kept and ignored.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from operator import methodcaller
from typing import Any

import msgpack

from . import events as ev
from .errors import (
    CodecError,
    MalformedError,
    OversizeError,
    SchemaError,
    SubjectError,
    VersionError,
)
from .subjects import check_token

MAX_BATCH_BYTES = 8 * 1024 * 1024
"""Largest batch accepted (and produced). The embedded server's max_payload matches it."""

_ENVELOPE_KEYS = frozenset(ev.ENVELOPE) | {"events"}


@dataclass(slots=True)
class Batch:
    """One decoded batch. ``events`` is a list of dicts, or for columnar kinds a dict of lists.

    ``missed`` is not on the wire: a subscription sets it to the number of batches of the same
    (host, run, kind) that it did not receive just before this one.
    """

    kind: str
    site: str
    host: str
    run: str
    seq: int
    t0: int
    t1: int
    events: Any
    fields: dict[str, Any] = field(default_factory=dict)
    v: int = ev.VERSION
    missed: int = 0

    def __len__(self) -> int:
        if isinstance(self.events, PackedColumns):
            return self.events.rows
        if isinstance(self.events, Mapping):
            return len(next(iter(self.events.values()), ()))
        return len(self.events)

    def rows(self) -> Iterator[dict[str, Any]]:
        """The events one dict at a time, also for columnar batches."""
        if isinstance(self.events, Mapping):
            names = list(self.events)
            for values in zip(*self.events.values(), strict=True):
                yield dict(zip(names, values, strict=True))
        else:
            yield from self.events

    def header(self) -> dict[str, Any]:
        """The envelope and batch fields without the events."""
        return {"v": self.v, "kind": self.kind, "site": self.site, "host": self.host,
                "run": self.run, "seq": self.seq, "t0": self.t0, "t1": self.t1, **self.fields}

    @property
    def msg_id(self) -> str:
        """The ``Nats-Msg-Id`` JetStream uses to drop duplicates of a retried publish."""
        return f"{self.host}:{self.run}:{self.kind}:{self.seq}"


class PackedColumns(Mapping):
    """Columns whose msgpack encoding (the ``events`` map) is already made.

    The C block walker (agents/capture/cwalk.py) writes frame columns as msgpack directly, so a
    frame never becomes Python objects on the agent's hot path; :func:`encode_batch` splices
    ``packed`` into the batch as is. Read as a mapping (tests, in-process consumers) it decodes
    once, on first access, to exactly the lists the encoding came from.
    """

    __slots__ = ("packed", "rows", "_cols")

    def __init__(self, packed: bytes, rows: int) -> None:
        self.packed = packed
        self.rows = rows
        self._cols: dict[str, list] | None = None

    def _decoded(self) -> dict[str, list]:
        if self._cols is None:
            self._cols = msgpack.unpackb(self.packed, raw=False, use_list=True)
        return self._cols

    def __getitem__(self, name: str) -> list:
        return self._decoded()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._decoded())

    def __len__(self) -> int:
        return len(self._decoded())


# ---------------------------------------------------------------------------------------------
# Encoding

def columns_of(records: list[Any]) -> dict[str, list]:
    """Turn frame records (or row dicts) into the column-wise layout."""
    names = [f.name for f in ev.fields_of("frame")]
    if records and isinstance(records[0], dict):
        return {n: [r.get(n) for r in records] for n in names}
    return {n: [getattr(r, n) for r in records] for n in names}


def _wire_events(kind: str, events: Any) -> Any:
    if kind in ev.COLUMNAR:
        if isinstance(events, dict):
            return events
        return columns_of(list(events))
    out = []
    for e in events:
        out.append(e if isinstance(e, dict) else ev.to_wire(e))
    return out


def encode_batch(batch: Batch, max_bytes: int = MAX_BATCH_BYTES) -> bytes:
    """Encode a batch to msgpack.

    Raises:
        OversizeError: if the encoded batch is larger than ``max_bytes`` (split it and retry).
        SubjectError: if site or host is not a valid token.
    """
    check_token(batch.site, "site")
    check_token(batch.host, "host")
    events = batch.events
    packed = isinstance(events, PackedColumns)
    doc = {**batch.fields, "v": batch.v, "kind": batch.kind, "site": batch.site,
           "host": batch.host, "run": batch.run, "seq": batch.seq, "t0": batch.t0,
           "t1": batch.t1, "events": events if packed else _wire_events(batch.kind, events)}
    data = _pack_spliced(doc) if packed else msgpack.packb(doc, use_bin_type=True)
    if len(data) > max_bytes:
        raise OversizeError(
            f"{batch.kind} batch of {len(batch)} events encodes to {len(data)} bytes, "
            f"over the {max_bytes}-byte limit")
    return data


def _pack_spliced(doc: dict[str, Any]) -> bytes:
    # The bytes msgpack.packb(doc) would give, with PackedColumns values copied in as made.
    packer = msgpack.Packer(use_bin_type=True)
    out = [packer.pack_map_header(len(doc))]
    for key, value in doc.items():
        out.append(packer.pack(key))
        out.append(value.packed if isinstance(value, PackedColumns) else packer.pack(value))
    return b"".join(out)


# ---------------------------------------------------------------------------------------------
# Decoding and validation

def _compile(kind: str) -> tuple[dict[str, tuple[frozenset[type], bool]], tuple[str, ...]]:
    table: dict[str, tuple[frozenset[type], bool]] = {}
    required = []
    for f in ev.fields_of(kind):
        m = f.metadata
        nullable = (not m["required"]) and f.default is None
        table[f.name] = (frozenset(ev._PYTYPES[m["json"]]), nullable)
        if m["required"]:
            required.append(f.name)
    return table, tuple(required)


_TABLES = {kind: _compile(kind) for kind in ev.KINDS}
_NONE = type(None)


_MISSING = object()
_MISSING_T = type(_MISSING)


def _check_rows(kind: str, events: Any) -> None:
    # Hot path: one C-level pass per known field over all events (map/methodcaller/set), and
    # only when that finds a problem, the slow walk below that names the event and field.
    if type(events) is not list:
        raise SchemaError(f"{kind} batch: 'events' must be a list, got {type(events).__name__}")
    table, required = _TABLES[kind]
    if set(map(type, events)) <= {dict}:
        for name, (types, nullable) in table.items():
            seen = set(map(type, map(methodcaller("get", name, _MISSING), events)))
            if _MISSING_T in seen:
                if name in required:
                    break
                seen.discard(_MISSING_T)
            if nullable:
                seen.discard(_NONE)
            if not seen <= types:
                break
        else:
            return
    _explain_rows(kind, events, table, required)


def _explain_rows(kind: str, events: list, table: dict, required: tuple[str, ...]) -> None:
    for i, e in enumerate(events):
        if type(e) is not dict:
            raise SchemaError(f"{kind} event #{i}: must be a map, got {type(e).__name__}")
        for name in required:
            if name not in e:
                raise SchemaError(f"{kind} event #{i}: required field '{name}' is missing")
        for name, value in e.items():
            spec = table.get(name)
            if spec is None:
                continue  # unknown keys are ignored (forward compatibility)
            types, nullable = spec
            t = type(value)
            if t not in types and not (nullable and t is _NONE):
                raise SchemaError(
                    f"{kind} event #{i}: field '{name}' must be {_typename(types)}, "
                    f"got {t.__name__}")


def _check_columns(kind: str, events: Any) -> None:
    # Hot path for high-volume kinds: one C-level pass per column (set(map(type, col))).
    if type(events) is not dict:
        raise SchemaError(f"{kind} batch: 'events' must be a map of columns, got {type(events).__name__}")
    table, required = _TABLES[kind]
    for name in required:
        if name not in events:
            raise SchemaError(f"{kind} batch: required column '{name}' is missing")
    length = None
    for name, col in events.items():
        if type(col) is not list:
            raise SchemaError(f"{kind} batch: column '{name}' must be a list, got {type(col).__name__}")
        if length is None:
            length = len(col)
        elif len(col) != length:
            raise SchemaError(
                f"{kind} batch: column '{name}' has {len(col)} values, expected {length}")
        spec = table.get(name)
        if spec is None:
            continue
        types, nullable = spec
        seen = set(map(type, col))
        if nullable:
            seen.discard(_NONE)
        if not seen <= types:
            bad = next(iter(seen - types))
            raise SchemaError(
                f"{kind} batch: column '{name}' must hold {_typename(types)}, found {bad.__name__}")


def _typename(types: frozenset[type]) -> str:
    return " or ".join(sorted(t.__name__ for t in types))


def _int(doc: dict, name: str, minimum: int | None = None) -> int:
    value = doc.get(name)
    if type(value) is not int:
        raise SchemaError(f"envelope field '{name}' must be an integer, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise SchemaError(f"envelope field '{name}' must be >= {minimum}, got {value}")
    return value


def decode_batch(data: bytes | bytearray | memoryview, max_bytes: int = MAX_BATCH_BYTES) -> Batch:
    """Decode and validate one batch.

    Raises:
        OversizeError: if ``data`` is larger than ``max_bytes`` (checked before parsing).
        MalformedError: if it is not one complete msgpack map (random bytes, truncated data).
        VersionError: if ``v`` is not 1.
        SchemaError: if an envelope field or an event field is missing or of the wrong type,
            the kind is unknown, or site/host is not a valid token.
    """
    if len(data) > max_bytes:
        raise OversizeError(f"batch of {len(data)} bytes is over the {max_bytes}-byte limit")
    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except msgpack.ExtraData:
        raise MalformedError("trailing bytes after the msgpack batch") from None
    except (ValueError, TypeError, UnicodeDecodeError, msgpack.UnpackException) as exc:
        # OutOfData (truncated), FormatError, StackError (deep nesting), bad map keys.
        raise MalformedError(f"not a msgpack batch: {type(exc).__name__}: {exc}"[:200]) from None
    if type(doc) is not dict:
        raise MalformedError(f"a batch must be a msgpack map, got {type(doc).__name__}")
    if "v" not in doc:
        raise SchemaError("envelope field 'v' (wire version) is missing")
    if type(doc["v"]) is not int or doc["v"] != ev.VERSION:  # 1.0 and True are not 1 here
        raise VersionError(f"wire version {doc['v']!r} is not supported (this reader speaks v1)")
    kind = doc.get("kind")
    if type(kind) is not str or kind not in _TABLES:
        raise SchemaError(f"unknown kind {kind!r} (v1 kinds: {', '.join(ev.KINDS)})")
    try:
        site = check_token(doc.get("site"), "site")
        host = check_token(doc.get("host"), "host")
    except SubjectError as exc:
        raise SchemaError(str(exc)) from None
    run = doc.get("run")
    if type(run) is not str or not 0 < len(run) <= 64:
        raise SchemaError("envelope field 'run' must be a string of 1-64 characters")
    seq = _int(doc, "seq", 1)
    t0 = _int(doc, "t0", 0)
    t1 = _int(doc, "t1", t0)
    if "events" not in doc:
        raise SchemaError("envelope field 'events' is missing")
    events = doc["events"]
    if kind in ev.COLUMNAR:
        _check_columns(kind, events)
    else:
        _check_rows(kind, events)
    extra = {k: v for k, v in doc.items() if k not in _ENVELOPE_KEYS or k in ("boot", "agent")}
    return Batch(kind=kind, site=site, host=host, run=run, seq=seq, t0=t0, t1=t1,
                 events=events, fields=extra)


__all__ = ["Batch", "CodecError", "MAX_BATCH_BYTES", "PackedColumns", "columns_of", "decode_batch",
           "encode_batch"]

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

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgpack
import msgspec

from . import events as ev
from . import lazy, wire
from .errors import (
    CodecError,
    MalformedError,
    OversizeError,
    SchemaError,
    SubjectError,
    VersionError,
)
from .subjects import MAX_TOKEN, check_token
from .wire import ENCODER

MAX_PAYLOAD = 8 * 1024 * 1024
"""The bus's ``max_payload`` (the embedded server's, and the one ``deploy/nats`` configures).
nats-server counts a message's headers in it, so a batch gets :data:`HEADER_ROOM` less."""
HEADER_ROOM = 4096
"""Room left in a message for its headers (``Nats-Msg-Id``: host, run, kind, seq)."""
MAX_BATCH_BYTES = MAX_PAYLOAD - HEADER_ROOM
"""Largest batch accepted (and produced): with its headers it fits the bus's max_payload."""

_ENVELOPE_KEYS = frozenset(ev.ENVELOPE) | {"events"}


@dataclass(slots=True)
class Batch:
    """One decoded batch. ``events`` is a list of dicts, or for columnar kinds a dict of lists;
    decoded, they are lazy equivalents (:mod:`netevents.lazy`): a ``MutableSequence`` of rows,
    a ``MutableMapping`` of columns, equal to the list or dict and changed as one.

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
        events = self.events
        kind = type(events)
        # The decoded types first, by exact type: isinstance against an ABC is a Python call
        # (ABCMeta.__instancecheck__), and consumers take the length of every batch.
        if kind is lazy.LazyRows or kind is list:
            return len(events)
        if kind is lazy.LazyColumns or kind is PackedColumns:
            return events.rows
        if is_columns(events):
            return len(next(iter(events.values()), ()))
        return len(events)

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

    The C block walker (netevents/agent/capture/cwalk.py) writes frame columns as msgpack directly, so a
    frame never becomes Python objects on the agent's hot path; :func:`encode_batch` splices
    the encoding into the batch as is. Read as a mapping (tests, in-process consumers) it decodes
    once, on first access, to exactly the lists the encoding came from.

    The encoding is ``packed`` (bytes), or, from the C walker, ``parts``: buffers lent by their
    maker whose concatenation is the encoding, and ``release``, called once when they are no
    longer needed: :func:`encode_batch` joins them with the batch's envelope in one copy and
    gives them back at once (``packed`` is then read from the encoded batch), as does a first
    use of ``packed`` (a join) or the end of this object.
    """

    __slots__ = ("_packed", "rows", "_cols", "_parts", "_release", "_within")

    def __init__(self, packed: bytes | None, rows: int, parts: list | None = None,
                 release: Callable[[], None] | None = None) -> None:
        if (packed is None) == (parts is None):
            raise ValueError("PackedColumns: packed or parts, one of them")
        self._packed = packed
        self.rows = rows
        self._cols: dict[str, list] | None = None
        self._parts = parts
        self._release = release
        self._within: tuple[bytes, int] | None = None

    @property
    def packed(self) -> bytes:
        if self._packed is None:
            if self._within is not None:
                data, at = self._within
                self._packed, self._within = data[at:], None
            else:
                self._packed = b"".join(self._parts)  # type: ignore[arg-type]
                self._free()
        return self._packed

    def _encoded_in(self, data: bytes, at: int) -> None:
        """The encoding is now ``data[at:]`` (an encoded batch): the lent parts go back."""
        if self._packed is None:
            self._within = (data, at)
            self._free()

    def chunks(self) -> list:
        """Buffers whose concatenation is the encoding (valid while this object lives)."""
        return self._parts if self._parts is not None else [self.packed]

    def _free(self) -> None:
        self._parts = None
        release, self._release = self._release, None
        if release is not None:
            release()

    def __del__(self) -> None:
        self._free()

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
        if isinstance(events, Mapping):
            return events if type(events) is dict else dict(events)
        return columns_of(list(events))
    if type(events) is list and set(map(type, events)) <= {dict}:
        return events  # already wire dicts (one C-level pass instead of a loop)
    return [e if isinstance(e, (dict, msgspec.Struct)) else ev.to_wire(e) for e in events]


_NO_BYTES = msgspec.Raw(b"")


class EncodedParts:
    """An encoded batch as buffers to be concatenated, some lent by its PackedColumns (kept
    alive, and so lent, as long as this object): what a bus client whose publish command joins
    them itself (netevents.bus.pubcmd) sends without an encoded copy of its own.
    ``bytes(it)`` is the encoded batch."""

    __slots__ = ("parts", "size", "_events")

    def __init__(self, parts: list, size: int, events: PackedColumns) -> None:
        self.parts = parts
        self.size = size
        self._events = events

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return b"".join(self.parts)


def encode_batch(batch: Batch, max_bytes: int = MAX_BATCH_BYTES, *,
                 parts: bool = False) -> Any:
    """Encode a batch to msgpack: bytes, or with ``parts`` (and packed columns) an
    :class:`EncodedParts` holding the column buffers as they are.

    Raises:
        OversizeError: if the encoded batch is larger than ``max_bytes`` (split it and retry).
        SchemaError: if a value cannot be encoded (an int past 64 bits, an object msgpack has no
            form for, a string holding a lone surrogate).
        SubjectError: if site or host is not a valid token.
    """
    check_token(batch.site, "site")
    check_token(batch.host, "host")
    events = batch.events
    walked = isinstance(events, PackedColumns)  # from the C walker: buffers it lends
    packed = walked or (  # or decoded lazily, unchanged: the bytes it came in
        isinstance(events, (lazy.LazyColumns, lazy.LazyRows)) and events.raw is not None)
    # A list kind's list of events goes to the C encoder as the producer made it: it takes only
    # exact dicts (and plain values in them), and says None for anything else, which then goes
    # through _wire_events and msgspec as before (the same bytes, or the same error).
    plain = not packed and type(events) is list and batch.kind not in ev.COLUMNAR
    doc = {**batch.fields, "v": batch.v, "kind": batch.kind, "site": batch.site,
           "host": batch.host, "run": batch.run, "seq": batch.seq, "t0": batch.t0,
           "t1": batch.t1, "events": events if packed or plain else _wire_events(batch.kind, events)}
    data = lazy.encode(doc) if lazy.ENABLED and not packed else None
    if data is None and plain:
        doc["events"] = _wire_events(batch.kind, events)
    try:
        if data is not None:
            pass  # encoded in C: msgspec's bytes
        elif walked and "events" not in batch.fields:
            # The envelope with an empty placeholder for the events (the last key), then the
            # columns' encoding after it: one copy of the ~MB column bytes, one join.
            doc["events"] = _NO_BYTES
            head = ENCODER.encode(doc)
            if parts:
                chunks = [head, *events.chunks()]
                size = _fits(batch, sum(map(len, chunks)), max_bytes)
                return EncodedParts(chunks, size, events)
            data = b"".join([head, *events.chunks()])
            events._encoded_in(data, len(head))
        else:
            if packed:
                doc["events"] = msgspec.Raw(events.packed if walked else events.raw)
            data = ENCODER.encode(doc)
    except (TypeError, OverflowError, msgspec.EncodeError) as exc:
        raise SchemaError(f"{batch.kind} batch cannot be encoded: {exc}") from None
    except UnicodeEncodeError as exc:  # a lone surrogate (os.fsdecode's for a byte not UTF-8)
        raise SchemaError(f"{batch.kind} batch cannot be encoded: a string holds "
                          f"{exc.object[exc.start:exc.end]!r}, which UTF-8 cannot encode "
                          f"({exc.reason})") from None
    _fits(batch, len(data), max_bytes)
    return data


def _fits(batch: Batch, size: int, max_bytes: int) -> int:
    """``size``, the encoded size of ``batch``; OversizeError if it is over ``max_bytes``."""
    if size > max_bytes:
        raise OversizeError(
            f"{batch.kind} batch of {len(batch)} events encodes to {size} bytes, "
            f"over the {max_bytes}-byte limit")
    return size


# ---------------------------------------------------------------------------------------------
# Decoding and validation

_HEAD = msgspec.msgpack.Decoder(Annotated[dict[str, msgspec.Raw], msgspec.Meta(
    max_length=ev.MAX_ENVELOPE_KEYS)])
_INT = msgspec.msgpack.Decoder(int)
_STR = msgspec.msgpack.Decoder(str)
_MAP_HEADS = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}
_FREE_FORM_PER_BATCH = 4 * ev.MAX_ANY_BYTES


def _int(head: dict, name: str, minimum: int) -> int:
    try:
        value = _INT.decode(head[name])
    except KeyError:
        raise SchemaError(f"envelope field '{name}' is missing") from None
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:  # DecodeError: bad UTF-8
        got = str(exc).partition("got `")[2].rstrip("`") or "something else"
        raise SchemaError(f"envelope field '{name}' must be an integer, got {got}") from None
    if value < minimum:
        raise SchemaError(f"envelope field '{name}' must be >= {minimum}, got {value}")
    return value


def _str(head: dict, name: str) -> Any:
    raw = head.get(name)
    if raw is None:
        return None
    try:
        return _STR.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError):  # not a string, or not UTF-8
        return _MISSING


_MISSING = object()


def decode_batch(data: bytes | bytearray | memoryview, max_bytes: int = MAX_BATCH_BYTES, *,
                 lazy_events: bool = True) -> Batch:
    """Decode and validate one batch against the v1 contract (``schemas/v1``).

    Bounded: at most ``max_bytes``, containers and free-form values within the limits of
    :mod:`netevents.events` (``MAX_ROWS``, ``MAX_MAP``, ...), checked as the data is read.

    ``lazy_events=False`` makes the events Python objects at once, in the one pass that
    decodes the envelope (the same values): for a reader that reads all of them, which the
    lazy events (:mod:`netevents.lazy`) would cost the C validation and then a decoder call per
    column -- twice the one pass, for a correlator's frame batches.

    Raises:
        OversizeError: if ``data`` is larger than ``max_bytes`` (checked before parsing).
        MalformedError: if it is not one complete msgpack map (random bytes, truncated data).
        VersionError: if ``v`` is not 1.
        SchemaError: if an envelope field or an event field is missing, of the wrong type or
            out of range, the kind is unknown, or site/host is not a valid token.
    """
    if len(data) > max_bytes:
        raise OversizeError(f"batch of {len(data)} bytes is over the {max_bytes}-byte limit")
    if not data or data[0] not in _MAP_HEADS:
        raise MalformedError("a batch must be a msgpack map" + (
            f", got {_first_type(data[0])}" if data else ", got nothing"))
    if data[0] != 0xDF and (data[0] < 0x90 or int.from_bytes(data[1:3]) <= ev.MAX_ENVELOPE_KEYS):
        try:
            if lazy_events and lazy.ENABLED and (found := lazy.decode(data)) is not None:
                return _one_pass(*found)  # validated in C, events made objects when read
            return _one_pass(wire.ONE_PASS.decode(data))
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError, SchemaError):
            pass  # not the common shape, or not valid: the careful path accepts or explains
    try:
        head = _HEAD.decode(data)
    except msgspec.ValidationError as exc:
        raise SchemaError(f"envelope: {exc}") from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise MalformedError(f"not a msgpack batch: {type(exc).__name__}: {exc}"[:200]) from None
    if "v" not in head:
        raise SchemaError("envelope field 'v' (wire version) is missing")
    try:
        v = _ANY_SMALL.decode(head["v"]) if len(head["v"]) <= 16 else "(large value)"
    except (msgspec.DecodeError, RecursionError):
        v = "(unreadable)"
    if type(v) is not int or v != ev.VERSION:  # 1.0 and True are not 1 here
        # (an extension value named by its type code: its repr would hold an address)
        shown = f"msgpack extension type {v.code}" if type(v) is msgspec.msgpack.Ext else repr(v)
        raise VersionError(f"wire version {shown} is not supported (this reader speaks v1)")
    kind = _str(head, "kind")
    k = wire.KINDS.get(kind) if type(kind) is str else None
    if k is None:
        shown = kind if type(kind) is str else "(not a string)"
        raise SchemaError(f"unknown kind {shown!r} (v1 kinds: {', '.join(ev.KINDS)})")
    try:
        site = check_token(_str(head, "site"), "site")
        host = check_token(_str(head, "host"), "host")
    except SubjectError as exc:
        raise SchemaError(str(exc)) from None
    run = _str(head, "run")
    if type(run) is not str or not 0 < len(run) <= 64:
        raise SchemaError("envelope field 'run' must be a string of 1-64 characters")
    seq = _int(head, "seq", 1)
    t0 = _int(head, "t0", 0)
    t1 = _int(head, "t1", t0)
    raw_events = head.get("events")
    if raw_events is None:
        raise SchemaError("envelope field 'events' is missing")
    budget = [_FREE_FORM_PER_BATCH]
    try:
        if k.columnar:
            events = wire.decode_columns(k, raw_events, budget)
        elif k.rows is not None:
            try:
                events = k.rows.decode(raw_events)  # the fast path: every known key, no other
                fast = True
            except msgspec.ValidationError:
                events = k.events.decode(raw_events)
                fast = False
        else:
            events = k.events.decode(raw_events)
            fast = False
    except msgspec.ValidationError as exc:
        raise k.explain(exc) from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise MalformedError(f"not a msgpack batch: {type(exc).__name__}: {exc}"[:200]) from None
    if k.columnar:
        _check_lengths(kind, events)
    elif not fast:
        if len(ENCODER.encode(events)) != len(raw_events):
            # A key the typed pass skipped (or an encoder other than msgpack's shortest forms).
            events = wire.events_with_unknown_keys(k, raw_events, events, budget)
        if k.any_fields:
            wire.resolve_free_form(k, events, budget)
    fields = {}
    for name, raw in head.items():
        if name in _ENVELOPE_ONLY:
            continue
        dec = k.batch_fields.get(name) or _BOTH.get(name)
        if dec is None:
            fields[name] = wire.free_form(raw, budget, f"{kind} batch: field '{name}'")
            continue
        try:
            fields[name] = dec.decode(raw)
        except msgspec.ValidationError as exc:
            raise SchemaError(f"{kind} batch: field '{name}': {exc}") from None
        except (msgspec.DecodeError, RecursionError) as exc:  # a string not UTF-8
            raise MalformedError(f"{kind} batch: field '{name}': {exc}"[:200]) from None
    return Batch(kind=kind, site=site, host=host, run=run, seq=seq, t0=t0, t1=t1,
                 events=events, fields=fields)


def _one_pass(b: Any, events: Any = None) -> Batch:
    """A batch from :data:`netevents.wire.ONE_PASS`'s struct, with the checks a schema type
    cannot make (raises SchemaError, and the careful path says which). ``events``: the lazy
    events of a batch validated in C (``b`` is then its envelope, of ``wire.ONE_PASS_HEADS``)."""
    # Hot path (once per message of every consumer): written for speed.
    site, host = b.site, b.host
    if b.t1 < b.t0 or not (site in _TOKENS or _token(site)) or not (host in _TOKENS or _token(host)):
        raise SchemaError("envelope")
    kind, picks, columns = _SHAPE[type(b)]
    values = _astuple(b)
    fields = _pick(values, picks, _UNSET, False)
    if events is None:
        events = b.events
        if columns is not None:
            events = _pick(_astuple(events), columns, _UNSET, True)
            if events is None:
                raise SchemaError("column lengths")
    # by position (kind, site, host, run, seq, t0, t1, events, fields): a third of the cost
    # of the dataclass's __init__ by keyword
    return Batch(kind, site, host, b.run, b.seq, b.t0, b.t1, events, fields)


def is_columns(events: Any) -> bool:
    """Whether a batch's events are columns (a ``Mapping`` of name -> list), as a columnar
    kind's are: the decoded types are told by exact type first (isinstance against the ABC
    is a Python call, on the hot path of every consumer)."""
    kind = type(events)
    if kind is lazy.LazyColumns or kind is dict:
        return True
    if kind is lazy.LazyRows or kind is list:
        return False
    return isinstance(events, Mapping)


def _token(value: str) -> bool:
    if _TOKEN.match(value) is None:
        return False
    if len(_TOKENS) >= 65536:
        _TOKENS.clear()
    _TOKENS.add(value)
    return True


def _shape(cls: Any) -> tuple[str, tuple, tuple | None]:
    """(kind, its batch fields as (index, name), its columns as (index, name) or None)."""
    kind = cls.__struct_config__.tag
    names = cls.__struct_fields__
    picks = tuple((names.index(n), n) for n in wire.ONE_PASS_FIELDS[kind])
    columns = None
    if kind in ev.COLUMNAR and cls not in wire.ONE_PASS_HEADS:
        col_type = next(t for n, t in zip(names, msgspec.structs.fields(cls), strict=True)
                        if n == "events").type
        columns = tuple(enumerate(col_type.__struct_fields__))
    return kind, picks, columns


_SHAPE = {cls: _shape(cls) for cls in wire.ONE_PASS_TYPES + wire.ONE_PASS_HEADS}
_TOKENS: set[str] = set()
"""Site and host tokens already found valid (bounded): a fleet's hosts repeat on every batch."""
_UNSET = msgspec.UNSET
_pick = lazy.pick_any
"""The set fields of a decoded struct as a dict (in C when the codec uses the extension)."""
_astuple = msgspec.structs.astuple
_TOKEN = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_TOKEN}}}\Z")
_ANY_SMALL = msgspec.msgpack.Decoder()
_ENVELOPE_ONLY = frozenset(_ENVELOPE_KEYS) - {"boot", "agent"}
_BOTH = {"boot": _STR, "agent": _STR}


def _first_type(byte: int) -> str:
    if byte <= 0x7F or 0xCC <= byte <= 0xD3 or byte >= 0xE0:
        return "int"
    if 0x90 <= byte <= 0x9F or byte in (0xDC, 0xDD):
        return "list"
    if 0xA0 <= byte <= 0xBF or byte in (0xD9, 0xDA, 0xDB):
        return "str"
    return {0xC0: "nil", 0xC2: "bool", 0xC3: "bool", 0xCA: "float", 0xCB: "float"}.get(
        byte, "bytes or an extension type")


def _check_lengths(kind: str, columns: dict[str, list]) -> None:
    lengths = set(map(len, columns.values()))
    if len(lengths) > 1:
        names = list(columns)
        first = len(columns[names[0]])
        for name in names:
            if len(columns[name]) != first:
                raise SchemaError(f"{kind} batch: column '{name}' has {len(columns[name])} "
                                  f"values, expected {first}")


__all__ = ["Batch", "CodecError", "EncodedParts", "HEADER_ROOM", "MAX_BATCH_BYTES", "MAX_PAYLOAD", "PackedColumns", "columns_of", "decode_batch",
           "encode_batch"]

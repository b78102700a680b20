"""The v1 contract compiled: typed msgspec decoders generated from :mod:`netevents.events`.

The records in ``events.py`` carry a wire type (:class:`~netevents.events.W`) per field; from
the same types come the JSON Schema files and, here, the types msgspec decodes against, so the
codec validates *while* it decodes (C speed) and accepts what the published schema accepts.

Events are decoded as ``TypedDict`` values: plain dicts holding exactly the keys on the wire. A
``TypedDict`` skips keys it does not know, so the codec checks that nothing was skipped (the
decoded events encode back to as many bytes as they came in, the case of every batch our
agents make) and otherwise takes them again key by key to keep the unknown ones
(:func:`events_with_unknown_keys`). Values of free form (an unknown key's value, an incident's
``details``) are decoded under bounds: :data:`~netevents.events.MAX_ANY_BYTES` and
:data:`~netevents.events.MAX_ANY_DEPTH`, JSON types and bytes only (no extension types).
"""

from __future__ import annotations

import dataclasses
import operator
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Annotated, Any, ClassVar, Literal, NotRequired, Required, TypedDict, Union

import msgspec

from . import events as ev
from .errors import MalformedError, SchemaError

ENCODER = msgspec.msgpack.Encoder()


def _reject_ext(code: int, data: memoryview) -> Any:
    raise SchemaError(f"msgpack extension type {code} is not part of v1")


_ANY = msgspec.msgpack.Decoder(ext_hook=_reject_ext)
_SCALARS = {"integer": int, "number": int | float, "string": str, "boolean": bool}


def mtype(w: ev.W) -> Any:
    """The msgspec type of one wire type (free form decodes as ``Raw``, bounded afterwards)."""
    if w.json == "any":
        t: Any = msgspec.Raw
    elif w.json == "bytes":
        t = bytes
    elif w.json == "array":
        t = Annotated[list[mtype(w.items)], msgspec.Meta(max_length=w.max_items)]
    elif w.json == "object":
        t = Annotated[dict[str, mtype(w.values)], msgspec.Meta(max_length=w.max_items)]
    elif w.enum:
        t = Literal[w.enum]
    else:
        parts = [_SCALARS[j] for j in w.json.split("|")]
        t = parts[0]
        for p in parts[1:]:
            t = t | p
        if w.minimum is not None:
            t = Annotated[t, msgspec.Meta(ge=w.minimum)]
    return t | None if w.nullable else t


def has_any(w: ev.W) -> bool:
    return w.json == "any" or any(has_any(x) for x in (w.items, w.values) if x is not None)


def free_form(raw: Any, budget: list[int], where: str) -> Any:
    """A value of free form: at most MAX_ANY_BYTES (and what is left of ``budget[0]`` for the
    batch), at most MAX_ANY_DEPTH deep, JSON types and bytes only.

    Raises:
        SchemaError: if it breaks one of these bounds or holds an extension type.
    """
    n = len(raw)
    if n > ev.MAX_ANY_BYTES or n > budget[0]:
        raise SchemaError(f"{where}: a value of free form of {n} bytes is over the limit "
                          f"({ev.MAX_ANY_BYTES} bytes each, {4 * ev.MAX_ANY_BYTES} per batch)")
    budget[0] -= n
    try:
        value = _ANY.decode(raw)
    except SchemaError as exc:
        raise SchemaError(f"{where}: {exc}") from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise MalformedError(f"{where}: not msgpack: {exc}") from None
    _check_json(value, 0, where)
    return value


_JSON_LEAVES = (str, int, float, bool, bytes, type(None))


def _check_json(value: Any, depth: int, where: str) -> None:
    if depth > ev.MAX_ANY_DEPTH:
        raise SchemaError(f"{where}: nested deeper than {ev.MAX_ANY_DEPTH}")
    if isinstance(value, dict):
        for k, v in value.items():
            if type(k) is not str:
                raise SchemaError(f"{where}: map keys must be strings, got {type(k).__name__}")
            _check_json(v, depth + 1, where)
    elif isinstance(value, list):
        for v in value:
            _check_json(v, depth + 1, where)
    elif not isinstance(value, _JSON_LEAVES):  # a msgpack timestamp decodes as a datetime
        raise SchemaError(f"{where}: {type(value).__name__} (a msgpack extension type) is not "
                          "part of v1")


class EventRow(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    """One decoded event of a list kind, read as a read-only mapping (``e["count"]``,
    ``e.get("flow")``, ``"pc" in e``, ``dict(e)``) holding exactly the keys on the wire.

    The fast form of a decoded event (one C-level pass, no per-event dict, not tracked by the
    garbage collector). A field absent on the wire is ``UNSET`` inside and absent as a key;
    it encodes back to the same bytes. Events that carry keys v1 does not know (and incident
    events, whose details are free form) are plain dicts instead: consumers read both through
    the ``Mapping`` interface. It equals a dict with the same items.
    """

    # Hot paths of every consumer: written for speed (one getattr, no exception on a miss).
    _names: ClassVar[frozenset[str]] = frozenset()

    def __getitem__(self, name: str) -> Any:
        value = getattr(self, name) if name in self._names else msgspec.UNSET
        if value is msgspec.UNSET:
            raise KeyError(name)
        return value

    def get(self, name: str, default: Any = None) -> Any:
        value = getattr(self, name) if name in self._names else msgspec.UNSET
        return default if value is msgspec.UNSET else value

    def __contains__(self, name: object) -> bool:
        return name in self._names and getattr(self, name) is not msgspec.UNSET  # type: ignore[arg-type]

    def keys(self) -> list[str]:
        return [n for n in self.__struct_fields__ if getattr(self, n) is not msgspec.UNSET]

    def items(self) -> list[tuple[str, Any]]:
        return [(n, v) for n in self.__struct_fields__
                if (v := getattr(self, n)) is not msgspec.UNSET]

    def values(self) -> list[Any]:
        return [v for _n, v in self.items()]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def to_dict(self) -> dict[str, Any]:
        """The event as the dict it came from (a copy a program may change)."""
        return dict(self.items())

    ABSENT: ClassVar[Any] = msgspec.UNSET
    """What :meth:`reader` gives for a key an event does not have (false, like None)."""

    @staticmethod
    def reader(*names: str) -> Callable[[Any], tuple]:
        """A function giving the values of ``names`` in an event (any ``Mapping``) as a
        tuple, :attr:`ABSENT` for a key the event does not have.

        For consumers' hot paths, which read several fields of every event: a row (nearly
        every decoded event) is read by one ``attrgetter`` call, in C, where ``e.get(name)``
        is a Python call per name; any other mapping (a dict: an event with keys v1 does not
        know) by a ``get`` per name."""
        getters: dict[type, Callable[[Any], tuple]] = {}

        def read(event: Any) -> tuple:
            cls = type(event)
            getter = getters.get(cls)
            if getter is None:
                getter = getters[cls] = EventRow._getter(cls, names)
            return getter(event)

        return read

    @staticmethod
    def _getter(cls: type, names: tuple[str, ...]) -> Callable[[Any], tuple]:
        if issubclass(cls, EventRow) and cls._names.issuperset(names):
            # a field absent on the wire is UNSET (= ABSENT) in the row
            if len(names) == 1:
                get_one = operator.attrgetter(names[0])
                return lambda event: (get_one(event),)
            return operator.attrgetter(*names)
        absent = EventRow.ABSENT
        return lambda event: tuple([event.get(name, absent) for name in names])


Mapping.register(EventRow)


def _row_struct(name: str, names: list[str], spec: list) -> type[EventRow]:
    spec.sort(key=lambda item: len(item) == 3)  # required fields first (no default)
    cls = msgspec.defstruct(name, spec, bases=(EventRow,), module=__name__, gc=False,
                            forbid_unknown_fields=True)
    cls._names = frozenset(names)
    globals()[name] = cls  # importable by name, so a row pickles
    return cls


_FLOW_KEYS = [f.name for f in dataclasses.fields(ev.Flow)]
FlowRow = _row_struct("FlowRow", _FLOW_KEYS, [
    (n, mtype(ev.FLOW.values) | msgspec.UnsetType, msgspec.UNSET) for n in _FLOW_KEYS])
"""A drop's ``flow`` map in its fast form when it holds only the keys of
:class:`~netevents.events.Flow` (each of the map's value type): one Struct instead of a dict."""


def _row_mtype(w: ev.W) -> Any:
    if w.json == "object" and w.values == ev.FLOW.values and w.max_items == ev.FLOW.max_items:
        return FlowRow | None if w.nullable else FlowRow
    return mtype(w)


def row_type(kind: str) -> type[EventRow]:
    """The :class:`EventRow` of a list kind, from its record in ``events.py``."""
    fields = ev.fields_of(kind)
    spec = []
    for f in fields:
        t = _row_mtype(f.metadata["wire"])
        spec.append((f.name, t) if f.metadata["required"]
                    else (f.name, t | msgspec.UnsetType, msgspec.UNSET))
    return _row_struct(f"{ev.RECORDS[kind].__name__}Row", [f.name for f in fields], spec)


class Kind:
    """The compiled decoders of one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.columnar = kind in ev.COLUMNAR
        fields = ev.fields_of(kind)
        self.known = frozenset(f.name for f in fields)
        self.required = tuple(f.name for f in fields if f.metadata["required"])
        self.any_fields = tuple(f.name for f in fields if has_any(f.metadata["wire"]))
        self.batch_fields = {name: msgspec.msgpack.Decoder(mtype(w))
                             for name, (w, _doc) in ev.BATCH_FIELDS.get(kind, {}).items()}
        if self.columnar:
            self.columns = {f.name: msgspec.msgpack.Decoder(Annotated[list[mtype(
                f.metadata["wire"])], msgspec.Meta(max_length=ev.MAX_ROWS)]) for f in fields}
            self.open = msgspec.msgpack.Decoder(Annotated[dict[str, msgspec.Raw], msgspec.Meta(
                max_length=ev.MAX_EVENT_KEYS)])
        else:
            row = TypedDict(f"{kind}_event", {  # type: ignore[operator]
                f.name: (Required if f.metadata["required"] else NotRequired)[mtype(f.metadata["wire"])]
                for f in fields})
            self.events = msgspec.msgpack.Decoder(
                Annotated[list[row], msgspec.Meta(max_length=ev.MAX_ROWS)])
            # The fast path: rows as EventRow, refusing any key v1 does not know (those
            # batches, and any that fail, take the path above, which keeps or explains them).
            self.row = None if self.any_fields else row_type(kind)
            self.rows = None if self.row is None else msgspec.msgpack.Decoder(
                Annotated[list[self.row], msgspec.Meta(max_length=ev.MAX_ROWS)])
            self.open = msgspec.msgpack.Decoder(Annotated[list[Annotated[
                dict[str, msgspec.Raw], msgspec.Meta(max_length=ev.MAX_EVENT_KEYS)]],
                msgspec.Meta(max_length=ev.MAX_ROWS)])

    def explain(self, exc: msgspec.ValidationError) -> SchemaError:
        """msgspec's validation error in the codec's words (event number, field or column)."""
        return SchemaError(explain(self.kind, self.columnar, str(exc)))


_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_EXPECTED = re.compile(r"^Expected `(?P<want>[^`]+)`(?:, got `(?P<got>[^`]+)`)?$")
_MISSING = re.compile(r"^Object missing required field `(?P<name>[^`]+)`$")
_NAMES = {"array": "list", "object": "map"}


def explain(kind: str, columnar: bool, message: str) -> str:
    m = _AT.match(message)
    what, path = (m.group("what"), m.group("path") or "") if m else (message, "")
    parts = re.findall(r"\[(\d+)\]|\.([A-Za-z0-9_]+)|\[\.\.\.\]", path)
    steps = [int(i) if i else name for i, name in parts]
    exp, miss = _EXPECTED.match(what), _MISSING.match(what)
    if columnar:
        if not steps:
            if miss:
                return f"{kind} batch: required column '{miss.group('name')}' is missing"
            if exp and exp.group("want") == "object":
                return f"{kind} batch: 'events' must be a map of columns, got {exp.group('got')}"
            return f"{kind} batch: events: {what}"
        col = steps[0]
        if len(steps) == 1 and exp and exp.group("want").startswith("array"):
            return f"{kind} batch: column '{col}' must be a list, got {exp.group('got')}"
        if len(steps) == 2 and exp:
            return (f"{kind} batch: column '{col}' must hold {exp.group('want')}, found "
                    f"{exp.group('got')}" if exp.group("got") else
                    f"{kind} batch: column '{col}' value #{steps[1]}: {what}")
        return f"{kind} batch: column '{col}': {what} (at {path})"
    if not steps:
        if exp and exp.group("want").startswith("array") and exp.group("got"):
            return f"{kind} batch: 'events' must be a list, got {exp.group('got')}"
        return f"{kind} batch: events: {what}"
    i = steps[0]
    if len(steps) == 1:
        if miss:
            return f"{kind} event #{i}: required field '{miss.group('name')}' is missing"
        if exp and exp.group("want") == "object":
            return f"{kind} event #{i}: must be a map, got {exp.group('got')}"
        return f"{kind} event #{i}: {what}"
    name = steps[1]
    if len(steps) == 2 and exp and exp.group("got"):
        want = " or ".join(_NAMES.get(t, t) for t in exp.group("want").split(" | "))
        return f"{kind} event #{i}: field '{name}' must be {want}, got {exp.group('got')}"
    return f"{kind} event #{i}: field '{name}': {what} (at {path})"


KINDS: dict[str, Kind] = {kind: Kind(kind) for kind in ev.KINDS}


# ---------------------------------------------------------------------------------------------
# One pass: a whole batch of the common shape (every key known to v1, no free form) decodes in
# one typed call, envelope and events together, instead of reading the envelope, then skipping
# over the events to find them, then decoding them. Anything else fails it and takes the
# careful path of netevents.codec.decode_batch, which accepts or explains it; so what this
# accepts is a part of what that accepts (the contract tests check the codec as a whole).

class BatchStruct(msgspec.Struct, gc=False, forbid_unknown_fields=True, tag_field="kind"):
    """Envelope fields common to every kind (``kind`` is the tag); subclasses add ``events``
    and their batch fields."""


def _batch_struct(kind: str, head: bool = False) -> Any:
    """The one-pass struct of a kind's batch; ``head``: the same with ``events`` only nil (the
    envelope of a batch whose events netevents._cvalid validated, spliced out: netevents.lazy)."""
    k = KINDS[kind]
    if head:
        events: Any = None
    elif k.columnar:
        fields = ev.fields_of(kind)
        cols = [(f.name, Annotated[list[mtype(f.metadata["wire"])], msgspec.Meta(
                    max_length=ev.MAX_ROWS)]) if f.metadata["required"] else
                (f.name, Annotated[list[mtype(f.metadata["wire"])], msgspec.Meta(
                    max_length=ev.MAX_ROWS)] | msgspec.UnsetType, msgspec.UNSET) for f in fields]
        cols.sort(key=lambda item: len(item) == 3)
        events = msgspec.defstruct(f"{ev.RECORDS[kind].__name__}Columns", cols,
                                   module=__name__, gc=False, forbid_unknown_fields=True)
        globals()[events.__name__] = events
    else:
        events = Annotated[list[k.row], msgspec.Meta(max_length=ev.MAX_ROWS)]
    spec: list[tuple] = [
        ("v", Literal[ev.VERSION]), ("site", str), ("host", str),
        ("run", Annotated[str, msgspec.Meta(min_length=1, max_length=64)]),
        ("seq", Annotated[int, msgspec.Meta(ge=1)]), ("t0", Annotated[int, msgspec.Meta(ge=0)]),
        ("t1", Annotated[int, msgspec.Meta(ge=0)]), ("events", events),
        ("boot", str | msgspec.UnsetType, msgspec.UNSET),
        ("agent", str | msgspec.UnsetType, msgspec.UNSET)]
    spec += [(name, mtype(w) | msgspec.UnsetType, msgspec.UNSET)
             for name, (w, _doc) in ev.BATCH_FIELDS.get(kind, {}).items()]
    name = f"{ev.RECORDS[kind].__name__}{'Head' if head else 'Batch'}"
    return msgspec.defstruct(name, spec, bases=(BatchStruct,), module=__name__, tag=kind,
                             gc=False, forbid_unknown_fields=True)


_ONE_PASS = tuple(_batch_struct(kind) for kind, k in KINDS.items()
                  if k.columnar or k.rows is not None)
ONE_PASS_TYPES = _ONE_PASS
ONE_PASS = msgspec.msgpack.Decoder(Union[_ONE_PASS])  # type: ignore[valid-type]  # noqa: UP007
"""Decodes a whole batch of any kind but ``incident`` when every key is known to v1."""
ONE_PASS_FIELDS = {cls.__struct_config__.tag: tuple(
    n for n in cls.__struct_fields__ if n not in ("v", "site", "host", "run", "seq", "t0", "t1",
                                                   "events")) for cls in _ONE_PASS}
"""Per kind, the batch fields of its one-pass struct (``boot``, ``agent``, the kind's own)."""
ONE_PASS_HEADS = tuple(_batch_struct(cls.__struct_config__.tag, head=True) for cls in _ONE_PASS)
"""The one-pass structs with ``events`` nil (each field as in ONE_PASS_TYPES, in the same order)."""


def decode_columns(k: Kind, raw: Any, budget: list[int]) -> dict[str, list]:
    """A column-wise batch's events: the map of columns read once (each column as raw bytes),
    then each known column by its typed decoder; unknown columns as bounded free form.

    Raises:
        SchemaError: a column missing, of the wrong type or over the limits.
    """
    try:
        opened = k.open.decode(raw)
    except msgspec.ValidationError as exc:
        raise k.explain(exc) from None
    out = {}
    for name, value in opened.items():
        dec = k.columns.get(name)
        if dec is None:
            col = free_form(value, budget, f"{k.kind} batch: column '{name}'")
            if type(col) is not list:
                raise SchemaError(f"{k.kind} batch: column '{name}' must be a list, got "
                                  f"{type(col).__name__}")
            out[name] = col
            continue
        try:
            out[name] = dec.decode(value)
        except msgspec.ValidationError as exc:
            msg = str(exc)
            msg = msg.replace("`$", f"`$.{name}", 1) if " - at `$" in msg else f"{msg} - at `$.{name}`"
            raise SchemaError(explain(k.kind, True, msg)) from None
    for name in k.required:
        if name not in out:
            raise SchemaError(f"{k.kind} batch: required column '{name}' is missing")
    return out


def events_with_unknown_keys(k: Kind, raw: Any, typed: Any, budget: list[int]) -> Any:
    """A list kind's events again with the keys the typed pass skipped (unknown ones, kept as
    they came, in wire order); the known ones are the typed pass's values."""
    try:
        opened = k.open.decode(raw)
    except msgspec.ValidationError as exc:
        raise k.explain(exc) from None
    rows = []
    for i, (event, fast) in enumerate(zip(opened, typed, strict=True)):
        rows.append({name: fast[name] if name in k.known else
                     free_form(value, budget, f"{k.kind} event #{i}: field '{name}'")
                     for name, value in event.items()})
    return rows


def resolve_free_form(k: Kind, events: Any, budget: list[int]) -> None:
    """Decode (bounded) the free-form values of the kind's fields, in place: Raw -> values."""
    for i, e in enumerate(events):
        for name in k.any_fields:
            value = e.get(name)
            if isinstance(value, dict):
                e[name] = {key: free_form(v, budget, f"{k.kind} event #{i}: {name}.{key}")
                           for key, v in value.items()}

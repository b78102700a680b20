"""Lazy events: a batch validated in C whole, its events made Python objects on first access.

Decoding a batch eagerly is capped by the cost of making Python objects (a few million values
a second on one core): far below what a consumer that reads a few fields, or none (a relay, a
counter), needs. With the optional C extension ``netevents._cvalid`` the codec instead

1. finds the ``events`` value of the batch's top-level map (``_cvalid.locate``),
2. decodes the envelope with msgspec, as the one-pass decoder would, with ``events`` spliced
   out (:data:`netevents.wire.ONE_PASS_HEADS`),
3. validates the events in C against the kind's type table (:mod:`netevents.cvalid_table`),
   building nothing, and
4. returns them as :class:`LazyColumns` (frame) or :class:`LazyRows` (list kinds), which decode
   with the same typed decoders as the one-pass path when first read: the values are the same.

The C validator says "yes" only where the one-pass decoder accepts; anything else (free form,
unknown keys, an error) returns None here and the codec takes its usual paths. Without the
extension (no compiler when netevents was installed) :data:`AVAILABLE` is False and the codec
decodes eagerly, as before.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Iterator, Mapping, MutableMapping, MutableSequence
from typing import Any, Union

import msgspec

from . import cvalid_table, wire
from . import events as ev

_ABI = 3
"""The table format and answers of _cvalid.c this module speaks (its ``ABI``; 2: ``encode``;
3: ``pick``)."""


def _load() -> Any:
    """The extension built with this copy of the package (next to this file), or None: not
    built (no C compiler when netevents was installed), only elsewhere (an editable install's
    finder would hand out the checkout's build to a wheel's copy of the package), or of
    another ABI (built from an older _cvalid.c)."""
    # By name: the extension is no Python module of the package (an ``import`` statement of
    # it would read, to tests/test_layout.py, as an import of the netevents package itself).
    name = f"{__package__}._cvalid"
    try:
        spec = importlib.util.find_spec(name)
        here = os.path.dirname(os.path.realpath(__file__))
        if spec is None or spec.origin is None or \
                os.path.dirname(os.path.realpath(spec.origin)) != here:
            return None
        module = importlib.import_module(name)
    except ImportError:
        return None
    return module if getattr(module, "ABI", None) == _ABI else None


_cvalid = _load()

AVAILABLE = _cvalid is not None
"""Whether the C validator is built (a test makes sure a checkout's build has it)."""
ENABLED = AVAILABLE and os.environ.get("NETEVENTS_CVALID", "1") != "0"
"""Whether the codec uses it (``NETEVENTS_CVALID=0`` turns it off; tests compare the two)."""
encode = _cvalid.encode if _cvalid is not None else None
"""``msgspec.msgpack.encode``'s bytes for a value of exact dicts (str keys), lists, tuples, str,
int, float, bool, None and bytes, made in C; None for anything else (msgspec then encodes it,
or raises). The codec uses it when :data:`ENABLED`."""


def pick_py(values: tuple, picks: tuple, unset: Any, same_length: bool) -> dict | None:
    """``{name: values[i] for i, name in picks if values[i] is not unset}`` (the codec's
    one-pass batch fields and columns, a lazy batch's column spans); with ``same_length``,
    None when the values picked differ in length. :data:`pick` makes the same in C."""
    out = {name: v for i, name in picks if (v := values[i]) is not unset}
    if same_length and len(set(map(len, out.values()))) > 1:
        return None
    return out


pick = _cvalid.pick if ENABLED else None
""":func:`pick_py` in one C call; None when the codec does not use the extension."""
pick_any = pick or pick_py
""":data:`pick`, else :func:`pick_py`: what the codec and :func:`decode` call."""

_HEAD = msgspec.msgpack.Decoder(Union[wire.ONE_PASS_HEADS])  # type: ignore[valid-type]  # noqa: UP007
_NIL = b"\xc0"


class LazyColumns(MutableMapping):
    """A frame batch's columns (name -> list), each decoded by its typed decoder when first
    read, then kept. Equal to a dict of the same lists, and changed as one (a program may set
    or delete a column, as it could in the dict the eager path returns)."""

    __slots__ = ("_buf", "_spans", "_decoders", "_cols", "_rows", "raw")

    def __init__(self, buf: memoryview, spans: dict[str, Any], decoders: dict, rows: int,
                 raw: memoryview) -> None:
        self._buf = buf
        self._spans = spans  # name -> (start, end) in buf, or None once set by the program
        self._decoders = decoders
        self._cols: dict[str, list] = {}
        self._rows = rows
        self.raw: memoryview | None = raw
        """The events' msgpack encoding as received (the encoder splices it back as is), None
        once changed."""

    @property
    def decoded(self) -> int:
        """Columns made Python objects so far (read, or set by the program)."""
        return len(self._cols)

    @property
    def rows(self) -> int:
        """Values in each column (the validator's count, decoding nothing)."""
        if self.raw is None:
            return len(next(iter(self.values()), ()))
        return self._rows

    def __getitem__(self, name: str) -> list:
        col = self._cols.get(name)
        if col is None:
            start, end = self._spans[name]  # KeyError for a column the batch does not have
            col = self._cols[name] = self._decoders[name].decode(self._buf[start:end])
        return col

    def get(self, name: str, default: Any = None) -> Any:
        # Mapping.get would try __getitem__ and catch its KeyError, two Python calls per
        # column: consumers read every column of every frame batch through get.
        col = self._cols.get(name)
        if col is None:
            if name not in self._spans:
                return default
            col = self[name]
        return col

    def __setitem__(self, name: str, col: Any) -> None:
        self._cols[name] = col
        self._spans.setdefault(name, None)
        self.raw = None

    def __delitem__(self, name: str) -> None:
        del self._spans[name]
        self._cols.pop(name, None)
        self.raw = None

    def __iter__(self) -> Iterator[str]:
        return iter(self._spans)

    def __len__(self) -> int:
        return len(self._spans)

    def __contains__(self, name: object) -> bool:
        return name in self._spans

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(dict(self.items()))

    def __reduce__(self) -> Any:
        return dict, (dict(self.items()),)


class LazyRows(MutableSequence):
    """A list kind's events (:class:`~netevents.wire.EventRow` values, as the one-pass path
    makes them), all decoded when one is first read, then kept. ``len`` decodes nothing.
    Equal to a list of equal rows, and changed as one."""

    __slots__ = ("_decoder", "_list", "_n", "raw")

    def __init__(self, decoder: Any, raw: memoryview, n: int) -> None:
        self._decoder = decoder
        self._list: list | None = None
        self._n = n
        self.raw: memoryview | None = raw
        """The events' msgpack encoding as received (the encoder splices it back as is), None
        once changed."""

    @property
    def decoded(self) -> int:
        """Rows made Python objects so far: all of them once one was read, else none."""
        return 0 if self._list is None else len(self._list)

    def _rows(self) -> list:
        if self._list is None:
            self._list = self._decoder.decode(self.raw)
        return self._list

    def __getitem__(self, i: Any) -> Any:
        return self._rows()[i]

    def __setitem__(self, i: Any, row: Any) -> None:
        self._rows()[i] = row
        self.raw = None

    def __delitem__(self, i: Any) -> None:
        del self._rows()[i]
        self.raw = None

    def insert(self, i: int, row: Any) -> None:
        self._rows().insert(i, row)
        self.raw = None

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows())

    def __len__(self) -> int:
        return self._n if self._list is None else len(self._list)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, LazyRows)):
            return self._rows() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._rows())

    def __reduce__(self) -> Any:
        return list, (self._rows(),)


def decode(data: Any) -> tuple[Any, Any] | None:
    """(envelope struct of ``wire.ONE_PASS_HEADS``, lazy events) of a batch the C validator
    accepts whole, or None: then the codec's other paths decide (and explain)."""
    found = _cvalid.check(data, _KIND_NAMES, _TABLES)
    if found is None:
        return None
    i, start, end, validated = found
    try:
        head = _HEAD.decode(b"".join((data[:start], _NIL, data[end:])))
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    kind, columns = _KIND_OF[type(head)]
    if kind != _KINDS[i]:  # cannot be (C read the same one "kind" key): not sure, so no
        return None
    buf = memoryview(data if type(data) is bytes else bytes(data))  # never a buffer that changes
    if columns is None:
        return head, LazyRows(wire.KINDS[kind].rows, buf[start:end], validated)
    rows, spans = validated
    # {name: span} of the columns present (a span is None for one the batch does not have)
    present = pick_any(spans, columns, None, False)
    return head, LazyColumns(buf, present, wire.KINDS[kind].columns, rows, buf[start:end])


def _kinds() -> dict[type, tuple[str, tuple | None]]:
    """Per envelope struct: (kind, its columns as (index, name) in the C table's order, for
    columnar kinds)."""
    out = {}
    for cls in wire.ONE_PASS_HEADS:
        kind = cls.__struct_config__.tag
        out[cls] = (kind, tuple(enumerate(cvalid_table.columns(kind))) if kind in ev.COLUMNAR
                    else None)
    return out


_KIND_OF = _kinds()
_TABLE_OF = cvalid_table.tables(_cvalid.Table) if _cvalid is not None else {}
_KINDS = tuple(_TABLE_OF)
_KIND_NAMES = tuple(kind.encode() for kind in _KINDS)
_TABLES = tuple(_TABLE_OF.values())

"""The v1 contract as type tables for the C validator (``netevents._cvalid``), generated from
the wire types of :mod:`netevents.events` exactly as :mod:`netevents.wire` makes msgspec types
from them.

A table is a flat list of nodes; node 0 is a batch's ``events`` value. A node is ``(accept,
minimum, items, max_items, enum, fields)``: the msgpack types it accepts (the ``A_*`` bits), the
minimum of an integer (or None), the node of an array's items or a map's values (-1), the most
items of an array or map, the strings of an enum (bytes), and the fields of a struct as
``(name, node, required)``. The tables mirror the one-pass decoder (``wire.ONE_PASS``): rows
and frame columns accept only the keys v1 knows (anything else takes the careful path), a
drop's ``flow`` is the :class:`~netevents.wire.FlowRow` struct. Kinds with free form
(``incident``) have no table.
"""

from __future__ import annotations

from typing import Any

from . import events as ev
from . import wire

A_INT, A_FLOAT, A_STR, A_BOOL, A_BIN, A_NIL, A_ARRAY, A_MAP, A_STRUCT = (1 << i for i in range(9))
_SCALARS = {"integer": A_INT, "number": A_INT | A_FLOAT, "string": A_STR, "boolean": A_BOOL}


class _Nodes:
    """The node list of one table under construction."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []

    def add(self, accept: int, minimum: int | None = None, items: int = -1, max_items: int = 0,
            enum: tuple = (), fields: tuple = ()) -> int:
        self.nodes.append((accept, minimum, items, max_items, enum, fields))
        return len(self.nodes) - 1

    def reserve(self) -> int:
        self.nodes.append(None)
        return len(self.nodes) - 1

    def wire(self, w: ev.W, row_field: bool = False) -> int:
        """The node of a wire type (``row_field``: a list kind's event field, where a FLOW map
        is the FlowRow struct, as in ``wire._row_mtype``)."""
        nil = A_NIL if w.nullable else 0
        if w.json == "any":
            raise NotImplementedError("free form is not validated in C")
        if w.json == "bytes":
            return self.add(A_BIN | nil)
        if w.json == "array":
            return self.add(A_ARRAY | nil, items=self.wire(w.items), max_items=w.max_items)
        if w.json == "object":
            if row_field and w.values == ev.FLOW.values and w.max_items == ev.FLOW.max_items:
                value = self.wire(ev.FLOW.values)
                return self.add(A_STRUCT | nil, fields=tuple(
                    (name.encode(), value, False) for name in wire.FlowRow.__struct_fields__))
            return self.add(A_MAP | nil, items=self.wire(w.values), max_items=w.max_items)
        if w.enum:
            return self.add(A_STR | nil, enum=tuple(s.encode() for s in w.enum))
        accept = 0
        for part in w.json.split("|"):
            accept |= _SCALARS[part]
        if w.minimum is not None and accept != A_INT:
            raise NotImplementedError("a minimum on a type other than integer")
        return self.add(accept | nil, minimum=w.minimum)


def columns(kind: str) -> tuple[str, ...]:
    """A columnar kind's columns in its table's order (the one-pass struct's)."""
    return getattr(wire, f"{ev.RECORDS[kind].__name__}Columns").__struct_fields__


def table_spec(kind: str) -> tuple[list, bool]:
    """(nodes, columnar) of a kind's events; NotImplementedError if it holds free form."""
    n = _Nodes()
    root = n.reserve()
    fields = ev.fields_of(kind)
    if kind in ev.COLUMNAR:
        # In the one-pass struct's order (required columns first): the validator's column
        # spans come in this order, and the lazy columns keep it, as the eager path does.
        fields.sort(key=lambda f: not f.metadata["required"])
        cols = tuple((f.name.encode(), n.add(A_ARRAY, items=n.wire(f.metadata["wire"]),
                                             max_items=ev.MAX_ROWS), f.metadata["required"])
                     for f in fields)
        n.nodes[root] = (A_STRUCT, None, -1, 0, (), cols)
    else:
        row = n.reserve()
        n.nodes[row] = (A_STRUCT, None, -1, 0, (), tuple(
            (f.name.encode(), n.wire(f.metadata["wire"], row_field=True), f.metadata["required"])
            for f in fields))
        n.nodes[root] = (A_ARRAY, None, row, ev.MAX_ROWS, (), ())
    return n.nodes, kind in ev.COLUMNAR


def tables(table_type: Any) -> dict[str, Any]:
    """The compiled tables (``table_type`` is ``_cvalid.Table``) of the one-pass kinds."""
    out = {}
    for cls in wire.ONE_PASS_TYPES:
        kind = cls.__struct_config__.tag
        out[kind] = table_type(*table_spec(kind))
    return out

"""Batches the v1 contract accepts, generated from the wire types in ``events.py`` (hypothesis):
valid in every field, with the awkward values a hostile publisher would pick (huge integers, odd
text, empty maps, free-form details)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from netevents import events as ev

INTS = st.integers(-2**63, 2**64 - 1)
JSON = st.recursive(
    st.none() | st.booleans() | INTS | st.floats(allow_nan=False) | st.text(max_size=6)
    | st.binary(max_size=6),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
    max_leaves=8)


def value_of(w: ev.W) -> st.SearchStrategy:
    j = w.json
    if j == "any":
        s = JSON
    elif j == "bytes":
        s = st.binary(max_size=8)
    elif j == "array":
        s = st.lists(value_of(w.items), max_size=3)
    elif j == "object":
        s = st.dictionaries(st.text(max_size=5), value_of(w.values), max_size=3)
    elif w.enum:
        s = st.sampled_from(w.enum)
    else:
        one = {"integer": st.integers(w.minimum if w.minimum is not None else -2**63, 2**64 - 1),
               "number": INTS | st.floats(allow_nan=False), "string": st.text(max_size=8),
               "boolean": st.booleans()}
        s = st.one_of(*[one[p] for p in j.split("|")])
    return s | st.none() if w.nullable else s


TOKEN = st.from_regex(r"\A[A-Za-z0-9_-]{1,12}\Z")


@st.composite
def valid_doc(draw, kind: str) -> dict:
    fields = ev.fields_of(kind)
    t0 = draw(st.integers(0, 2**63))
    doc = {"v": 1, "kind": kind, "site": draw(TOKEN), "host": draw(TOKEN),
           "run": draw(st.text(min_size=1, max_size=64)), "seq": draw(st.integers(1, 2**63)),
           "t0": t0, "t1": draw(st.integers(t0, 2**64 - 1))}
    for name, (w, _doc) in ev.BATCH_FIELDS.get(kind, {}).items():
        if draw(st.booleans()):
            doc[name] = draw(value_of(w))
    if kind in ev.COLUMNAR:
        n = draw(st.integers(0, 3))
        doc["events"] = {f.name: draw(st.lists(value_of(f.metadata["wire"]), min_size=n, max_size=n))
                         for f in fields if f.metadata["required"] or draw(st.booleans())}
    else:
        row = st.fixed_dictionaries(
            {f.name: value_of(f.metadata["wire"]) for f in fields if f.metadata["required"]},
            optional={f.name: value_of(f.metadata["wire"]) for f in fields
                      if not f.metadata["required"]})
        doc["events"] = draw(st.lists(row, max_size=3))
    return doc


def paths_in(obj: Any, path: tuple = ()) -> list[tuple]:
    """Every path (keys and indices) into a document's maps and lists, the root's () first."""
    out = [path]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += paths_in(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += paths_in(v, (*path, i))
    return out

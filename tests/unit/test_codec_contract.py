"""The codec accepts exactly what the published JSON Schemas accept, and writes msgpack's bytes.

Valid batches of every kind are generated from the wire types in ``events.py`` (the same types
the schemas and the decoders come from), then mutated (a value replaced anywhere, a key removed
or added, a column cut short); the codec and a JSON Schema validator must agree on every one.

The validator reads the schema with the meaning it has for a msgpack document: ``integer`` is
not a float (msgpack tells 1 and 1.0 apart), a string with ``contentEncoding: base64`` is msgpack
bin and any other string is msgpack str, and ``$`` in a pattern ends the string (ECMA-262, as
the schemas are written for any language; Python's ``re`` would let a trailing newline by).
What a JSON Schema cannot say is checked next to it: ``ev.ENVELOPE_RULES``.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import jsonschema
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netevents import events as ev
from netevents.codec import Batch, decode_batch, encode_batch
from netevents.errors import CodecError
from netevents.wire import ENCODER
from tests.wiregen import JSON, paths_in, valid_doc


class Bin(str):
    """bytes in the JSON view, still known to be bytes (base64 text)."""


def view(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: view(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [view(v) for v in obj]
    if isinstance(obj, bytes):
        return Bin(base64.b64encode(obj).decode())
    return obj


_base = jsonschema.Draft202012Validator
_types = _base.TYPE_CHECKER.redefine(
    "integer", lambda _c, x: isinstance(x, int) and not isinstance(x, bool))


def _type(validator, types, instance, schema):
    if isinstance(instance, str):
        wants_bin = schema.get("contentEncoding") == "base64"
        if isinstance(instance, Bin) != wants_bin:
            yield jsonschema.ValidationError(
                f"{instance!r} is {'bin' if isinstance(instance, Bin) else 'str'} in msgpack")
            return
    yield from jsonschema._keywords.type(validator, types, instance, schema)


def _pattern(validator, pattern, instance, schema):
    if isinstance(instance, str) and not re.search(pattern.replace("$", r"\Z"), instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


Validator = jsonschema.validators.extend(_base, {"type": _type, "pattern": _pattern},
                                         type_checker=_types)
VALIDATORS = {kind: Validator(ev.json_schema(kind)) for kind in ev.KINDS}


def schema_accepts(doc: Any) -> bool:
    kind = doc.get("kind") if isinstance(doc, dict) else None
    if not isinstance(kind, str) or kind not in VALIDATORS:
        return False
    if not VALIDATORS[doc["kind"]].is_valid(view(doc)):
        return False
    # ev.ENVELOPE_RULES: what a JSON Schema cannot say
    if doc["t1"] < doc["t0"]:
        return False
    if doc["kind"] in ev.COLUMNAR and len({len(c) for c in doc["events"].values()}) > 1:
        return False
    return True


def codec_accepts(data: bytes) -> bool:
    try:
        decode_batch(data)
    except CodecError:
        return False
    return True


@st.composite
def mutated_doc(draw, kind: str) -> dict:
    doc = draw(valid_doc(kind))
    paths = [p for p in paths_in(doc) if p]
    path = draw(st.sampled_from(paths))
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    how = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
    if how == "replace":
        parent[path[-1]] = draw(JSON)
    elif how == "delete" and isinstance(parent, dict):
        del parent[path[-1]]
    elif how == "delete":
        parent.pop(path[-1])
    elif isinstance(parent, dict):
        parent[draw(st.text(max_size=6))] = draw(JSON)
    else:
        parent.append(draw(JSON))
    return doc


def agree(doc: dict) -> None:
    data = msgpack.packb(doc, use_bin_type=True)
    assert codec_accepts(data) == schema_accepts(doc), (doc, _why(data))


def _why(data: bytes) -> str:
    try:
        decode_batch(data)
    except CodecError as exc:
        return f"codec: {exc}"
    return "codec accepts"


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("kind", ev.KINDS)
@SETTINGS
@given(data=st.data())
def test_valid_batches_are_accepted_by_both(kind, data):
    doc = data.draw(valid_doc(kind))
    assert schema_accepts(doc)
    agree(doc)


@pytest.mark.parametrize("kind", ev.KINDS)
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_batches_get_the_same_verdict(kind, data):
    agree(data.draw(mutated_doc(kind)))


@pytest.mark.parametrize("doc_over, event", [
    ({}, {"count": 1, "source": "evil"}),
    ({}, {"count": -1, "source": "counter"}),
    ({"mode": 5}, {"count": 1, "source": "counter"}),
    ({}, {"count": 1, "source": "counter", "flow": {"src": [1]}}),
    ({}, {"count": 1, "source": "counter", "x": msgpack.Timestamp(1, 0)}),
    ({}, {"count": 1, "source": "counter", "x": msgpack.ExtType(5, b"x")}),
])
def test_what_the_issue_found_accepted_is_rejected_by_both(doc_over, event):
    doc = {"v": 1, "kind": "drop", "site": "s", "host": "h", "run": "r", "seq": 1, "t0": 1,
           "t1": 2, "events": [event], **doc_over}
    assert not codec_accepts(msgpack.packb(doc, use_bin_type=True))


@pytest.mark.parametrize("kind, event", [
    ("netstat", {"group": "Tcp", "deltas": {"x": "str"}}),
    ("status", {"version": "1", "sources": {"a": [1]}}),
    ("ipstat", {"peer": "10.0.0.1", "flags": [1]}),
])
def test_hostile_contents_of_known_fields_are_rejected(kind, event):
    doc = {"v": 1, "kind": kind, "site": "s", "host": "h", "run": "r", "seq": 1, "t0": 1,
           "t1": 2, "events": [event]}
    assert not schema_accepts(doc)
    assert not codec_accepts(msgpack.packb(doc, use_bin_type=True))


# -- the wire: byte for byte what msgpack writes ----------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(JSON)
def test_encoder_writes_msgpacks_bytes(value):
    assert ENCODER.encode(value) == msgpack.packb(value, use_bin_type=True)


@pytest.mark.parametrize("kind", ev.KINDS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_encode_batch_writes_msgpacks_bytes_and_decodes_back(kind, data):
    doc = data.draw(valid_doc(kind))
    fields = {k: v for k, v in doc.items() if k not in ev.ENVELOPE or k in ("boot", "agent")}
    fields.pop("events")
    b = Batch(kind=kind, site=doc["site"], host=doc["host"], run=doc["run"], seq=doc["seq"],
              t0=doc["t0"], t1=doc["t1"], events=doc["events"], fields=fields)
    data_ = encode_batch(b)
    wire_doc = {**fields, "v": 1, "kind": kind, "site": doc["site"], "host": doc["host"],
                "run": doc["run"], "seq": doc["seq"], "t0": doc["t0"], "t1": doc["t1"],
                "events": doc["events"]}
    assert data_ == msgpack.packb(wire_doc, use_bin_type=True)
    back = decode_batch(data_)
    assert back.events == doc["events"] and back.fields == fields

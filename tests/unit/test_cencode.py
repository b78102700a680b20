"""The C encoder (``netevents._cvalid.encode``): msgspec's bytes, or None.

For values of exact dict (str keys), list, tuple, str, int, float, bool, None and bytes it must
write exactly what ``msgspec.msgpack.encode`` writes (which for these is also what
``msgpack.packb(use_bin_type=True)`` writes); for anything else (subclasses, other types, what
msgpack cannot hold, strs that are not UTF-8, deep nesting) it says None without raising, and
the codec asks msgspec. ``encode_batch`` gives the same bytes, or the same error, with it on and
off; it holds on to nothing.
"""

from __future__ import annotations

import collections
import enum
import gc
import random
import sys
import tracemalloc
from typing import Any

import msgpack
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netevents import events as ev
from netevents import lazy
from netevents.codec import Batch, PackedColumns, columns_of, decode_batch, encode_batch
from tests.wiregen import valid_doc

pytestmark = pytest.mark.skipif(not lazy.AVAILABLE, reason="netevents._cvalid is not built "
                                "(no C compiler when netevents was installed)")
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

INT_EDGES = [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**63,
             2**64 - 1, -1, -31, -32, -33, -127, -128, -129, -32767, -32768, -32769, -2**31 + 1,
             -2**31, -2**31 - 1, -2**32, -2**62, -2**63 + 1, -2**63,
             2**30 - 1, 2**30, 2**60 - 1, 2**60, -(2**30), -(2**60)]  # 30-bit digit edges
STR_LENGTHS = [0, 1, 31, 32, 255, 256, 65535, 65536]
CHARS = ["a", "é", "€", "😀"]  # 1-, 2-, 3-, 4-byte UTF-8
BYTES_LENGTHS = [0, 1, 31, 32, 255, 256, 65535, 65536]
FLOATS = [0.0, -0.0, 1.5, -2.25, float("inf"), float("-inf"), float("nan"), 1e308, 5e-324,
          sys.float_info.max, sys.float_info.min]
SIZES = [0, 1, 15, 16, 17, 255, 256, 65535, 65536]


def c_encode(obj: Any) -> bytes | None:
    return lazy._cvalid.encode(obj)


def same_as_msgspec(obj: Any) -> None:
    want = msgspec.msgpack.encode(obj)
    assert c_encode(obj) == want
    assert msgpack.packb(obj, use_bin_type=True) == want


@pytest.mark.parametrize("value", INT_EDGES + [n + d for n in (2**63, 2**64 - 1) for d in (-1,)])
def test_ints_at_every_boundary(value):
    same_as_msgspec(value)
    same_as_msgspec([value, {"k": value}])


@pytest.mark.parametrize("n", STR_LENGTHS)
@pytest.mark.parametrize("ch", CHARS)
def test_strs_of_every_header_length(n, ch):
    s = ch * n
    same_as_msgspec(s)
    same_as_msgspec({s: s})
    utf8 = len(s.encode())  # header lengths count bytes, not characters
    if utf8 >= 3:
        same_as_msgspec("a" * (utf8 - len(ch.encode())) + ch)


@pytest.mark.parametrize("n", BYTES_LENGTHS)
def test_bytes_of_every_header_length(n):
    same_as_msgspec(bytes(range(256)) * (n // 256) + bytes(n % 256))


@pytest.mark.parametrize("x", FLOATS)
def test_floats_as_float64(x):
    same_as_msgspec(x)


@pytest.mark.parametrize("n", SIZES)
def test_containers_of_every_header_length(n):
    same_as_msgspec(list(range(n)))
    same_as_msgspec(tuple([None] * n))
    same_as_msgspec({f"k{i}": i for i in range(n)})


def test_scalars_and_empty_containers():
    for v in (None, True, False, [], (), {}, "", b"", [[]], {"": {}}, [(), [()]]):
        same_as_msgspec(v)


def test_dicts_with_deleted_entries_and_instance_dicts():
    d = {f"k{i}": i for i in range(40)}
    for i in range(0, 40, 3):
        del d[f"k{i}"]
    d["late"] = "x"
    same_as_msgspec(d)

    class Thing:
        def __init__(self) -> None:
            self.a, self.b = 1, "two"

    same_as_msgspec(vars(Thing()))  # a split table


def test_the_same_str_non_ascii_twice():
    s = "naïve ünïcödé"  # the second call reads CPython's cached UTF-8
    same_as_msgspec([s, s, {s: s}])


SCALARS = (st.none() | st.booleans() | st.sampled_from(INT_EDGES) | st.integers(-2**63, 2**64 - 1)
           | st.floats() | st.text(max_size=40) | st.binary(max_size=40)
           | st.sampled_from([c * n for c in CHARS for n in (31, 32, 255, 256)]))
DOCS = st.recursive(
    SCALARS,
    lambda c: st.lists(c, max_size=20) | st.lists(c, max_size=5).map(tuple)
    | st.dictionaries(st.text(max_size=20), c, max_size=20),
    max_leaves=60)


@SETTINGS
@given(DOCS)
def test_random_documents(doc):
    want = msgspec.msgpack.encode(doc)
    assert c_encode(doc) == want
    assert msgpack.packb(doc, use_bin_type=True) == want


def test_many_random_documents_seeded():
    rng = random.Random(1234)

    def scalar() -> Any:
        pick = rng.randrange(8)
        if pick == 0:
            return rng.choice(INT_EDGES)
        if pick == 1:
            return rng.randrange(-2**63, 2**64)
        if pick == 2:
            return rng.choice(CHARS) * rng.choice([0, 1, 5, 31, 32, 40, 255, 256])
        if pick == 3:
            return rng.randbytes(rng.choice([0, 3, 255, 256, 300]))
        if pick == 4:
            return rng.choice(FLOATS + [rng.random()])
        return rng.choice([None, True, False, "tracepoint", "", 7])

    def value(depth: int) -> Any:
        if depth > 4 or rng.random() < 0.5:
            return scalar()
        n = rng.choice([0, 1, 3, 15, 16, 17])
        pick = rng.randrange(3)
        if pick == 0:
            return [value(depth + 1) for _ in range(n)]
        if pick == 1:
            return tuple(value(depth + 1) for _ in range(n))
        return {str(scalar()): value(depth + 1) for _ in range(n)}

    for _ in range(2000):
        doc = value(0)
        want = msgspec.msgpack.encode(doc)
        assert c_encode(doc) == want
        assert msgpack.packb(doc, use_bin_type=True) == want


def test_nesting_up_to_the_bound_is_encoded():
    doc: Any = 1
    for i in range(31):
        doc = [doc] if i % 2 else {"k": doc}
    same_as_msgspec(doc)


class Color(enum.IntEnum):
    RED = 1


class Name(str):
    pass


class Count(int):
    pass


def deep(n: int) -> Any:
    doc: Any = 0
    for _ in range(n):
        doc = [doc]
    return doc


UNSUPPORTED = {
    "dict subclass": collections.OrderedDict(a=1),
    "defaultdict": collections.defaultdict(int, a=1),
    "IntEnum": Color.RED,
    "int subclass": Count(3),
    "str subclass": Name("x"),
    "str subclass key": {Name("x"): 1},
    "bytearray": bytearray(b"x"),
    "memoryview": memoryview(b"x"),
    "lone surrogate": "\ud800",
    "lone surrogate key": {"\udfff": 1},
    "2**64": 2**64,
    "-2**63-1": -2**63 - 1,
    "huge int": 10**40,
    "huge negative int": -(10**40),
    "int key": {1: "x"},
    "None key": {None: "x"},
    "100 deep": deep(100),
    "33 deep": deep(33),
    "set": {1},
    "object": object(),
    "Struct": ev.DropEvent(count=1, source="counter"),
    "in a list": [1, 2, Color.RED],
    "in a dict, late": {"a": 1, "b": [1, "x", {"c": bytearray()}]},
}


@pytest.mark.parametrize("name", list(UNSUPPORTED))
def test_anything_else_is_none_without_raising(name):
    assert c_encode(UNSUPPORTED[name]) is None
    # and a failed call leaves nothing behind for the next one
    same_as_msgspec({"after": name})


def test_the_codec_still_gets_msgspecs_answer_for_those():
    for name in ("IntEnum", "dict subclass", "defaultdict", "in a list"):
        obj = UNSUPPORTED[name]
        assert c_encode(obj) is None
        msgspec.msgpack.encode(obj)  # msgspec takes these
    msgspec.msgpack.encode(UNSUPPORTED["set"])  # as an array
    for name in ("2**64", "-2**63-1", "lone surrogate", "object", "int subclass", "str subclass"):
        with pytest.raises((OverflowError, TypeError, UnicodeEncodeError, msgspec.EncodeError)):
            msgspec.msgpack.encode(UNSUPPORTED[name])


# ---------------------------------------------------------------------------------------------
# encode_batch with the C encoder on and off


def encoded(b: Batch, c: bool, **kw: Any) -> tuple:
    old = lazy.ENABLED
    lazy.ENABLED = c
    try:
        return "ok", encode_batch(b, **kw)
    except Exception as exc:  # noqa: BLE001  (the same error, whatever it is)
        return type(exc).__name__, str(exc)
    finally:
        lazy.ENABLED = old


def same_both_ways(b: Batch, **kw: Any) -> tuple:
    on, off = encoded(b, True, **kw), encoded(b, False, **kw)
    assert on == off
    return on


def batch_of(doc: dict) -> Batch:
    head = {k: doc[k] for k in ("kind", "site", "host", "run", "seq", "t0", "t1")}
    fields = {k: v for k, v in doc.items() if k not in head and k not in ("v", "events")}
    return Batch(**head, events=doc["events"], fields=fields)


def drop_rows(k: int) -> list[dict]:
    return [{"count": i % 97 + 1, "source": "tracepoint", "reason": "NETFILTER_DROP",
             "location": "nft_do_chain+0x3a1", "pc": 0xffffffffa0123456 + i, "iface": "eth0",
             "ifindex": 2, "proto": 0x0800, "netns": 4026531840, "first_ts": 1_763_900_000_000_000_000 + i,
             "last_ts": 1_763_900_000_000_500_000 + i,
             "flow": {"src": "10.0.0.1", "dst": "10.0.0.2", "sport": 40000 + i % 1000, "dport": 7777, "l4": 17}}
            for i in range(k)]


@SETTINGS
@given(st.data())
def test_encode_batch_same_bytes_on_and_off_for_every_kind(data):
    kind = data.draw(st.sampled_from(ev.KINDS))
    doc = data.draw(valid_doc(kind))
    b = batch_of(doc)
    verdict, out = same_both_ways(b)
    if verdict == "ok":
        assert decode_batch(out).kind == kind


def test_encode_batch_same_bytes_for_the_bench_rows_and_their_shapes():
    rows = drop_rows(500)
    assert lazy.encode is not None
    b = Batch(kind="drop", site="s", host="h", run="r", seq=1, t0=1, t1=2, events=rows)
    verdict, out = same_both_ways(b)
    assert verdict == "ok" and decode_batch(out).events == rows
    same_both_ways(Batch(kind="drop", site="s", host="h", run="r", seq=1, t0=1, t1=2,
                         events=rows, fields={"boot": "b1", "agent": "a", "extra": [1, (2,)]}))
    # records, a mix of records and dicts, tuples of dicts, an empty list
    recs = [ev.DropEvent(count=5, source="tracepoint", reason="NETFILTER_DROP", proto=0x0800)] * 3
    for events in (recs, [*recs, rows[0]], tuple(rows[:3]), [], iter(rows[:2])):
        same_both_ways(Batch(kind="drop", site="s", host="h", run="r", seq=1, t0=1, t1=2,
                             events=list(events) if isinstance(events, type(iter([]))) else events))
    # frame columns: a dict, a Mapping, a list of row dicts, packed columns
    cols = columns_of([{"ts": i, "caplen": 96, "len": 1514, "head": b"x" * 96} for i in range(5)])
    for events in (cols, collections.OrderedDict(cols), [dict(r) for r in Batch(
            kind="frame", site="s", host="h", run="r", seq=1, t0=1, t1=2, events=cols).rows()]):
        same_both_ways(Batch(kind="frame", site="s", host="h", run="r", seq=1, t0=1, t1=2,
                             events=events, fields={"iface": "eth0", "worker": 0}))
    packed = msgpack.packb(cols, use_bin_type=True)
    for c in (True, False):
        b = Batch(kind="frame", site="s", host="h", run="r", seq=1, t0=1, t1=2,
                  events=PackedColumns(packed, 5))
        assert encoded(b, c) == encoded(Batch(kind="frame", site="s", host="h", run="r", seq=1,
                                              t0=1, t1=2, events=cols), False)
    # a decoded batch, unchanged (lazy) and changed
    d = decode_batch(out)
    same_both_ways(d)
    d.events.append(rows[0])
    same_both_ways(d)


def test_values_the_c_encoder_refuses_give_the_same_bytes_or_error():
    base = drop_rows(2)
    for bad in (Color.RED, Count(5), Name("eth0"), collections.OrderedDict(a=1), bytearray(b"x"),
                "\ud800", 2**64, -2**63 - 1, {1: 2}, deep(100), {3}, object()):
        rows = [dict(base[0]), {**base[1], "iface": bad}]
        b = Batch(kind="drop", site="s", host="h", run="r", seq=1, t0=1, t1=2, events=rows)
        same_both_ways(b)
        b = Batch(kind="drop", site="s", host="h", run="r", seq=1, t0=1, t1=2, events=base,
                  fields={"extra": bad})
        same_both_ways(b)
    rows = [collections.OrderedDict(base[0]), base[1]]  # an event not an exact dict
    same_both_ways(Batch(kind="drop", site="s", host="h", run="r", seq=1, t0=1, t1=2, events=rows))


def test_oversize_and_schema_errors_on_and_off():
    rows = drop_rows(500)
    b = Batch(kind="drop", site="s", host="h", run="r", seq=1, t0=1, t1=2, events=rows)
    verdict, msg = same_both_ways(b, max_bytes=10_000)
    assert verdict == "OversizeError", msg
    for bad in (2**64, -2**63 - 1, object(), Count(1)):
        b = Batch(kind="drop", site="s", host="h", run="r", seq=1, t0=1, t1=2,
                  events=[{**rows[0], "count": bad}])
        verdict, msg = same_both_ways(b)
        assert verdict == "SchemaError", msg
    # a lone surrogate (what os.fsdecode makes of a byte that is not UTF-8), either way
    b = Batch(kind="drop", site="s", host="h", run="r", seq=1, t0=1, t1=2,
              events=[{**rows[0], "iface": "\ud800"}])
    verdict, msg = same_both_ways(b)
    assert verdict == "SchemaError" and "'\\ud800', which UTF-8 cannot encode" in msg, msg


# ---------------------------------------------------------------------------------------------
# Nothing kept


def test_no_references_kept_or_leaked():
    rows = drop_rows(50)
    doc = {"v": 1, "events": rows, "t": (1.5, b"x", None, "é" * 40), "big": 2**63}
    watched = [rows, rows[0], rows[0]["flow"], doc["t"], doc["big"], rows[0]["source"]]
    before = [sys.getrefcount(o) for o in watched]
    for _ in range(2000):
        c_encode(doc)
        c_encode([doc, Color.RED])  # refused part-way
    assert [sys.getrefcount(o) for o in watched] == before


def test_memory_does_not_grow_over_many_encodes():
    doc = {"v": 1, "events": drop_rows(20), "late": [1, 2, Color.RED]}
    ok = {"v": 1, "events": drop_rows(20), "s": "ünïcödé" * 10}
    for _ in range(2000):  # warm up (the size hint, CPython's caches)
        c_encode(ok)
        c_encode(doc)
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(100_000):
            c_encode(ok)
            c_encode(doc)
        grown = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, grown


# -- pick: the one-pass batch's fields and columns ---------------------------------------------

_PICKED = st.lists(st.one_of(st.just(msgspec.UNSET), st.none(), st.integers(), st.text(max_size=3),
                             st.lists(st.integers(), max_size=4), st.binary(max_size=4)),
                   max_size=8)


@SETTINGS
@given(_PICKED, st.data())
def test_pick_makes_the_dict_of_the_comprehension(values, data):
    picks = data.draw(st.lists(st.tuples(st.integers(0, max(0, len(values) - 1)),
                                         st.text(min_size=1, max_size=3)), max_size=len(values),
                               unique_by=lambda p: p[1])  # names are unique, as in the codec
                      if values else st.just([]))
    values, picks = tuple(values), tuple(picks)
    want = {name: v for i, name in picks if (v := values[i]) is not msgspec.UNSET}
    assert lazy.pick(values, picks, msgspec.UNSET, False) == want
    same = len({len(v) for v in want.values()}) <= 1 if all(
        hasattr(v, "__len__") for v in want.values()) else None
    if same is not None:  # lengths only of what has one
        assert lazy.pick(values, picks, msgspec.UNSET, True) == (want if same else None)


def test_pick_refuses_what_is_no_index_and_name_pair():
    for picks in (((5, "a"),), ((-1, "a"),), (("0", "a"),), ((0,),), (0,)):
        with pytest.raises((TypeError, IndexError)):
            lazy.pick((1, 2), picks, msgspec.UNSET, False)
    with pytest.raises(TypeError):  # a value without a length, where lengths are compared
        lazy.pick((1, [2]), ((0, "a"), (1, "b")), msgspec.UNSET, True)
    with pytest.raises(TypeError):
        lazy.pick([1], (), msgspec.UNSET, False)


def test_a_frame_batch_with_columns_of_unequal_length_is_rejected_with_pick_and_without(monkeypatch):
    from netevents.codec import SchemaError
    from netevents.wire import ENCODER

    doc = {"v": 1, "kind": "frame", "site": "s", "host": "h", "run": "r", "seq": 1, "t0": 1,
           "t1": 2, "iface": "eth0", "worker": 0, "first_frame": 1,
           "events": {"ts": [1, 2], "caplen": [1, 1], "len": [1, 1], "head": [b"x"]}}
    data = ENCODER.encode(doc)
    for pick in (lazy.pick, lazy.pick_py):
        monkeypatch.setattr("netevents.codec._pick", pick)
        with pytest.raises(SchemaError, match="has 1 values, expected 2"):
            decode_batch(data, lazy_events=False)
        doc["events"]["head"].append(b"y")
        assert decode_batch(ENCODER.encode(doc), lazy_events=False).events["head"] == [b"x", b"y"]
        doc["events"]["head"].pop()

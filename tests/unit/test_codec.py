"""The batch envelope: round trips, and one clear error per kind of bad input."""

import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netevents import events as ev
from netevents.codec import Batch, columns_of, decode_batch, encode_batch
from netevents.errors import (
    CodecError,
    MalformedError,
    OversizeError,
    SchemaError,
    SubjectError,
    VersionError,
)


def drop_batch(**over) -> Batch:
    fields = dict(kind="drop", site="dc1", host="web-1", run="r1", seq=7, t0=10, t1=20,
                  events=[ev.DropEvent(count=5, source="tracepoint", reason="NETFILTER_DROP",
                                       location="nft_do_chain+0x3a1", proto=0x0800)])
    fields.update(over)
    return Batch(**fields)


def raw(doc) -> bytes:
    return msgpack.packb(doc, use_bin_type=True)


def good_doc(**over):
    doc = {"v": 1, "kind": "drop", "site": "dc1", "host": "web-1", "run": "r1", "seq": 1,
           "t0": 1, "t1": 2, "events": [{"count": 1, "source": "counter"}]}
    doc.update(over)
    return doc


def test_drop_round_trip_keeps_fields_and_leaves_out_nones():
    b = decode_batch(encode_batch(drop_batch()))
    assert (b.kind, b.site, b.host, b.run, b.seq, b.t0, b.t1) == ("drop", "dc1", "web-1", "r1", 7, 10, 20)
    assert b.events == [{"count": 5, "source": "tracepoint", "reason": "NETFILTER_DROP",
                         "location": "nft_do_chain+0x3a1", "origin": "sw", "proto": 0x0800}]
    assert b.msg_id == "web-1:r1:drop:7"
    assert ev.from_wire("drop", b.events[0]).pc is None


def test_frame_batches_are_column_wise():
    frames = [ev.FrameEvent(ts=i, caplen=60, len=60, src=b"\x0a\x00\x00\x01", head=b"x" * 60)
              for i in range(3)]
    b = Batch(kind="frame", site="s", host="h", run="r", seq=1, t0=0, t1=2, events=frames,
              fields={"iface": "eth0", "worker": 0, "first_frame": 100})
    data = encode_batch(b)
    doc = msgpack.unpackb(data)
    assert doc["events"]["ts"] == [0, 1, 2]
    out = decode_batch(data)
    assert len(out) == 3 and out.fields["first_frame"] == 100
    assert [r["src"] for r in out.rows()] == [b"\x0a\x00\x00\x01"] * 3
    assert columns_of([{"ts": 1}])["ts"] == [1]


def test_unknown_keys_are_kept_and_ignored():
    b = decode_batch(raw(good_doc(future_field=1, events=[{"count": 1, "source": "counter", "new": "x"}])))
    assert b.fields["future_field"] == 1 and b.events[0]["new"] == "x"


@pytest.mark.parametrize("data, error, words", [
    # a map whose second key is the byte msgpack never uses, then seeded noise (never random: a
    # random first byte may begin a well-formed map, which is a schema error, not a malformed one)
    (b"\x82\xa1v\x01\xc1" + random.Random(7).randbytes(64), MalformedError, "msgpack"),
    (raw(good_doc())[:-3], MalformedError, "msgpack"),
    (raw([1, 2, 3]), MalformedError, "must be a msgpack map"),
    (raw(good_doc(v=2)), VersionError, "wire version 2"),
    (raw(good_doc(v=msgpack.ExtType(5, b"x"))), VersionError, "wire version msgpack extension type 5 "),
    (raw({k: v for k, v in good_doc().items() if k != "v"}), SchemaError, "'v'"),
    (raw(good_doc(kind="nope")), SchemaError, "unknown kind"),
    (raw(good_doc(host="a.b")), SchemaError, "invalid host 'a.b'"),
    (raw(good_doc(host="*")), SchemaError, "invalid host '*'"),
    (raw(good_doc(site="")), SchemaError, "invalid site"),
    (raw(good_doc(seq=0)), SchemaError, "'seq' must be >= 1"),
    (raw(good_doc(seq="1")), SchemaError, "'seq' must be an integer"),
    (raw(good_doc(t0=5, t1=4)), SchemaError, "'t1' must be >= 5"),
    (raw(good_doc(events={"a": 1})), SchemaError, "must be a list"),
    (raw(good_doc(events=[{"source": "counter"}])), SchemaError, "'count' is missing"),
    (raw(good_doc(events=[{"count": "5", "source": "counter"}])), SchemaError, "'count' must be int"),
    (raw(good_doc(events=[{"count": True, "source": "counter"}])), SchemaError, "got bool"),
    (raw(good_doc(events=[7])), SchemaError, "must be a map"),
    (raw(good_doc(kind="frame", events={"ts": [1, 2], "len": [1]})), SchemaError, "has 1 values"),
    (raw(good_doc(kind="frame", events={"ts": [1, "x"]})), SchemaError, "found str"),
    (raw(good_doc(kind="frame", events={"len": [1]})), SchemaError, "'ts' is missing"),
    (b"\x91" * 5000 + b"\x00", MalformedError, "msgpack"),  # deep nesting
])
def test_bad_input_gives_one_clear_error(data, error, words):
    with pytest.raises(error) as info:
        decode_batch(data)
    assert words in str(info.value)


def test_oversize_is_refused_before_parsing():
    with pytest.raises(OversizeError, match="67108864 bytes is over"):
        decode_batch(b"\x00" * (64 * 1024 * 1024))
    big = drop_batch(events=[{"count": 1, "source": "counter", "payload": b"x" * 1000}] * 200)
    with pytest.raises(OversizeError, match="over the 10000-byte limit"):
        encode_batch(big, max_bytes=10_000)


def test_encode_refuses_a_host_that_would_break_the_subject():
    with pytest.raises(SubjectError):
        encode_batch(drop_batch(host="a.b"))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_only_ever_raise_codec_errors(data):
    try:
        decode_batch(data)
    except CodecError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=5) | st.binary(max_size=5),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4),
                    max_leaves=20))
def test_wrong_types_anywhere_only_raise_codec_errors(value):
    for key in ("events", "seq", "host", "run", "kind", "t0"):
        try:
            decode_batch(raw(good_doc(**{key: value})))
        except CodecError:
            pass


def test_eventrow_reader_gives_what_get_gives_or_absent_for_rows_and_dicts():
    from netevents.wire import EventRow

    b = decode_batch(encode_batch(Batch(kind="ipstat", site="s", host="h", run="r", seq=1, t0=1,
                                        t1=2, events=[{"peer": "10.0.0.1", "retrans_segs": 3}])))
    row = b.events[0]
    read = EventRow.reader("peer", "retrans_segs", "timeouts")
    for event in (row, dict(row)):
        peer, retrans, timeouts = read(event)
        assert (peer, retrans) == ("10.0.0.1", 3) and timeouts is EventRow.ABSENT
        assert not timeouts  # absent reads as false, like get's None
    assert EventRow.reader("peer")(row) == ("10.0.0.1",)

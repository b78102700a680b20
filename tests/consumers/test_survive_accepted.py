"""Every shipped consumer survives every batch the codec accepts.

Batches are generated valid (tests/wiregen.py) with the awkward values the contract allows,
go through the real codec, and are fed to what ``tail`` (both forms), ``top``/``up`` (the fleet
view, every screen, the summary), ``metrics``, ``correlate`` and ``archive`` run on: none may
raise. The free-form parts (incident details, flows) get the keys the consumers look for.
"""

from __future__ import annotations

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netevents import events as ev
from netevents.codec import decode_batch
from netevents.consumers.archive import PcapngArchive
from netevents.consumers.correlate import Correlator
from netevents.consumers.metrics import families
from netevents.consumers.tail import event_json, event_line
from netevents.consumers.view import FleetView
from tests.wiregen import JSON, valid_doc

DETAIL_KEYS = ("from", "to", "delivered", "lost", "unknown", "delay_ns", "reasons", "per_host",
               "hosts_total", "peer_drops", "p50", "p99", "reason", "location", "retrans_segs",
               "timeouts", "peer_view_of_sender", "grace_s", "frames_evicted")
DETAILS = st.dictionaries(st.sampled_from(DETAIL_KEYS), JSON | st.dictionaries(
    st.sampled_from(DETAIL_KEYS), JSON, max_size=3), max_size=8)


FLOWS = st.none() | st.dictionaries(
    st.sampled_from(("src", "dst", "sport", "dport", "l4", "ip_id", "tcp_seq")),
    st.none() | st.integers(-2**63, 2**64 - 1) | st.sampled_from(["10.0.0.1", "::1", "x", ""]),
    max_size=7)


@st.composite
def accepted(draw):
    kind = draw(st.sampled_from(ev.KINDS))
    doc = draw(valid_doc(kind))
    doc["host"] = draw(st.sampled_from(["a", "b", "c"]))
    if kind == "drop":
        for e in doc["events"]:
            e["flow"] = draw(FLOWS)
            if draw(st.booleans()):
                e.update(source="ebpf", count=1, payload=draw(st.binary(max_size=80)))
    if kind == "incident":
        for e in doc["events"]:
            e["details"] = draw(DETAILS)
            if draw(st.booleans()):
                e["type"] = "path_loss"
    return decode_batch(msgpack.packb(doc, use_bin_type=True))


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(accepted(), min_size=1, max_size=8))
def test_every_consumer_survives_every_accepted_batch(batches):
    view, corr, archive = FleetView(), Correlator(), PcapngArchive()
    archive.open_section()
    for b in batches:
        for e in b.rows():
            event_line(b, e)
            event_json(b, e)
        view.feed(b)
        corr.feed(b)
        archive.add(b)
    for screen in FleetView.VIEWS:
        view.render(screen)
    view.summary()
    families(view, {"schema": 1})
    corr.tick(max(b.t1 for b in batches) % 2**62, flush=True)
    corr.path_table()
    corr.drop_table()
    archive.close_section(max(b.t1 for b in batches) % 2**63, final=True)
    archive.summary()

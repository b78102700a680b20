"""schemas/v1 and events.py agree, and real encoded batches validate against the schemas."""

import asyncio
import json
from pathlib import Path

import jsonschema
import msgpack
import pytest

from netevents.agent.netstat import NetstatCollector, NetstatConfig
from netevents.agent.runner import AgentRunner, RunnerOptions
from netevents import events as ev
from netevents.codec import Batch, encode_batch
from netevents.memory import MemoryBus

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas" / "v1"


def load(kind):
    return json.loads((SCHEMAS / f"{kind}.json").read_text())


@pytest.mark.parametrize("kind", ev.KINDS)
def test_schema_files_match_events_py(kind):
    assert load(kind) == ev.json_schema(kind), (
        f"schemas/v1/{kind}.json is out of date: run python -m netevents.events --write-schemas")
    jsonschema.Draft202012Validator.check_schema(load(kind))


def test_every_record_field_is_documented():
    for kind in ev.KINDS:
        for f in ev.fields_of(kind):
            assert f.metadata["doc"], f"{kind}.{f.name} has no description"


def validate(data: bytes):
    doc = ev.json_view(msgpack.unpackb(data))
    jsonschema.validate(doc, load(doc["kind"]))


def test_batches_the_agent_really_emits_validate():
    stop = asyncio.Event()

    class StopAfterTwoNetstat(MemoryBus):
        async def publish(self, batch):
            await super().publish(batch)
            if sum(s.startswith("netevents.v1.netstat") for s, _d, _i in self.messages) >= 2:
                stop.set()

    async def main():
        bus = StopAfterTwoNetstat()
        runner = AgentRunner(bus, [NetstatCollector(NetstatConfig(interval=0.1))],
                             RunnerOptions(host="h1", status_interval=0.1))
        asyncio.get_running_loop().call_later(20, stop.set)  # a bound, not the expected path
        await runner.run(stop)
        return bus

    bus = asyncio.run(main())
    kinds = {b.kind for b in bus.batches()}
    assert kinds == {"netstat", "status"}
    for _subject, data, _id in bus.messages:
        validate(data)


EXAMPLES = {
    "drop": [ev.DropEvent(count=3, source="netdm", pc=0xffffffffa0123456, flow={"src": "10.0.0.1"},
                          payload=b"\x00" * 20, orig_len=62)],
    "gap": [ev.GapEvent(iface="eth0", lost=40, cause="ring_full", after_frame=302, before_frame=303)],
    "ipstat": [ev.IpstatEvent(peer="10.0.0.2", retrans_segs=4, flags=["retrans"], rtt_us=900)],
    "frame": [ev.FrameEvent(ts=1, ts_src=1, caplen=60, len=60, src=b"\x0a\0\0\1", head=b"h")],
    "incident": [ev.IncidentEvent(type="drop_storm", summary="x on 3 hosts", hosts=["a", "b"])],
}


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_other_kinds_validate_and_wrong_ones_do_not(kind):
    b = Batch(kind=kind, site="s", host="h", run="r", seq=1, t0=1, t1=2, events=EXAMPLES[kind])
    data = encode_batch(b)
    validate(data)
    doc = ev.json_view(msgpack.unpackb(data))
    doc["host"] = "a.b"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, load(kind))

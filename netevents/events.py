"""The v1 event kinds as typed records: the one place the schema lives in code.

Each kind is a dataclass whose fields carry their wire type (:class:`W`: JSON type, enum,
minimum, item and value types, size limits) and meaning. From these one definition come the
codec's typed decoders (:mod:`netevents.wire`, which validates while it decodes) and
``schemas/v1/<kind>.json`` (a test keeps the files and this module in step: ``python -m
netevents.events --write-schemas`` rewrites them); a property test checks that the codec and the
schemas accept the same batches. The limits (:data:`MAX_ROWS`, :data:`MAX_MAP`, ...) bound
what any one message can make a reader build.

Times are integer nanoseconds since the epoch. Addresses are strings in events and bytes in
frame columns. Fields are only ever added within v1; a reader fills missing ones with defaults.

Records are what producers build; on the wire and in consumers an event is a plain ``dict``
(cheap to decode), and :func:`from_wire` turns one back into its record when a program wants that.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VERSION = 1

# Limits of the contract: a batch that exceeds one is rejected (the JSON Schemas say the same
# with maxItems / maxProperties), so no message makes a reader build more than a small multiple
# of its own size.
MAX_ROWS = 100_000
"""Events in one batch (rows of a list kind, values of each frame column)."""
MAX_MAP = 4096
"""Entries of one map field (deltas, sources, details, ...)."""
MAX_LIST = 4096
"""Items of one list field (flags, hosts, ...)."""
MAX_EVENT_KEYS = 256
"""Keys of one event (and columns of a frame batch), unknown ones included."""
MAX_ENVELOPE_KEYS = 64
"""Keys of a batch's top-level map."""
MAX_ANY_BYTES = 64 * 1024
"""Encoded size of one value of free form (an unknown key's value, an incident detail)."""
MAX_ANY_DEPTH = 16
"""Nesting of a value of free form."""


@dataclass(frozen=True, slots=True)
class W:
    """One wire type of the v1 contract: the codec's typed decoder and the JSON Schema files are
    both generated from these (``netevents.wire`` and :func:`json_schema`).

    ``json`` is integer, number, string, boolean, bytes (msgpack bin; base64 in JSON), array
    (``items``), object (a map of ``values``) or any (free form: JSON values and bytes, bounded
    by :data:`MAX_ANY_BYTES` and :data:`MAX_ANY_DEPTH`)."""

    json: str
    minimum: int | None = None
    enum: tuple[str, ...] | None = None
    items: W | None = None
    values: W | None = None
    nullable: bool = False
    max_items: int | None = None

    def null(self) -> W:
        return dataclasses.replace(self, nullable=True)


INT, COUNT = W("integer"), W("integer", minimum=0)
NUM, STR, BOOL, BYTES, ANY = W("number"), W("string"), W("boolean"), W("bytes"), W("any")


def array(items: W, max_items: int = MAX_LIST) -> W:
    return W("array", items=items, max_items=max_items)


def mapping(values: W, max_items: int = MAX_MAP) -> W:
    return W("object", values=values, max_items=max_items)


FLOW = mapping(W("string|integer", nullable=True), 16)
"""L3/L4 keys of a drop: src, dst (strings), sport, dport, l4, ip_id, tcp_seq (integers)."""


def _f(json_type: str | W, doc: str, default: Any = None, *, required: bool = False,
       items: str | W | None = None, enum: tuple[str, ...] | None = None,
       minimum: int | None = None, values: W | None = None) -> Any:
    """A record field with its wire type; a ``None`` default makes it nullable."""
    if isinstance(json_type, W):
        wire = json_type
    else:
        it = W(items) if isinstance(items, str) else items
        wire = W(json_type, minimum=minimum, enum=enum, items=it, values=values,
                 max_items=MAX_LIST if json_type == "array" else
                 MAX_MAP if json_type == "object" else None)
    if not required and default is None:
        wire = wire.null()
    meta = {"json": wire.json, "doc": doc, "required": required, "enum": wire.enum,
            "items": wire.items.json if wire.items else None, "wire": wire}
    if required:
        return field(metadata=meta)
    if isinstance(default, (dict, list)):
        return field(default_factory=type(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(slots=True, kw_only=True)
class Flow:
    """L3/L4 keys of one packet; the fingerprint fields frame summaries also carry."""

    src: str | None = None
    dst: str | None = None
    sport: int | None = None
    dport: int | None = None
    l4: int | None = None
    ip_id: int | None = None
    tcp_seq: int | None = None


@dataclass(slots=True, kw_only=True)
class DropEvent:
    """Packets the kernel freed as dropped, aggregated per (location, reason, iface, proto) and window."""

    count: int = _f(COUNT, "packets dropped with this signature in the window", required=True)
    source: str = _f("string", "which kernel source saw it", required=True,
                     enum=("netdm", "tracepoint", "ebpf", "counter", "dwdump"))
    reason: str = _f("string", "skb_drop_reason name without the SKB_DROP_REASON_ prefix", "NOT_SPECIFIED")
    location: str | None = _f("string", "where: symbol+0xoff (or the counter name for counter drops)")
    pc: int | None = _f("integer", "program counter of the freeing call site")
    origin: str = _f("string", "software or hardware (device trap) drop", "sw", enum=("sw", "hw"))
    hw_trap: str | None = _f("string", "devlink trap name for hardware drops")
    hw_group: str | None = _f("string", "devlink trap group for hardware drops")
    iface: str | None = _f("string", "interface name")
    ifindex: int | None = _f("integer", "interface index")
    proto: int | None = _f("integer", "ethertype (skb->protocol), host order")
    netns: int | None = _f("integer", "network namespace inode, where the source knows it")
    netns_name: str | None = _f("string", "name of that namespace: /run/netns name, 'root', or "
                                "a process hint 'comm[pid]' (ebpf source)")
    flow: dict | None = _f(FLOW.null(), "L3/L4 keys (src, dst, sport, dport, l4, ip_id, tcp_seq)")
    first_ts: int | None = _f("integer", "first drop in the window (ns)")
    last_ts: int | None = _f("integer", "last drop in the window (ns)")
    payload: bytes | None = _f("bytes", "truncated packet (packet mode only)")
    orig_len: int | None = _f(COUNT.null(), "original packet length (packet mode only)")


@dataclass(slots=True, kw_only=True)
class GapEvent:
    """The capture itself lost frames: `lost` frames between frame k and k+1 of one ring."""

    iface: str = _f("string", "captured interface", required=True)
    lost: int = _f(COUNT, "frames lost in this gap", required=True)
    cause: str = _f("string", "why", required=True, enum=("ring_full", "freeze", "rxq_ovfl"))
    worker: int = _f(COUNT, "capture worker (fanout member)", 0)
    after_frame: int | None = _f("integer", "sequence number of the last frame before the gap")
    before_frame: int | None = _f("integer", "sequence number of the first frame after the gap")
    after_ts: int | None = _f("integer", "timestamp of the frame before the gap (ns)")
    before_ts: int | None = _f("integer", "timestamp of the frame after the gap (ns)")
    source: str = _f("string", "kernel interface that reported it", "packet_statistics")
    freezes: int | None = _f(COUNT.null(), "times the ring's queue froze (tp_freeze_q_cnt) in this gap")


@dataclass(slots=True, kw_only=True)
class IpstatEvent:
    """Per-peer TCP counter deltas over the window (cumulative counters) plus gauges."""

    peer: str = _f("string", "remote address", required=True)
    local: str | None = _f("string", "local address (diagnostics level)")
    level: str = _f("string", "publishing level", "default", enum=("default", "diagnostics"))
    sockets: int = _f(COUNT, "sockets to this peer at the sample", 0)
    opened: int = _f(COUNT, "sockets first seen in the window", 0)
    closed: int = _f(COUNT, "sockets that closed in the window", 0)
    retrans_segs: int = _f("integer", "delta of tcpi_total_retrans", 0)
    bytes_retrans: int = _f("integer", "delta of tcpi_bytes_retrans", 0)
    segs_out: int = _f("integer", "delta of tcpi_segs_out", 0)
    segs_in: int = _f("integer", "delta of tcpi_segs_in", 0)
    bytes_sent: int = _f("integer", "delta of tcpi_bytes_sent", 0)
    bytes_acked: int = _f("integer", "delta of tcpi_bytes_acked", 0)
    bytes_received: int = _f("integer", "delta of tcpi_bytes_received", 0)
    lost: int = _f("integer", "delta of lost packets: increases of the tcpi_lost gauge between samples (a lower bound)", 0)
    dsack_dups: int = _f("integer", "delta of tcpi_dsack_dups", 0)
    timeouts: int = _f("integer", "RTO events in the window", 0)
    resets: int = _f("integer", "resets seen in the window: RSTs this host sent to the peer "
                                "(tcp:tcp_send_reset; 0 where the tracepoint cannot be read)", 0)
    resets_in: int = _f("integer", "RSTs received from the peer in the window (tcp:tcp_receive_reset)", 0)
    rtt_us: int | None = _f("integer", "smoothed RTT gauge (max over sockets)")
    rttvar_us: int | None = _f("integer", "RTT variance gauge")
    cwnd: int | None = _f("integer", "congestion window gauge (min over sockets)")
    retransmits: int | None = _f("integer", "current unrecovered retransmits gauge")
    flags: list = _f("array", "red flags raised", [], items="string")


@dataclass(slots=True, kw_only=True)
class NetstatEvent:
    """Host-wide counter deltas of one (group, scope), nstat semantics."""

    group: str = _f("string", "Tcp, TcpExt, Udp, IpExt, Ip6, softnet, link, qdisc, ...", required=True)
    scope: str = _f("string", "interface, cpu, qdisc handle, or empty", "")
    interval_ns: int = _f(COUNT, "time between the two samples the deltas span", 0)
    deltas: dict = _f(mapping(INT), "counter name -> increase over the interval", {})
    gauges: dict = _f(mapping(INT), "gauge name -> current value (never delta'd)", {})
    values: dict = _f(mapping(INT), "absolute counter values (baseline samples only)", {})
    flags: list = _f("array", "baseline, reset, wrap", [], items="string")


@dataclass(slots=True, kw_only=True)
class FrameEvent:
    """One captured frame; on the wire frame batches are column-wise (one list per field)."""

    ts: int = _f("integer", "timestamp (ns)", required=True)
    ts_src: int = _f("integer", "0 fallback, 1 software, 2 hardware", 0)
    caplen: int = _f(COUNT, "bytes captured", 0)
    len: int = _f(COUNT, "bytes on the wire", 0)
    dir: int = _f("integer", "sll_pkttype (0 host, 1 broadcast, 2 multicast, 3 otherhost, 4 outgoing)", 0)
    queue: int | None = _f("integer", "rx queue / fanout member")
    rxhash: int | None = _f("integer", "receive hash")
    vlan: int | None = _f("integer", "VLAN TCI")
    ethertype: int | None = _f("integer", "ethertype")
    src: bytes | None = _f("bytes", "L3 source address")
    dst: bytes | None = _f("bytes", "L3 destination address")
    l4: int | None = _f("integer", "IP protocol number")
    sport: int | None = _f("integer", "L4 source port")
    dport: int | None = _f("integer", "L4 destination port")
    ip_id: int | None = _f("integer", "IPv4 identification")
    tcp_seq: int | None = _f("integer", "TCP sequence number")
    head: bytes | None = _f("bytes", "first bytes of the frame (96 by default)")


@dataclass(slots=True, kw_only=True)
class StatusEvent:
    """An agent's own health and its own losses (every place it can lose something, even at 0)."""

    version: str = _f("string", "agent version", required=True)
    uptime: float = _f("number", "seconds since the agent started", 0.0)
    sources: dict = _f(mapping(mapping(STR, 16)), "source -> {state: starting|running|unavailable|stopped, reason}", {})
    published: dict = _f(mapping(COUNT), "kind -> batches published by this run", {})
    events: dict = _f(mapping(COUNT), "kind -> events published by this run", {})
    lost: dict = _f(mapping(COUNT), "place -> items lost there by this run (cumulative)", {})
    queues: dict = _f(mapping(mapping(INT, 16)), "queue -> {size, capacity}", {})
    final: bool = _f("boolean", "true on the last status of a run (clean shutdown)", False)
    addresses: dict | None = _f(mapping(array(STR, 1024), 64),
                         "namespace -> the addresses this host owns there, from rtnetlink "
                         "(scope global/site: no loopback, no link-local), kept current on "
                         "address changes; a namespace is the one the agent's sources read "
                         "(its /run/netns name, 'root', or 'self'); absent: not known")
    netns: dict | None = _f(mapping(COUNT, 64), "namespace (as in addresses) -> its inode, the netns "
                     "kernel-wide drop events carry")


@dataclass(slots=True, kw_only=True)
class IncidentEvent:
    """What the correlator concludes."""

    type: str = _f("string", "incident type", required=True, enum=("drop_storm", "path_loss", "peer"))
    summary: str = _f("string", "one line a person reads", required=True)
    hosts: list = _f("array", "hosts involved", [], items="string")
    first_ts: int | None = _f("integer", "first evidence (ns)")
    last_ts: int | None = _f("integer", "last evidence (ns)")
    details: dict = _f(mapping(ANY), "type-specific details (free form)", {})
    inputs: list = _f("array", "kinds used", [], items="string")
    missing_input: dict = _f(mapping(COUNT), "batches missing from the inputs, per host/kind", {})


RECORDS: dict[str, type] = {
    "drop": DropEvent,
    "gap": GapEvent,
    "ipstat": IpstatEvent,
    "netstat": NetstatEvent,
    "frame": FrameEvent,
    "status": StatusEvent,
    "incident": IncidentEvent,
}
KINDS: tuple[str, ...] = tuple(RECORDS)
COLUMNAR: frozenset[str] = frozenset({"frame"})

# Which JetStream stream holds which kind (DESIGN: events, stats, frames).
STREAM_OF: dict[str, str] = {
    "drop": "NETEVENTS_EVENTS", "gap": "NETEVENTS_EVENTS", "incident": "NETEVENTS_EVENTS",
    "status": "NETEVENTS_EVENTS", "ipstat": "NETEVENTS_STATS", "netstat": "NETEVENTS_STATS",
    "frame": "NETEVENTS_FRAMES",
}

# Envelope fields: name -> (json type, required, doc).
ENVELOPE: dict[str, tuple[str, bool, str]] = {
    "v": ("integer", True, "wire version (1)"),
    "kind": ("string", True, "event kind"),
    "site": ("string", True, "site token"),
    "host": ("string", True, "host token"),
    "run": ("string", True, "random id of the agent run"),
    "seq": ("integer", True, "1, 2, ... per (run, kind)"),
    "t0": ("integer", True, "start of the window covered (ns)"),
    "t1": ("integer", True, "end of the window covered (ns)"),
    "boot": ("string", False, "boot_id of the host"),
    "agent": ("string", False, "agent version"),
}

# Batch-level fields some kinds add next to the envelope.
BATCH_FIELDS: dict[str, dict[str, tuple[W, str]]] = {
    "frame": {
        "iface": (STR, "captured interface"),
        "worker": (COUNT, "capture worker"),
        "first_frame": (INT, "ring sequence number of the first frame in the batch"),
        "hwtstamp": (mapping(INT.null(), 16), "applied hardware timestamping: filter, phc_index"),
        "snaplen": (COUNT, "the ring's snap length: no head is longer"),
        "ring": (mapping(INT, 16), "the ring's kernel PACKET_STATISTICS running totals when the batch was "
                           "made: packets (tp_packets, which includes drops), drops, freezes"),
        "gaps_before": (mapping(INT, 16), "gap records this ring (run, iface, worker) had emitted when the "
                                  "batch was made: records, lost. Every gap that sits before a "
                                  "frame of the batch is among them, so a reader that has seen "
                                  "fewer gap records of the ring has not yet seen all of them "
                                  "(gap and frame batches travel separately)"),
    },
    "ipstat": {
        "residual": (mapping(INT), "host-wide MIB deltas not attributed to a peer"),
        "level": (W("string", enum=("default", "diagnostics")), "publishing level of the batch"),
        "overflow": (COUNT, "peers left out of this window by the per-batch cap"),
        "mib": (mapping(INT.null(), 64), "host-wide MIB deltas of the window (RetransSegs, TCPTimeouts, OutRsts, EstabResets)"),
        "sockets": (COUNT, "TCP sockets in the dump that closed the window"),
        "peers": (COUNT, "peers (or local/peer pairs) with activity in the window, before level filter and cap"),
    },
    "netstat": {},
    "drop": {"mode": (W("string", enum=("alert", "packet")), "alert (aggregated) or packet"),
             "import": (STR, "capture file the batch was imported from (netevents import)")},
}


def ring_key(host: str, run: str, iface: Any, worker: Any) -> tuple[str, str, str, int]:
    """The capture ring a frame batch (batch fields) or a gap event belongs to:
    (host, run, iface, worker); ``worker`` defaults to 0 as on the wire. Frame batches count the
    gap records of their ring (``gaps_before``): readers match the two by this key."""
    return host, run, str(iface), worker if isinstance(worker, int) else 0


def fields_of(kind: str) -> list[dataclasses.Field]:
    return list(dataclasses.fields(RECORDS[kind]))


def to_wire(record: Any) -> dict[str, Any]:
    """A record as the dict that goes on the wire; ``None`` fields are left out (readers default them)."""
    out = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if value is not None:
            out[f.name] = value
    return out


def from_wire(kind: str, event: dict[str, Any]) -> Any:
    """A wire dict as its typed record; unknown keys are ignored, missing ones defaulted."""
    cls = RECORDS[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in event.items() if k in names})


def json_view(obj: Any) -> Any:
    """A decoded batch or event with bytes as base64 strings: what ``tail --json`` prints."""
    if isinstance(obj, Mapping):  # dicts and decoded rows (netevents.wire.EventRow)
        return {k: json_view(v) for k, v in obj.items()}
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(obj)).decode()
    if isinstance(obj, (list, tuple)) or isinstance(obj, Sequence) and not isinstance(obj, str):
        return [json_view(v) for v in obj]  # lists, tuples and decoded rows (netevents.lazy)
    return obj


# ---------------------------------------------------------------------------------------------
# JSON Schema, generated from the records above.

def wire_schema(w: W) -> dict[str, Any]:
    """The JSON Schema of one wire type (its JSON view: bytes as base64 strings)."""
    if w.json == "any":
        return {"description": f"free form: JSON values (at most {MAX_ANY_DEPTH} deep)"}
    if w.json == "bytes":
        s: dict[str, Any] = {"type": "string", "contentEncoding": "base64"}
    elif "|" in w.json:
        s = {"type": w.json.split("|")}
    else:
        s = {"type": w.json}
    if w.minimum is not None:
        s["minimum"] = w.minimum
    if w.enum:
        s["enum"] = list(w.enum)
    if w.items is not None:
        s["items"] = wire_schema(w.items)
        s["maxItems"] = w.max_items
    if w.values is not None:
        s["additionalProperties"] = wire_schema(w.values)
        s["maxProperties"] = w.max_items
    if w.nullable:
        if "enum" in s or "contentEncoding" in s:
            s = {"anyOf": [s, {"type": "null"}]}
        else:
            s["type"] = [*(s["type"] if isinstance(s["type"], list) else [s["type"]]), "null"]
    return s


ENVELOPE_RULES = ("t1 >= t0; in a frame batch every column holds the same number of values; "
                  "msgpack extension types (timestamps included) are not part of v1")
"""What a JSON Schema cannot say and the codec checks as well."""


def json_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of one kind's batch, in its JSON view (bytes as base64)."""
    props: dict[str, Any] = {}
    for name, (jt, _req, doc) in ENVELOPE.items():
        props[name] = {"type": jt, "description": doc}
    props["v"]["const"] = VERSION
    props["kind"]["const"] = kind
    for name in ("site", "host"):
        props[name]["pattern"] = "^[A-Za-z0-9_-]{1,128}$"
    props["run"].update(minLength=1, maxLength=64)
    props["seq"]["minimum"] = 1
    props["t0"]["minimum"] = 0
    props["t1"]["minimum"] = 0
    for name, (w, doc) in BATCH_FIELDS.get(kind, {}).items():
        props[name] = {**wire_schema(w), "description": doc}

    ev_props: dict[str, Any] = {}
    required: list[str] = []
    for f in fields_of(kind):
        m = f.metadata
        ev_props[f.name] = {**wire_schema(m["wire"]), "description": m["doc"]}
        if m["required"]:
            required.append(f.name)
    any_value = wire_schema(ANY)
    if kind in COLUMNAR:
        columns = {
            name: {"type": "array", "items": {k: v for k, v in s.items() if k != "description"},
                   "maxItems": MAX_ROWS, "description": s["description"]}
            for name, s in ev_props.items()
        }
        events = {"type": "object", "properties": columns, "required": required,
                  "additionalProperties": {"type": "array", "items": any_value,
                                           "maxItems": MAX_ROWS},
                  "maxProperties": MAX_EVENT_KEYS,
                  "description": "column-wise: one list per field, all of the same length"}
    else:
        events = {"type": "array", "maxItems": MAX_ROWS,
                  "items": {"type": "object", "properties": ev_props, "required": required,
                            "additionalProperties": any_value,
                            "maxProperties": MAX_EVENT_KEYS}}
    props["events"] = events
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://netevents.dev/schemas/v1/{kind}.json",
        "title": f"netevents v1 {kind} batch",
        "description": (RECORDS[kind].__doc__ or "").strip() + " Also: " + ENVELOPE_RULES + ".",
        "type": "object",
        "properties": props,
        "additionalProperties": any_value,
        "maxProperties": MAX_ENVELOPE_KEYS,
        "required": [n for n, (_t, req, _d) in ENVELOPE.items() if req] + ["events"],
    }


def write_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in KINDS:
        path = directory / f"{kind}.json"
        path.write_text(json.dumps(json_schema(kind), indent=2) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":  # python -m netevents.events --write-schemas [DIR]
    if len(sys.argv) >= 2 and sys.argv[1] == "--write-schemas":
        target = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("schemas/v1")
        for p in write_schemas(target):
            print(p)
    else:
        print("usage: python -m netevents.events --write-schemas [DIR]", file=sys.stderr)
        sys.exit(2)

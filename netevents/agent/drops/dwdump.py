"""dropwatch's ``dwdump`` captures as a drop source: recorded NET_DM messages -> drop events.

``dwdump`` writes a classic pcap with link type 253 (DLT_NETLINK); each record is a 16-byte
Linux cooked header (pkttype, ARPHRD_NETLINK, ..., protocol NETLINK_GENERIC, all big-endian)
followed by one netlink message. The nlctrl NEWFAMILY message at the start tells which family
id NET_DM had on the recording host.

    read_pcap(data)          sans-IO classic-pcap reader (both byte orders, us and ns stamps)
    decode_capture(data)     pcap bytes -> (DropSample list, tail drops, errors)
    import_capture(...)      publish a file's drops as batches (source ``dwdump``)

Bad input (not a pcap, wrong link type, truncated records) raises one
:class:`~netevents.errors.CodecError` naming the problem; a bad record inside an otherwise good
file (its netlink does not decode: :class:`~netevents.errors.NetlinkError`) is counted in
``errors`` and the other records still count.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netevents.codec import Batch
from netevents.errors import CodecError, ConfigError, NetlinkError

from ..kernel.netlink import CTRL_CMD_NEWFAMILY, GENL_ID_CTRL, NETLINK_GENERIC
from .aggregate import DropAggregator, DropSample
from .netdm import (
    NET_DM_CMD_STATS_NEW,
    NET_DM_FAMILY,
    decode_messages,
    samples_of,
)

# pcap file format (https://www.ietf.org/archive/id/draft-ietf-opsawg-pcap-01.html)
PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAP_GLOBAL = struct.Struct("IHHiIII")  # magic, major, minor, thiszone, sigfigs, snaplen, network
PCAP_RECORD = struct.Struct("IIII")     # ts_sec, ts_frac, incl_len, orig_len
DLT_NETLINK = 253
# Linux cooked header for netlink (pcap-linktype(7) LINKTYPE_NETLINK): pkttype, hatype,
# address length, 8 address bytes, protocol — 16 bytes, network byte order.
COOKED = struct.Struct("!HHH8sH")
ARPHRD_NETLINK = 824


@dataclass(slots=True)
class PcapRecord:
    ts: int          # ns since the epoch
    data: bytes
    orig_len: int


def read_pcap(data: bytes) -> tuple[int, list[PcapRecord]]:
    """(link type, records) of a classic pcap.

    Raises:
        CodecError: not a classic pcap, or a record header that runs past the end of the file.
    """
    if len(data) < PCAP_GLOBAL.size:
        raise CodecError(f"not a pcap file: {len(data)} bytes, shorter than the pcap header")
    for order in ("<", ">"):
        magic = struct.unpack_from(order + "I", data)[0]
        if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            break
    else:
        if data[:4] == b"\x0a\x0d\x0d\x0a":
            raise CodecError("this is a pcapng file; dwdump writes classic pcap "
                             "(convert with: editcap -F pcap IN OUT)")
        raise CodecError(f"not a pcap file: magic {data[:4].hex()}")
    scale = 1 if magic == PCAP_MAGIC_NS else 1000
    hdr = struct.Struct(order + PCAP_GLOBAL.format)
    rec = struct.Struct(order + PCAP_RECORD.format)
    *_, linktype = hdr.unpack_from(data)
    linktype &= 0x0FFFFFFF  # upper bits: FCS length flags
    off = hdr.size
    out: list[PcapRecord] = []
    while off < len(data):
        if off + rec.size > len(data):
            raise CodecError(f"pcap truncated: record header at offset {off} is incomplete")
        sec, frac, incl, orig = rec.unpack_from(data, off)
        off += rec.size
        if off + incl > len(data):
            raise CodecError(f"pcap truncated: record {len(out) + 1} claims {incl} bytes, "
                             f"{len(data) - off} left")
        out.append(PcapRecord(sec * 1_000_000_000 + frac * scale, data[off:off + incl], orig))
        off += incl
    return linktype, out


@dataclass(slots=True)
class CaptureDrops:
    """What one capture holds."""

    samples: list[DropSample] = field(default_factory=list)
    tail_drops: int = 0           # the last NET_DM STATS_DROPPED seen (the kernel's own loss)
    records: int = 0
    errors: list[str] = field(default_factory=list)
    t0: int | None = None
    t1: int | None = None


def decode_capture(data: bytes) -> CaptureDrops:
    """Decode a dwdump capture.

    Raises:
        CodecError: the file is not a DLT_NETLINK classic pcap. Bad records inside a good file
        are listed in ``errors`` instead, and the rest is still decoded.
    """
    linktype, records = read_pcap(data)
    if linktype != DLT_NETLINK:
        raise CodecError(f"pcap link type {linktype} is not DLT_NETLINK ({DLT_NETLINK}); "
                         "not a dwdump capture")
    out = CaptureDrops(records=len(records))
    family: int | None = None
    for n, r in enumerate(records, 1):
        if out.t0 is None or r.ts < out.t0:
            out.t0 = r.ts
        if out.t1 is None or r.ts > out.t1:
            out.t1 = r.ts
        if len(r.data) < COOKED.size:
            out.errors.append(f"record {n}: {len(r.data)} bytes, shorter than the cooked header")
            continue
        _pkttype, hatype, _alen, _addr, proto = COOKED.unpack_from(r.data)
        if hatype != ARPHRD_NETLINK or proto != NETLINK_GENERIC:
            continue  # other netlink traffic in the capture: not ours
        try:
            msgs = decode_messages(r.data[COOKED.size:], family)
        except NetlinkError as exc:
            out.errors.append(f"record {n}: {exc}")
            continue
        for m in msgs:
            if m.family == GENL_ID_CTRL:
                if m.cmd == CTRL_CMD_NEWFAMILY and m.family_name == NET_DM_FAMILY:
                    family = m.family_id
                continue
            if m.cmd == NET_DM_CMD_STATS_NEW and m.dropped is not None:
                out.tail_drops = max(out.tail_drops, m.dropped)
            for s in samples_of(m):
                if s.ts is None:
                    s.ts = r.ts
                out.samples.append(s)
    return out


def capture_events(capture: CaptureDrops, *, packets: bool = True,
                   packet_cap: int = 10_000) -> tuple[list[dict[str, Any]], int]:
    """Drop events of a capture: aggregates plus (``packets``) per-packet events with payload.

    Returns (events, packets folded into aggregates because of ``packet_cap``).
    """
    agg = DropAggregator("dwdump", packet_mode=packets, packet_cap=packet_cap)
    for s in capture.samples:
        agg.add(s)
    overflow = agg.take_overflow()
    return agg.flush(), overflow


def load_capture(path: str | Path) -> CaptureDrops:
    """Read and decode a capture file.

    Raises:
        ConfigError: the file cannot be read.
        CodecError: the file is not a dwdump capture (the message says why).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read capture {path}: {exc.strerror}") from exc
    try:
        return decode_capture(data)
    except CodecError as exc:
        raise CodecError(f"{path}: {exc}") from exc


async def import_capture(path: str | Path, bus: Any, *, site: str = "local",
                         host: str | None = None, batch_size: int = 500,
                         capture: CaptureDrops | None = None, ack: bool = False) -> dict[str, int]:
    """Publish a dwdump capture's drops as ``drop`` batches (source ``dwdump``).

    ``bus`` is anything with ``async publish(batch)`` (a Bus, a MemoryBus). ``capture`` skips
    reading ``path`` again when the caller already loaded it; ``ack`` waits for JetStream to
    store each batch (a real Bus only). Returns counts: events, drops,
    batches, tail_drops, errors, packet_overflow.

    Raises:
        ConfigError: the file cannot be read.
        CodecError: the file is not a dwdump capture.
    """
    import secrets
    import socket

    if capture is None:
        capture = load_capture(path)
    events, overflow = capture_events(capture)
    host = host or socket.gethostname().split(".")[0]
    run = secrets.token_hex(8)
    t0 = capture.t0 or time.time_ns()
    t1 = capture.t1 or t0
    seq = 0
    for i in range(0, len(events), batch_size):
        seq += 1
        chunk = events[i:i + batch_size]
        fields = {"mode": "packet" if any("payload" in e for e in chunk) else "alert",
                  "import": str(path)}
        batch = Batch(kind="drop", site=site, host=host, run=run, seq=seq, t0=t0, t1=t1,
                      events=chunk, fields=fields)
        if ack:
            await bus.publish(batch, ack=True)  # stored by JetStream, or BusError
        else:
            await bus.publish(batch)
    if hasattr(bus, "flush"):
        await bus.flush()
    return {"events": len(events), "drops": sum(e["count"] for e in events), "batches": seq,
            "tail_drops": capture.tail_drops, "errors": len(capture.errors),
            "packet_overflow": overflow}

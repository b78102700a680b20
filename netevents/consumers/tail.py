"""`netevents tail`: events from the bus as readable lines or one JSON object per event."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import sys
import time
from typing import Any, TextIO

from .. import events as ev
from ..bus import Credentials, connect
from ..codec import Batch

_ENVELOPE = ("kind", "site", "host", "run", "seq", "t0", "t1")


def event_json(batch: Batch, event: dict[str, Any]) -> str:
    """One event as one JSON line: the envelope, then the event's fields; batch fields under
    ``batch``; bytes as base64."""
    doc: dict[str, Any] = {k: getattr(batch, k) for k in _ENVELOPE}
    doc.update(ev.json_view(event))
    extra = {k: v for k, v in batch.fields.items() if k not in ("agent", "boot")}
    if extra:
        doc["batch"] = ev.json_view(extra)
    return json.dumps(doc, separators=(",", ":"))


def _clock(ns: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ns / 1e9)) + f".{ns // 1_000_000 % 1000:03d}"


_L4 = {1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp", 58: "icmpv6", 132: "sctp"}
_ETHERTYPE = {0x0800: "ipv4", 0x86DD: "ipv6", 0x0806: "arp", 0x8100: "vlan", 0x88CC: "lldp"}
_TS_SRC = {0: "fallback ts", 1: "software ts", 2: "hardware ts"}
_DIR = {0: "in", 1: "broadcast", 2: "multicast", 3: "other-host", 4: "out"}
_IPSTAT_WORDS = (("retrans_segs", "retrans"), ("timeouts", "timeouts"), ("resets", "rst out"),
                 ("resets_in", "rst in"), ("lost", "lost"), ("segs_out", "segs out"))


def _endpoint(addr: Any, port: Any) -> str:
    if isinstance(addr, (bytes, bytearray)) and len(addr) in (4, 16):
        text = str(ipaddress.ip_address(bytes(addr)))
        text = f"[{text}]" if len(addr) == 16 and port is not None else text
    else:
        text = "?"
    return text if port is None else f"{text}:{port}"


def frame_text(e: dict[str, Any]) -> str:
    """A frame summary in words: ``446B udp 10.0.0.1:40001 -> 10.0.0.2:9999 in, software ts``
    (what the head did not reach is left out, never printed as None)."""
    size = f"{e.get('len')}B" if e.get("len") is not None else "?B"
    if e.get("caplen") is not None and e.get("len") is not None and e["caplen"] < e["len"]:
        size += f" (head {e['caplen']}B)"
    l4 = e.get("l4")
    proto = _L4.get(l4, f"proto {l4}") if l4 is not None else None
    et = e.get("ethertype")
    parts = [size]
    if e.get("src") is not None or e.get("dst") is not None:
        parts += [proto or _ETHERTYPE.get(et, "ip"),
                  f"{_endpoint(e.get('src'), e.get('sport'))} -> {_endpoint(e.get('dst'), e.get('dport'))}"]
    elif et is not None:
        parts.append(_ETHERTYPE.get(et, f"ethertype {et:#06x}"))
    else:
        parts.append("not ethernet")
    tail = [_DIR.get(e.get("dir"), f"dir {e.get('dir')}") if e.get("dir") is not None else None,
            _TS_SRC.get(e.get("ts_src"), f"ts source {e.get('ts_src')}") if e.get("ts_src") is not None else None]
    if e.get("vlan") is not None:
        tail.append(f"vlan {e['vlan'] & 0xFFF}")
    extra = ", ".join(t for t in tail if t)
    return " ".join(parts) + (f" {extra}" if extra else "")


def event_line(batch: Batch, e: dict[str, Any]) -> str:
    """One event as one line a person reads."""
    k = batch.kind
    if k == "drop":
        what = (f"{e.get('count')}x {e.get('reason')} at {e.get('location') or '?'}"
                f"{' on ' + e['iface'] if e.get('iface') else ''} [{e.get('source')}]")
    elif k == "netstat":
        d = e.get("deltas") or {}
        top = ", ".join(f"{n}+{v}" for n, v in sorted(d.items(), key=lambda kv: -kv[1])[:6])
        scope = f"/{e['scope']}" if e.get("scope") else ""
        flags = f" ({','.join(e['flags'])})" if e.get("flags") else ""
        what = f"{e.get('group')}{scope}{flags} {top or str(len(e.get('values') or {})) + ' counters'}"
    elif k == "gap":
        what = (f"{e.get('lost')} frames lost between frame {e.get('after_frame')} and "
                f"{e.get('before_frame')} on {e.get('iface')} worker {e.get('worker')} ({e.get('cause')})")
    elif k == "ipstat":
        # the fields the event carries (an absent one is not known, not 0)
        figures = " ".join(f"{word} {e[f]}" for f, word in _IPSTAT_WORDS if f in e)
        what = f"peer {e.get('peer')} {figures} flags {','.join(e.get('flags') or []) or '-'}"
    elif k == "status":
        lost = {n: v for n, v in (e.get("lost") or {}).items() if v}
        what = (f"up {e.get('uptime')}s sources "
                + ",".join(f"{n}:{(s or {}).get('state')}" for n, s in (e.get("sources") or {}).items())
                + f" lost {lost or 'nothing'}{' FINAL' if e.get('final') else ''}")
        if isinstance(e.get("addresses"), dict):
            what += " addresses " + "; ".join(
                f"{ns}: {' '.join(map(str, addrs)) or 'none'}" for ns, addrs in e["addresses"].items())
    elif k == "frame":
        what = frame_text(e)
    elif k == "incident":
        what = f"[{e.get('type')}] {e.get('summary')}"
    else:
        what = str(e)
    miss = f" (missed {batch.missed} batches before this)" if batch.missed else ""
    return f"{_clock(batch.t1)} {batch.host:<14} {k:<8} {what}{miss}"


async def tail(url: str | None, kinds: list[str] | None, hosts: list[str] | None, *,
               as_json: bool, count: int | None, timeout: float | None,
               out: TextIO | None = None, err: TextIO | None = None,
               credentials: Credentials | None = None, since: int | None = None,
               until: int | None = None, event_filter: Any = None) -> int:
    """Print events until ``count`` events, ``timeout`` seconds, or Ctrl-C.

    ``since``/``until`` (ns) replay the streams first (:mod:`netevents.bus.history`); the end of
    a window with ``until`` ends the command. ``event_filter`` (an
    :class:`~netevents.consumers.filters.EventFilter`) keeps only the events that pass.

    Returns the exit code: 0, or 1 when ``count`` was asked for and not reached in time.
    """
    out = out or sys.stdout  # resolved now, not at import: a caller may have replaced them
    err = err or sys.stderr
    printed = 0
    async with connect(url, name="netevents-tail", credentials=credentials) as bus:
        sub = bus.subscribe(kinds=kinds, hosts=hosts, since=since, until=until)
        async with sub:
            try:
                async with asyncio.timeout(timeout):
                    while count is None or printed < count:
                        batch = await sub.__anext__()
                        rows = event_filter.rows(batch) if event_filter else batch.rows()
                        for e in rows:
                            out.write((event_json(batch, e) if as_json else event_line(batch, e)) + "\n")
                            printed += 1
                            if count is not None and printed >= count:
                                break
                        out.flush()
            except (TimeoutError, StopAsyncIteration):
                pass
        if sub.rejected or sub.missed or sub.dropped:
            err.write(f"netevents tail: rejected {dict(sub.rejected)}, missed {sub.missed} batches, "
                      f"dropped {sub.dropped} (slow terminal)\n")
    if count is not None and printed < count and sub.finished:
        err.write(f"netevents tail: the window held {printed} of {count} events\n")
        return 1
    if count is not None and printed < count:
        err.write(f"netevents tail: timed out after {timeout}s with {printed} of {count} events\n")
        return 1
    return 0

"""Event filters a person uses, applied in the client (sans-IO).

Kind, site and host are subject tokens: the server filters those (the subscription's subject
and host globs). Everything below looks inside a batch, so the consumer does it:

    option      applies to            matches
    --reason    drop                  reason, case-insensitive (``NETFILTER_DROP``, ``netfilter_drop``)
    --location  drop                  location, a glob (``tcp_v4_*``, ``nf_hook_slow*``)
    --source    drop                  source (netdm, tracepoint, ebpf, counter, dwdump)
    --netns     drop                  namespace inode or name (netns_name)
    --addr      drop, frame           either end of the flow: an address or a CIDR block
    --port      drop, frame           either end of the flow
    --peer      ipstat                the peer address (or CIDR block)
    --iface     drop, frame, gap      interface name, a glob

Each option may be given several times (any of its values matches); an event passes when every
option given matches it. An event of a kind an option does not apply to does not pass -- except
capture gaps under ``--addr`` / ``--port``: a gap has no flow, and the frames it lost may have
been the flow's, so it is kept (it is loss on the way to the answer, not noise).
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..codec import Batch

APPLIES: dict[str, frozenset[str]] = {
    "reasons": frozenset({"drop"}),
    "locations": frozenset({"drop"}),
    "sources": frozenset({"drop"}),
    "netns": frozenset({"drop"}),
    "addrs": frozenset({"drop", "frame"}),
    "ports": frozenset({"drop", "frame"}),
    "peers": frozenset({"ipstat"}),
    "ifaces": frozenset({"drop", "frame", "gap"}),
}
TRANSPARENT: dict[str, frozenset[str]] = {"addrs": frozenset({"gap"}), "ports": frozenset({"gap"})}
"""Kinds an option lets through untested (see the module text)."""

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_net(text: str) -> Net:
    """An address or CIDR block.

    Raises:
        ValueError: naming the value.
    """
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"not an address or CIDR block: {text!r}") from None


def _addr(value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if value is None:
        return None
    try:
        if isinstance(value, (bytes, bytearray, memoryview)):
            return ipaddress.ip_address(bytes(value))
        return ipaddress.ip_address(str(value))
    except ValueError:
        return None


def _in(nets: tuple[Net, ...], value: Any) -> bool:
    a = _addr(value)
    return a is not None and any(a.version == n.version and a in n for n in nets)


@dataclass(frozen=True)
class EventFilter:
    """The client-side filters of one command; an empty filter passes everything."""

    reasons: tuple[str, ...] = ()
    locations: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    netns: tuple[str, ...] = ()
    addrs: tuple[Net, ...] = ()
    ports: tuple[int, ...] = ()
    peers: tuple[Net, ...] = ()
    ifaces: tuple[str, ...] = ()
    _given: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def build(cls, *, reason: Iterable[str] = (), location: Iterable[str] = (),
              source: Iterable[str] = (), netns: Iterable[str] = (), addr: Iterable[str] = (),
              port: Iterable[int | str] = (), peer: Iterable[str] = (),
              iface: Iterable[str] = ()) -> EventFilter:
        """From option values (None is no value).

        Raises:
            ValueError: for an address that is not one, or a port out of 0..65535.
        """
        ports = []
        for p in port or ():
            n = int(p)
            if not 0 <= n <= 0xFFFF:
                raise ValueError(f"not a port: {p!r}")
            ports.append(n)
        f = cls(reasons=tuple(r.upper().removeprefix("SKB_DROP_REASON_") for r in reason or ()),
                locations=tuple(location or ()), sources=tuple(source or ()),
                netns=tuple(str(n) for n in netns or ()),
                addrs=tuple(parse_net(a) for a in addr or ()), ports=tuple(ports),
                peers=tuple(parse_net(a) for a in peer or ()), ifaces=tuple(iface or ()))
        given = tuple(name for name in APPLIES if getattr(f, name))
        object.__setattr__(f, "_given", given)
        return f

    def __bool__(self) -> bool:
        return bool(self._given)

    def kinds(self, asked: Iterable[str]) -> list[str]:
        """Of the kinds ``asked``, those an event of which can pass: the subscription then asks
        the server for these only."""
        return [k for k in asked if all(k in APPLIES[n] or k in TRANSPARENT.get(n, ())
                                        for n in self._given)]

    def describe(self) -> str:
        parts = []
        for name in self._given:
            values = getattr(self, name)
            parts.append(f"{name[:-1] if name.endswith('s') else name}=" + ",".join(map(str, values)))
        return " ".join(parts) or "none"

    # -- matching -------------------------------------------------------------------------------
    def match(self, kind: str, event: dict[str, Any], fields: dict[str, Any] | None = None) -> bool:
        """Whether one event of ``kind`` passes (``fields``: its batch's fields, where a frame
        batch keeps its interface)."""
        for name in self._given:
            if kind not in APPLIES[name]:
                if kind in TRANSPARENT.get(name, ()):
                    continue
                return False
            if not getattr(self, f"_{name}")(kind, event, fields or {}):
                return False
        return True

    def _reasons(self, kind: str, e: dict, f: dict) -> bool:
        return str(e.get("reason") or "NOT_SPECIFIED").upper() in self.reasons

    def _locations(self, kind: str, e: dict, f: dict) -> bool:
        loc = e.get("location")
        return isinstance(loc, str) and any(fnmatch.fnmatchcase(loc, p) for p in self.locations)

    def _sources(self, kind: str, e: dict, f: dict) -> bool:
        return e.get("source") in self.sources

    def _netns(self, kind: str, e: dict, f: dict) -> bool:
        return str(e.get("netns")) in self.netns or (e.get("netns_name") or None) in self.netns

    def _flow(self, kind: str, e: dict) -> dict:
        return (e.get("flow") or {}) if kind == "drop" else e

    def _addrs(self, kind: str, e: dict, f: dict) -> bool:
        flow = self._flow(kind, e)
        return _in(self.addrs, flow.get("src")) or _in(self.addrs, flow.get("dst"))

    def _ports(self, kind: str, e: dict, f: dict) -> bool:
        flow = self._flow(kind, e)
        return flow.get("sport") in self.ports or flow.get("dport") in self.ports

    def _peers(self, kind: str, e: dict, f: dict) -> bool:
        return _in(self.peers, e.get("peer"))

    def _ifaces(self, kind: str, e: dict, f: dict) -> bool:
        name = e.get("iface") if kind != "frame" else f.get("iface")
        return isinstance(name, str) and any(fnmatch.fnmatchcase(name, p) for p in self.ifaces)

    # -- batches --------------------------------------------------------------------------------
    def rows(self, batch: Batch) -> Iterator[dict[str, Any]]:
        """The events of ``batch`` that pass, one dict each."""
        if not self:
            yield from batch.rows()
            return
        for e in batch.rows():
            if self.match(batch.kind, e, batch.fields):
                yield e

    def keep(self, batch: Batch) -> list[int]:
        """Indexes of the events of ``batch`` that pass."""
        return [i for i, e in enumerate(batch.rows()) if self.match(batch.kind, e, batch.fields)]

    def batch(self, batch: Batch) -> Batch | None:
        """``batch`` with only the events that pass (the same object when all do), None when
        none does. A columnar (frame) batch keeps its columns, cut to the rows that pass."""
        if not self:
            return batch
        kept = self.keep(batch)
        if len(kept) == len(batch):
            return batch
        if not kept:
            return None
        return sliced(batch, kept)


def sliced(batch: Batch, rows: list[int]) -> Batch:
    """A copy of ``batch`` with only the events at ``rows`` (columns cut for frame batches)."""
    if isinstance(batch.events, dict) or hasattr(batch.events, "keys"):
        events: Any = {name: [col[i] for i in rows] for name, col in batch.events.items()}
    else:
        events = [batch.events[i] for i in rows]
    return Batch(kind=batch.kind, site=batch.site, host=batch.host, run=batch.run, seq=batch.seq,
                 t0=batch.t0, t1=batch.t1, events=events, fields=dict(batch.fields), v=batch.v,
                 missed=batch.missed)

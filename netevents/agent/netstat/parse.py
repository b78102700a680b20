"""Sans-IO parsers for the host-wide counter files, and the nstat delta arithmetic.

    parse_snmp(text)      /proc/net/snmp and /proc/net/netstat: header/value line pairs
    parse_snmp6(text)     /proc/net/snmp6: "Ip6InReceives  123" lines, grouped by prefix
    parse_softnet(text)   /proc/net/softnet_stat: one line of hex u32 per CPU
    CounterDeltas         nstat semantics: baseline first, u32 wrap, reset detection, gauges

Every parser returns ``{group: {scope: {name: int}}}``-shaped data via :class:`Sample` so the
collector treats files, links and qdiscs alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..kernel.procnet import parse_snmp_pairs

# Values that are states or levels, not event counts: reported as they are, never delta'd.
GAUGES: dict[str, frozenset[str]] = {
    "Ip": frozenset({"Forwarding", "DefaultTTL"}),
    "Tcp": frozenset({"RtoAlgorithm", "RtoMin", "RtoMax", "MaxConn", "CurrEstab"}),
    "softnet": frozenset({"backlog_len", "input_qlen", "process_qlen"}),
    "qdisc": frozenset({"qlen", "backlog"}),
}

# Counters the kernel keeps in 32 bits (they wrap modulo 2^32); everything else is 64-bit.
U32_GROUPS = frozenset({"softnet", "qdisc"})


@dataclass(slots=True)
class Sample:
    """One reading of one (group, scope): counters and gauges, with the counter width."""

    group: str
    scope: str
    counters: dict[str, int]
    gauges: dict[str, int] = field(default_factory=dict)
    bits: int = 64


def _split_gauges(group: str, values: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    g = GAUGES.get(group)
    if not g:
        return values, {}
    return ({k: v for k, v in values.items() if k not in g},
            {k: v for k, v in values.items() if k in g})


def parse_snmp(text: str) -> list[Sample]:
    """Parse /proc/net/snmp or /proc/net/netstat (pairs of ``Group: names`` / ``Group: values``).

    Raises:
        ValueError: if a header and its value line do not match (a truncated or foreign file).
    """
    out: list[Sample] = []
    for group, values in parse_snmp_pairs(text):
        counters, gauges = _split_gauges(group, values)
        out.append(Sample(group, "", counters, gauges))
    return out


def _snmp6_group(name: str) -> str:
    # Ip6InReceives -> Ip6, Icmp6InMsgs -> Icmp6, UdpLite6InDatagrams -> UdpLite6
    i = name.find("6")
    return name[: i + 1] if i > 0 else "Ip6"


def parse_snmp6(text: str) -> list[Sample]:
    groups: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue
        name, value = parts
        group = _snmp6_group(name)
        groups.setdefault(group, {})[name[len(group):]] = int(value)
    return [Sample(g, "", c) for g, c in groups.items()]


# /proc/net/softnet_stat columns (net/core/net-procfs.c, softnet_seq_show), all %08x.
SOFTNET_COLUMNS = ("processed", "dropped", "time_squeeze", None, None, None, None, None,
                   "cpu_collision", "received_rps", "flow_limit_count", "backlog_len",
                   "cpu", "input_qlen", "process_qlen")


def parse_softnet(text: str) -> list[Sample]:
    out = []
    for row, line in enumerate(text.splitlines()):
        fields = line.split()
        if not fields:
            continue
        values = {}
        for name, raw in zip(SOFTNET_COLUMNS, fields, strict=False):
            if name:
                values[name] = int(raw, 16)
        cpu = values.pop("cpu", row)  # newer kernels print the cpu index; older ones don't
        counters, gauges = _split_gauges("softnet", values)
        out.append(Sample("softnet", str(cpu), counters, gauges, bits=32))
    return out


@dataclass(slots=True)
class Delta:
    """The result of one update: deltas of counters, gauges as read, and flags."""

    deltas: dict[str, int]
    gauges: dict[str, int]
    flags: list[str]
    interval_ns: int
    baseline: dict[str, int] | None = None


class CounterDeltas:
    """nstat semantics per (group, scope).

    - the first sample of a (group, scope) is a baseline: no deltas, the absolute values;
    - a counter that went down: for 32-bit counters with a drop of more than 2^31 it wrapped
      (delta = new - old + 2^32, flag ``wrap``); otherwise it was reset (delta = new, flag
      ``reset``: the count since the reset);
    - a counter that appears later starts its own baseline; gauges are never delta'd.
    """

    def __init__(self) -> None:
        self._prev: dict[tuple[str, str], tuple[dict[str, int], int]] = {}

    def update(self, sample: Sample, now_ns: int) -> Delta:
        key = (sample.group, sample.scope)
        prev = self._prev.get(key)
        self._prev[key] = (sample.counters, now_ns)
        if prev is None:
            return Delta({}, sample.gauges, ["baseline"], 0, baseline=dict(sample.counters))
        old, then = prev
        deltas: dict[str, int] = {}
        flags: set[str] = set()
        modulus = 1 << sample.bits
        for name, new in sample.counters.items():
            before = old.get(name)
            if before is None:
                continue
            d = new - before
            if d < 0:
                if sample.bits == 32 and before - new > (1 << 31):
                    d += modulus
                    flags.add("wrap")
                else:
                    d = new
                    flags.add("reset")
            if d:
                deltas[name] = d
        return Delta(deltas, sample.gauges, sorted(flags), now_ns - then)

    def forget_missing(self, seen: set[tuple[str, str]]) -> None:
        """Drop state of scopes that disappeared (an interface or qdisc was removed)."""
        for key in [k for k in self._prev if k not in seen]:
            del self._prev[key]

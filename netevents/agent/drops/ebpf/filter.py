"""The ``filter`` option: attribute expressions, compiled for the kernel and checked in Python.

    filter = "reason=NETFILTER_DROP netns=ne-b dst=10.0.0.0/8 dport=53 l4=udp"

Terms are ``attr=value[,value...]`` (or ``reason!=NAME,...``) separated by spaces; values of
one attribute are OR-ed, attributes are AND-ed. Attributes: ``reason``, ``netns`` (inode or
a /run/netns name), ``src``, ``dst``, ``host`` (either address; prefixes like 10.0.0.0/8 or
fd00::/8), ``sport``, ``dport``, ``port`` (either port), ``l4`` (tcp, udp, icmp, icmpv6,
sctp or a number), ``ifindex``.

In the kernel (struct ne_filter): reasons (a 256-bit set), up to 8 namespaces, and a single
value of each of src/dst/host/sport/dport/port/l4. What the kernel cannot hold (several
prefixes or ports, ifindex) is checked in user space by :meth:`DropFilter.match`, which always
checks every term (a drop the kernel passed is re-checked; that is cheap and keeps one truth).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from netevents.errors import ConfigError

from . import layout as L

ATTRS = ("reason", "netns", "src", "dst", "host", "sport", "dport", "port", "l4", "ifindex")
L4_NAMES = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58, "sctp": 132}
Net = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class DropFilter:
    """A parsed filter. Empty sets mean "any"."""

    text: str = ""
    reasons: set[str] = field(default_factory=set)
    not_reasons: set[str] = field(default_factory=set)
    netns: list[str] = field(default_factory=list)     # as written: inode or name
    src: list[Net] = field(default_factory=list)
    dst: list[Net] = field(default_factory=list)
    host: list[Net] = field(default_factory=list)
    sport: set[int] = field(default_factory=set)
    dport: set[int] = field(default_factory=set)
    port: set[int] = field(default_factory=set)
    l4: set[int] = field(default_factory=set)
    ifindex: set[int] = field(default_factory=set)
    netns_inodes: set[int] = field(default_factory=set)  # filled by resolve_netns()

    def __bool__(self) -> bool:
        return bool(self.text.strip())

    # -- user space ---------------------------------------------------------------------------
    def match(self, reason: str, netns: int | None, ifindex: int | None, l4: int | None,
              src: str | None, dst: str | None, sport: int | None, dport: int | None) -> bool:
        """Whether a drop with these keys passes every term."""
        if self.reasons and reason not in self.reasons:
            return False
        if reason in self.not_reasons:
            return False
        if self.netns and netns not in self.netns_inodes:
            return False
        if self.ifindex and ifindex not in self.ifindex:
            return False
        if self.l4 and l4 not in self.l4:
            return False
        if self.sport and sport not in self.sport:
            return False
        if self.dport and dport not in self.dport:
            return False
        if self.port and sport not in self.port and dport not in self.port:
            return False
        s = ipaddress.ip_address(src) if src else None
        d = ipaddress.ip_address(dst) if dst else None
        if self.src and not _in(s, self.src):
            return False
        if self.dst and not _in(d, self.dst):
            return False
        return not (self.host and not _in(s, self.host) and not _in(d, self.host))

    def resolve_netns(self, resolve) -> None:
        """Turn netns names into inodes with ``resolve(str) -> int | None``.

        Raises:
            ConfigError: a name that is neither an inode nor a known namespace.
        """
        inodes = set()
        for v in self.netns:
            inode = resolve(v)
            if inode is None:
                raise ConfigError(f"[drops] filter: netns={v}: no such namespace "
                                  f"(not an inode, not in /run/netns)")
            inodes.add(inode)
        self.netns_inodes = inodes

    # -- kernel -------------------------------------------------------------------------------
    def compile(self, reason_numbers: dict[str, int]) -> bytes:
        """struct ne_filter for the ``filter`` map (call resolve_netns first).

        Raises:
            ConfigError: a reason name this kernel does not have.
        """
        flags = 0
        reasons = [0, 0, 0, 0]
        if self.reasons or self.not_reasons:
            for name in self.reasons | self.not_reasons:
                if name not in reason_numbers:
                    raise ConfigError(f"[drops] filter: reason {name!r} is not a drop reason of "
                                      f"this kernel")
            wanted = ({reason_numbers[n] for n in self.reasons} if self.reasons
                      else set(range(256)))
            wanted -= {reason_numbers[n] for n in self.not_reasons}
            for r in wanted:
                r = min(r, 255)
                reasons[r >> 6] |= 1 << (r & 63)
            flags |= L.F_REASON
        netns = sorted(self.netns_inodes)
        if netns and len(netns) <= L.NETNS_MAX:
            flags |= L.F_NETNS
        prefixes = {}
        for name, nets, flag in (("src", self.src, L.F_SRC), ("dst", self.dst, L.F_DST),
                                 ("host", self.host, L.F_HOST)):
            if len(nets) == 1:
                flags |= flag
                net = nets[0]
                prefixes[name] = L.PREFIX.pack(net.version, net.prefixlen,
                                               net.network_address.packed.ljust(16, b"\0"))
            else:
                prefixes[name] = bytes(L.PREFIX.size)
        ports = {}
        for name, values, flag in (("sport", self.sport, L.F_SPORT), ("dport", self.dport, L.F_DPORT),
                                   ("port", self.port, L.F_PORT), ("l4", self.l4, L.F_L4)):
            ports[name] = next(iter(values)) if len(values) == 1 else 0
            if len(values) == 1:
                flags |= flag
        ns = (netns + [0] * L.NETNS_MAX)[:L.NETNS_MAX] if flags & L.F_NETNS else [0] * L.NETNS_MAX
        return L.FILTER.pack(flags, len(netns) if flags & L.F_NETNS else 0, *reasons, *ns,
                             prefixes["src"], prefixes["dst"], prefixes["host"],
                             ports["sport"], ports["dport"], ports["port"], ports["l4"])


def _in(addr, nets: list[Net]) -> bool:
    return addr is not None and any(addr.version == n.version and addr in n for n in nets)


def _port(attr: str, v: str) -> int:
    if not v.isdigit() or not 0 <= int(v) <= 65535:
        raise ConfigError(f"[drops] filter: {attr}={v}: a port is a number 0-65535")
    return int(v)


def parse_filter(text: str) -> DropFilter:
    """Parse a filter expression.

    Raises:
        ConfigError: an unknown attribute, a term without '=', or a bad value (named).
    """
    if not isinstance(text, str):
        raise ConfigError("[drops] filter must be a string like \"reason=NETFILTER_DROP dst=10.0.0.0/8\"")
    f = DropFilter(text=text)
    for term in text.split():
        negate = "!=" in term
        attr, sep, value = term.partition("!=" if negate else "=")
        attr = attr.strip().lower()
        if not sep or not attr:
            raise ConfigError(f"[drops] filter: {term!r} is not attr=value")
        if attr not in ATTRS:
            raise ConfigError(f"[drops] filter: unknown attribute {attr!r} in {term!r}; "
                              f"known: {', '.join(ATTRS)}")
        if negate and attr != "reason":
            raise ConfigError(f"[drops] filter: {term!r}: only reason supports !=")
        values = [v for v in value.split(",") if v]
        if not values:
            raise ConfigError(f"[drops] filter: {term!r} has no value")
        for v in values:
            if attr == "reason":
                name = v.upper().removeprefix("SKB_DROP_REASON_")
                if not name.replace("_", "").isalnum():
                    raise ConfigError(f"[drops] filter: reason {v!r} is not a reason name")
                (f.not_reasons if negate else f.reasons).add(name)
            elif attr == "netns":
                f.netns.append(v)
            elif attr in ("src", "dst", "host"):
                try:
                    getattr(f, attr).append(ipaddress.ip_network(v, strict=False))
                except ValueError:
                    raise ConfigError(f"[drops] filter: {attr}={v}: not an address or "
                                      f"prefix") from None
            elif attr in ("sport", "dport", "port"):
                getattr(f, attr).add(_port(attr, v))
            elif attr == "l4":
                num = L4_NAMES.get(v.lower(), int(v) if v.isdigit() else None)
                if num is None or not 0 <= num <= 255:
                    raise ConfigError(f"[drops] filter: l4={v}: use tcp, udp, icmp, icmpv6, "
                                      f"sctp or a protocol number")
                f.l4.add(num)
            elif attr == "ifindex":
                if not v.isdigit():
                    raise ConfigError(f"[drops] filter: ifindex={v}: not a number")
                f.ifindex.add(int(v))
    return f

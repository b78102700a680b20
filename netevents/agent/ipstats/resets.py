"""Per-peer TCP resets: the ``tcp:tcp_send_reset`` and ``tcp:tcp_receive_reset`` tracepoints.

sock_diag has no reset counter (a socket that was reset looks like one that closed), so the
per-peer ``resets`` (RSTs this host sent to the peer) and ``resets_in`` (RSTs it received from
the peer) come from two tracepoints, read through a private tracefs instance's text pipe (resets
are rare next to drops: text parsing is cheap enough). Their format on kernels >= 6.10
(include/trace/events/tcp.h)::

    tcp_send_reset: skbaddr=.. skaddr=.. src=10.0.0.2:5999 dest=10.0.0.1:48552 state=.. reason=NO_SOCKET
    tcp_receive_reset: family=AF_INET sport=48552 dport=5999 saddr=10.0.0.1 daddr=10.0.0.2
                       saddrv6=::ffff:10.0.0.1 daddrv6=::ffff:10.0.0.2 sock_cookie=69e4f

``tcp_send_reset`` stores the 4-tuple from the socket or, without one, the received segment's
reversed: ``src`` is always this host's side, ``dest`` the peer (IPv6 as ``[addr]:port``).
``tcp_receive_reset`` stores the socket's: ``saddr``/``sport`` are local, ``daddr`` the peer, and
``sock_cookie`` is the socket's cookie -- the same one sock_diag keys sockets on.

Namespaces: tracepoints are kernel-wide. A reset belongs to the namespace the collector reads
when its cookie is one of that namespace's sockets, else when its local address is one of the
namespace's addresses (``/proc/net/fib_trie`` LOCAL routes, ``/proc/net/if_inet6``). Loopback
addresses are in every namespace: a loopback reset without a known cookie is not attributed
(it stays in the residual against ``OutRsts``, where it is counted anyway).

    parse_line(line)            sans-IO: one trace line -> Reset or None
    local_addresses(fib, inet6) sans-IO: the namespace's addresses from the two files
    ResetTracer                 the shell: instance, pipe, per-window counts
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Container
from typing import NamedTuple

from ..kernel.procnet import ProcNetFiles, fib_trie_local, if_inet6_addresses
from ..kernel.tracefs import TraceInstance

SEND, RECEIVE = "sent", "received"
EVENTS = ("events/tcp/tcp_send_reset", "events/tcp/tcp_receive_reset")


class Reset(NamedTuple):
    kind: str           # SEND or RECEIVE
    local: str          # this host's address (text; IPv4-mapped IPv6 read as IPv4)
    peer: str
    cookie: int | None  # the socket's cookie (receive only)
    reason: str | None  # sk_rst_reason name (send only)


def _addr(text: str) -> str | None:
    try:
        a = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        return str(a.ipv4_mapped)
    return str(a)


def _host_of(endpoint: str) -> str | None:
    """``10.0.0.1:80`` or ``[fd00::1]:80`` -> the address text."""
    if endpoint.startswith("["):
        return _addr(endpoint[1:endpoint.find("]")])
    return _addr(endpoint.rpartition(":")[0])


def _fields(text: str) -> dict[str, str]:
    out = {}
    for part in text.split():
        k, sep, v = part.partition("=")
        if sep:
            out[k] = v
    return out


def parse_line(line: str) -> Reset | None:
    """One line of trace_pipe text; None for anything that is not a well-formed reset."""
    kind, f = None, {}
    for marker, name in ((" tcp_send_reset: ", SEND), (" tcp_receive_reset: ", RECEIVE)):
        i = line.find(marker)
        if i >= 0:
            kind, f = name, _fields(line[i + len(marker):])
            break
    if kind is None:
        return None
    if kind == SEND:
        local, peer = _host_of(f.get("src", "")), _host_of(f.get("dest", ""))
        if local is None or peer is None:
            return None
        return Reset(SEND, local, peer, None, f.get("reason"))
    v6 = f.get("family") == "AF_INET6"
    local = _addr(f.get("saddrv6" if v6 else "saddr", ""))
    peer = _addr(f.get("daddrv6" if v6 else "daddr", ""))
    if local is None or peer is None:
        return None
    try:
        cookie = int(f.get("sock_cookie", ""), 16)
    except ValueError:
        cookie = None
    return Reset(RECEIVE, local, peer, cookie, None)


def local_addresses(fib_trie: str, if_inet6: str) -> set[str]:
    """This namespace's own addresses: the ``/32 host LOCAL`` leaves of /proc/net/fib_trie
    (IPv4) and every address of /proc/net/if_inet6 (IPv6)."""
    out: set[str] = set()
    for a in (*fib_trie_local(fib_trie), *if_inet6_addresses(if_inet6)):
        text = _addr(str(a))
        if text:
            out.add(text)
    return out


def is_loopback(addr: str) -> bool:
    return ipaddress.ip_address(addr).is_loopback


class ResetCounter:
    """Sans-IO: resets attributed to one namespace, counted per (local, peer) until taken."""

    def __init__(self) -> None:
        self.addresses: set[str] = set()
        self.cookies: Container[int] = frozenset()
        """The namespace's socket cookies (the collector hands in its PeerAccountant)."""
        self.counts: Counter[tuple[str, str, str]] = Counter()
        """(kind, local, peer) -> resets in the window."""
        self.other_namespaces = 0
        """Resets seen on addresses this namespace does not hold (another namespace's)."""
        self.unattributed_loopback = 0
        self.bad_lines = 0
        self._partial = ""

    def feed(self, data: str) -> None:
        lines = (self._partial + data).split("\n")
        self._partial = lines.pop()
        for line in lines:
            if "_reset: " not in line:
                continue
            r = parse_line(line)
            if r is None:
                self.bad_lines += 1
                continue
            self.add(r)

    def add(self, r: Reset) -> None:
        if r.cookie is not None and r.cookie in self.cookies:
            self.counts[(r.kind, r.local, r.peer)] += 1
        elif is_loopback(r.local):
            self.unattributed_loopback += 1
        elif r.local in self.addresses:
            self.counts[(r.kind, r.local, r.peer)] += 1
        else:
            self.other_namespaces += 1

    def take(self) -> Counter[tuple[str, str, str]]:
        out, self.counts = self.counts, Counter()
        return out


class ResetTracer:
    """The shell: a tracefs instance with both reset tracepoints and the namespace's address
    files, opened inside ``netns``.

    Raises (constructor):
        CapabilityError: no tracefs, no permission, no such tracepoint (kernel < 4.15 for the
            send side, < 4.19 for receive), or the namespace's /proc/net files cannot be opened.
    """

    def __init__(self, netns: str | None = None, buffer_kb: int = 512) -> None:
        # No IPv6 in this kernel: no if_inet6, no IPv6 addresses.
        self._files = ProcNetFiles(("fib_trie", "if_inet6"), netns, optional=("if_inet6",))
        self.counter = ResetCounter()
        try:
            self.instance = TraceInstance.create(events=EVENTS, buffer_kb=buffer_kb)
            self.fd = self.instance.open_pipe()
        except BaseException:
            self._files.close()
            raise
        self.refresh_addresses()

    def refresh_addresses(self) -> None:
        """Re-read the namespace's addresses (they change: DHCP, containers, failover)."""
        fib, inet6 = self._files.read()
        self.counter.addresses = local_addresses(fib, inet6)

    def drain(self) -> None:
        """Read what the pipe holds (non-blocking) into the counter."""
        while (data := self.instance.read()) is not None and data:
            self.counter.feed(data.decode(errors="replace"))

    def overruns(self) -> int:
        """Reset records the instance's ring lost since the last call."""
        return self.instance.overrun_delta()

    def close(self) -> None:
        self.instance.remove()
        self._files.close()

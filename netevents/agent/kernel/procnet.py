"""/proc/net files: opened inside a network namespace, and the formats more than one reader uses.

    PROC_NET                   the calling thread's /proc/net (``/proc/thread-self/net``)
    ProcNetFiles               files opened once inside a namespace, re-read by descriptor
    parse_snmp_pairs(text)     /proc/net/snmp and /proc/net/netstat: ``Group:`` header and value
                               line pairs -> (group, {name: value})
    fib_trie_local(text)       /proc/net/fib_trie: the ``/32 host LOCAL`` leaves (IPv4 addresses)
    if_inet6_addresses(text)   /proc/net/if_inet6: the namespace's IPv6 addresses

A /proc/net seq file stays bound to the namespace it was opened in, so re-reading the same
descriptor keeps reading that namespace whatever the reading thread's namespace is.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Collection, Sequence

from netevents.errors import CapabilityError

from .netns import in_netns

# /proc/net is /proc/self/net, and "self" is the thread group leader: a thread that entered
# another namespace must open /proc/thread-self/net to see that namespace's files.
PROC_NET = "/proc/thread-self/net"


class ProcNetFiles:
    """Descriptors of ``names`` under /proc/net, opened in ``netns`` (None: the caller's).

    A name in ``optional`` that the kernel does not have (no IPv6: no if_inet6) reads as "".

    Raises (constructor):
        CapabilityError: a file cannot be opened there (or the namespace cannot be entered).
    """

    def __init__(self, names: Sequence[str], netns: str | None = None, *,
                 optional: Collection[str] = ()) -> None:
        def open_all() -> list[int]:
            fds: list[int] = []
            try:
                for name in names:
                    try:
                        fds.append(os.open(f"{PROC_NET}/{name}", os.O_RDONLY | os.O_CLOEXEC))
                    except FileNotFoundError:
                        if name not in optional:
                            raise
                        fds.append(-1)
            except OSError as exc:
                for fd in fds:
                    if fd >= 0:
                        os.close(fd)
                raise CapabilityError("procfs", f"cannot open {exc.filename}: {exc.strerror}") from exc
            return fds

        self.names = tuple(names)
        self._fds = in_netns(netns, open_all)

    def read(self) -> list[str]:
        """The current text of every file, in the order of ``names``.

        Raises:
            OSError: if a read fails.
        """
        out = []
        for fd in self._fds:
            if fd < 0:
                out.append("")
                continue
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            out.append(b"".join(chunks).decode(errors="replace"))
        return out

    def close(self) -> None:
        for fd in self._fds:
            if fd >= 0:
                os.close(fd)
        self._fds = []


def parse_snmp_pairs(text: str) -> list[tuple[str, dict[str, int]]]:
    """/proc/net/snmp or /proc/net/netstat (net/ipv4/proc.c): each group is a header line
    ``Group: name name ...`` followed by its value line ``Group: 1 2 ...``.

    Raises:
        ValueError: if a header and its value line do not match (a truncated or foreign file).
    """
    lines = [ln for ln in text.splitlines() if ln.strip()]
    out: list[tuple[str, dict[str, int]]] = []
    for i in range(0, len(lines) - 1, 2):
        hname, _, hrest = lines[i].partition(":")
        vname, _, vrest = lines[i + 1].partition(":")
        if hname != vname:
            raise ValueError(f"header {hname!r} is followed by values of {vname!r}")
        names, values = hrest.split(), vrest.split()
        if len(names) != len(values):
            raise ValueError(f"{hname}: {len(names)} names but {len(values)} values")
        out.append((hname, dict(zip(names, map(int, values), strict=True))))
    return out


def fib_trie_local(text: str) -> list[ipaddress.IPv4Address]:
    """The ``/32 host LOCAL`` leaves of /proc/net/fib_trie (net/ipv4/fib_trie.c,
    fib_trie_seq_show): the IPv4 addresses the namespace holds. A leaf is a ``|--`` or ``+--``
    line; its routes follow on lines of their own."""
    out: list[ipaddress.IPv4Address] = []
    last: str | None = None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("|--") or s.startswith("+--"):
            last = s[3:].split()[0] if len(s) > 3 else None
        elif "host LOCAL" in s and last:
            try:
                out.append(ipaddress.IPv4Address(last))
            except ValueError:
                continue
    return out


def if_inet6_addresses(text: str) -> list[ipaddress.IPv6Address]:
    """The addresses of /proc/net/if_inet6 (net/ipv6/addrconf.c, if6_seq_show): one per line,
    32 hex digits first."""
    out: list[ipaddress.IPv6Address] = []
    for line in text.splitlines():
        fields = line.split()
        if fields and len(fields[0]) == 32:
            try:
                out.append(ipaddress.IPv6Address(bytes.fromhex(fields[0])))
            except ValueError:
                continue
    return out

"""The namespace's host-wide TCP MIB: /proc/net/snmp and /proc/net/netstat, for the residual.

Parsing is the netstat source's (``agents/netstat/parse.py``: pairs of ``Group:`` header and
value lines); this module only adds the namespace-bound descriptors and the deltas the
residual needs.

The files are opened once, inside the collector's network namespace: a /proc/net seq file
stays bound to the namespace it was opened in, so re-reading the same descriptor keeps
reading that namespace's counters whatever the reading thread's namespace is.
"""

from __future__ import annotations

import os

from netevents.errors import CapabilityError

from ..kernel.netns import in_netns
from ..netstat.parse import parse_snmp

# /proc/net is /proc/self/net, and "self" is the thread group leader: a thread that entered
# another namespace must open /proc/thread-self/net to see that namespace's counters.
MIB_FILES = ("/proc/thread-self/net/snmp", "/proc/thread-self/net/netstat")


def parse_mib(text: str) -> dict[str, dict[str, int]]:
    """/proc/net/snmp or /proc/net/netstat text -> {group: {counter: value}} (gauges included).

    Raises:
        ValueError: if a header and its value line do not pair up (from the netstat parser).
    """
    out: dict[str, dict[str, int]] = {}
    for sample in parse_snmp(text):
        out[sample.group] = {**sample.counters, **sample.gauges}
    return out


def mib_deltas(old: dict[str, dict[str, int]], new: dict[str, dict[str, int]],
               groups: tuple[str, ...] = ("Tcp", "TcpExt")) -> dict[str, dict[str, int]]:
    """Counter increases per group (counters missing on either side are left out)."""
    out: dict[str, dict[str, int]] = {}
    for g in groups:
        a, b = old.get(g, {}), new.get(g, {})
        out[g] = {k: b[k] - a[k] for k in b.keys() & a.keys()}
    return out


class MibReader:
    """Re-readable descriptors of the MIB files of one network namespace.

    Raises (constructor):
        CapabilityError: if the files cannot be opened there.
    """

    def __init__(self, netns: str | None = None) -> None:
        def open_all() -> list[int]:
            fds = []
            try:
                for path in MIB_FILES:
                    fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
            except OSError as exc:
                for fd in fds:
                    os.close(fd)
                raise CapabilityError("procfs", f"cannot open {exc.filename}: {exc.strerror}") from exc
            return fds

        self._fds = in_netns(netns, open_all)

    def read(self) -> dict[str, dict[str, int]]:
        """Current counters of both files merged.

        Raises:
            ValueError: if a file does not parse.
        """
        out: dict[str, dict[str, int]] = {}
        for fd in self._fds:
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            out.update(parse_mib(b"".join(chunks).decode("ascii", "replace")))
        return out

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

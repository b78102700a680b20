"""The namespace's host-wide TCP MIB: /proc/net/snmp and /proc/net/netstat, for the residual.

A minimal private reader (the netstat source's parsers in ``agents/netstat/parse.py`` were not
on main yet when this was written; switch to them when they are). Both files are pairs of
lines, a header naming the counters and a line of values, each starting with ``Group:``.

The files are opened once, inside the collector's network namespace: a /proc/net seq file
stays bound to the namespace it was opened in, so re-reading the same descriptor keeps
reading that namespace's counters whatever the reading thread's namespace is.
"""

from __future__ import annotations

import os

from netevents.errors import CapabilityError

from .sockdiag import in_netns

# /proc/net is /proc/self/net, and "self" is the thread group leader: a thread that entered
# another namespace must open /proc/thread-self/net to see that namespace's counters.
MIB_FILES = ("/proc/thread-self/net/snmp", "/proc/thread-self/net/netstat")


def parse_mib(text: str) -> dict[str, dict[str, int]]:
    """``Group: names`` / ``Group: values`` line pairs -> {group: {counter: value}}.

    Raises:
        ValueError: if a header has no matching value line or the counts differ (names the group).
    """
    out: dict[str, dict[str, int]] = {}
    lines = text.splitlines()
    for i in range(0, len(lines) - 1, 2):
        head, vals = lines[i].split(), lines[i + 1].split()
        if not head or not vals or head[0] != vals[0] or not head[0].endswith(":"):
            raise ValueError(f"MIB header/value lines do not pair up at line {i + 1}: {lines[i][:40]!r}")
        if len(head) != len(vals):
            raise ValueError(f"MIB group {head[0]} has {len(head) - 1} names but {len(vals) - 1} values")
        out[head[0][:-1]] = {k: int(v) for k, v in zip(head[1:], vals[1:], strict=True)}
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

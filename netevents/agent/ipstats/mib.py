"""The namespace's host-wide TCP MIB: /proc/net/snmp and /proc/net/netstat, for the residual.

Reading and parsing are the kernel plumbing's (``netevents/agent/kernel/procnet.py``: descriptors opened
once inside the collector's network namespace, pairs of ``Group:`` header and value lines);
this module only adds the deltas the residual needs.
"""

from __future__ import annotations

from ..kernel.procnet import ProcNetFiles, parse_snmp_pairs

MIB_FILES = ("snmp", "netstat")


def parse_mib(text: str) -> dict[str, dict[str, int]]:
    """/proc/net/snmp or /proc/net/netstat text -> {group: {counter: value}} (gauges included).

    Raises:
        ValueError: if a header and its value line do not pair up.
    """
    return dict(parse_snmp_pairs(text))


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
        self._files = ProcNetFiles(MIB_FILES, netns)

    def read(self) -> dict[str, dict[str, int]]:
        """Current counters of both files merged.

        Raises:
            ValueError: if a file does not parse.
        """
        out: dict[str, dict[str, int]] = {}
        for text in self._files.read():
            out.update(parse_mib(text))
        return out

    def close(self) -> None:
        self._files.close()

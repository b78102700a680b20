"""Network namespace inode -> a name a person recognises (sans-IO table + thin scanners).

Names come from ``/run/netns/<name>`` (``ip netns add``: the bind mount's st_ino is the
namespace inode) first, then from processes: ``/proc/<pid>/ns/net`` gives a hint
``comm[pid]`` (plus the container id when the process's cgroup names one). The agent's own
namespace is ``root`` when it is PID 1's. :class:`NetnsNames` is the table; :func:`scan`
reads the files (call it from a thread: /proc can be large).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_CONTAINER = re.compile(r"([0-9a-f]{64})")


class NetnsNames:
    """inode -> name; named namespaces win over process hints."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}

    def update(self, named: dict[int, str], hints: dict[int, str], root: int | None) -> None:
        names = dict(hints)
        names.update(named)
        if root is not None:
            names.setdefault(root, "root")
        self.names = names

    def name(self, inode: int | None) -> str | None:
        return self.names.get(inode) if inode else None

    def inode_of(self, name: str) -> int | None:
        for inode, n in self.names.items():
            if n == name:
                return inode
        return None


def named_namespaces(run_netns: Path = Path("/run/netns")) -> dict[int, str]:
    """{inode: name} for every entry of /run/netns (unreadable entries are skipped)."""
    out: dict[int, str] = {}
    try:
        entries = list(os.scandir(run_netns))
    except OSError:
        return out
    for e in entries:
        try:
            out[e.stat().st_ino] = e.name
        except OSError:
            continue
    return out


def process_hints(proc: Path = Path("/proc")) -> dict[int, str]:
    """{inode: 'comm[pid]' or 'comm[pid] container <id12>'} of the first process seen per netns."""
    out: dict[int, str] = {}
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return out
    for pid in sorted(pids, key=int):
        try:
            inode = os.stat(f"{proc}/{pid}/ns/net").st_ino
        except OSError:
            continue
        if inode in out:
            continue
        try:
            comm = Path(f"{proc}/{pid}/comm").read_text().strip()
        except OSError:
            comm = "?"
        hint = f"{comm}[{pid}]"
        try:
            m = _CONTAINER.search(Path(f"{proc}/{pid}/cgroup").read_text())
            if m:
                hint += f" container {m.group(1)[:12]}"
        except OSError:
            pass
        out[inode] = hint
    return out


def root_inode(proc: Path = Path("/proc")) -> int | None:
    try:
        return os.stat(f"{proc}/1/ns/net").st_ino
    except OSError:
        return None


def scan(table: NetnsNames) -> None:
    """Refresh ``table`` from /run/netns and /proc (blocking: run it in a thread)."""
    table.update(named_namespaces(), process_hints(), root_inode())


def resolve(name_or_inode: str) -> int | None:
    """A filter's netns value: an inode number, or a /run/netns name (None if unknown)."""
    if name_or_inode.isdigit():
        return int(name_or_inode)
    try:
        return os.stat(Path("/run/netns") / name_or_inode).st_ino
    except OSError:
        return None

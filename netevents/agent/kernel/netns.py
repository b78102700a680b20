"""Network namespaces: how an agent reads a namespace other than its own, and what to call one.

The kernel binds a socket, and a /proc/net seq file, to the namespace its thread was in when it
was made, so an agent never moves whole: one thread enters the namespace (setns(2); os.setns is
Python 3.12+), makes what it needs, and either leaves again or ends.

    netns_path(name)     a name under /run/netns (``ip netns``) or a path, as a path
    enter(name)          move the calling thread in (for a reader thread that stays there)
    entered(name)        a block run with the calling thread inside, then back home
    in_netns(name, fn)   fn() in a fresh thread inside; its result (or exception) comes back

A namespace is known to the kernel by the inode of its ``ns/net`` file. Names come from
``/run/netns/<name>`` (``ip netns add``: the bind mount's st_ino is the namespace inode) first,
then from processes: ``/proc/<pid>/ns/net`` gives a hint ``comm[pid]`` (plus the container id
when the process's cgroup names one). The agent's own namespace is ``root`` when it is PID 1's.

    NetnsNames           sans-IO table inode -> name; named namespaces win over process hints
    scan(table)          refresh it from /run/netns and /proc (blocking: call it from a thread)
    resolve(text)        a filter's netns value (an inode number or a /run/netns name) -> inode
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from netevents.errors import CapabilityError

CLONE_NEWNET = 0x40000000  # include/uapi/linux/sched.h
RUN_NETNS = Path("/run/netns")  # where `ip netns add` bind-mounts named namespaces
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def netns_path(netns: str) -> str:
    """A namespace name (``ip netns``) or a path (``/proc/PID/ns/net``) as a path."""
    return netns if "/" in netns else f"{RUN_NETNS}/{netns}"


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise CapabilityError("CAP_SYS_ADMIN", f"cannot enter network namespace {what}: "
                                               f"{os.strerror(ctypes.get_errno())}")


def enter(netns: str) -> None:
    """Move the calling thread into network namespace ``netns``.

    Raises:
        CapabilityError: if the namespace cannot be opened (no such name) or entered (not root).
    """
    path = netns_path(netns)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise CapabilityError("netns", f"cannot open network namespace {path}: {exc.strerror}") from None
    try:
        _setns(fd, path)
    finally:
        os.close(fd)


@contextlib.contextmanager
def entered(netns: str | None) -> Iterator[None]:
    """Run the block with the calling thread in ``netns`` (what it makes there stays there),
    then bring the thread back to its own namespace.

    Raises:
        CapabilityError: as :func:`enter`.
    """
    if not netns:
        yield
        return
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter(netns)
        try:
            yield
        finally:
            _setns(home, "of this thread (going back)")
    finally:
        os.close(home)


def in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """Call ``fn`` inside network namespace ``netns`` and return its result.

    Runs ``fn`` in a fresh thread that enters the namespace and then ends, so the caller's
    threads (and the event loop) never change namespace.

    Raises:
        CapabilityError: as :func:`enter`; and whatever ``fn`` raises.
    """
    if not netns:
        return fn()
    result: list = []

    def run() -> None:
        try:
            enter(netns)
            result.append(fn())
        except BaseException as exc:  # handed to the caller's thread below
            result.append(exc)

    t = threading.Thread(target=run, name=f"netns-enter:{netns}", daemon=True)
    t.start()
    t.join()
    value = result[0]
    if isinstance(value, BaseException):
        raise value
    return value


# -- names --------------------------------------------------------------------------------------

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


def named_namespaces(run_netns: Path = RUN_NETNS) -> dict[int, str]:
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
        return os.stat(RUN_NETNS / name_or_inode).st_ino
    except OSError:
        return None

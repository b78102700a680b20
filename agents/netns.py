"""Network namespaces: how an agent reads a namespace other than its own.

The kernel binds a socket, and a /proc/net seq file, to the namespace its thread was in when it
was made, so an agent never moves whole: one thread enters the namespace (setns(2); os.setns is
Python 3.12+), makes what it needs, and either leaves again or ends.

    netns_path(name)     a name under /run/netns (``ip netns``) or a path, as a path
    enter(name)          move the calling thread in (for a reader thread that stays there)
    entered(name)        a block run with the calling thread inside, then back home
    in_netns(name, fn)   fn() in a fresh thread inside; its result (or exception) comes back
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from netevents.errors import CapabilityError

CLONE_NEWNET = 0x40000000  # include/uapi/linux/sched.h
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def netns_path(netns: str) -> str:
    """A namespace name (``ip netns``) or a path (``/proc/PID/ns/net``) as a path."""
    return netns if "/" in netns else f"/run/netns/{netns}"


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

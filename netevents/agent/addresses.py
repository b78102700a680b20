"""The host's own addresses, per namespace it reads, published in its ``status``.

A correlator can only say "A's retransmits toward 10.0.0.2 are B's drops" when it knows
10.0.0.2 is B's. Every agent therefore says which addresses are its own, at every level: for
each namespace its sources read (``netns`` of a source; the agent's own namespace for a source
without one), the scope global/site addresses from an rtnetlink dump (no loopback, no
link-local: every namespace has those). ``RTMGRP_IPV4_IFADDR`` / ``RTMGRP_IPV6_IFADDR``
notifications trigger a new dump, and a changed table goes out at once in a status batch
(``status.addresses``, ``status.netns`` with each namespace's inode, which kernel-wide drop
events carry); a ``refresh`` re-dump covers a lost notification too.

Own losses (in status): ``addresses.overrun`` -- notification overruns (ENOBUFS; the table is
re-dumped, so nothing stays wrong); ``addresses.failed_dump`` -- dumps that failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterable
from typing import Any

from netevents.errors import NetlinkError

from .kernel.ifaddr import AddressSocket, netns_inode
from .kernel.netns import RUN_NETNS, root_inode

log = logging.getLogger("netevents.agent.addresses")

LOSS_PLACES = ("addresses.overrun", "addresses.failed_dump")


def namespace_key(netns: str | None) -> str:
    """How a namespace is named in ``status.addresses``: its /run/netns name (the name
    kernel-wide drop events give it), else ``root`` (PID 1's) or ``self``."""
    if netns:
        path = netns if "/" in netns else str(RUN_NETNS / netns)
        return os.path.basename(path) if path.startswith(str(RUN_NETNS) + "/") else path
    return "root" if netns_inode(None) == root_inode() else "self"


def namespaces_of(sections: Iterable[dict[str, Any]]) -> list[str | None]:
    """The namespaces an agent's sources read: each section's ``netns``; None (the agent's own)
    for a section without one. In order, once each."""
    out: list[str | None] = []
    for section in sections:
        ns = section.get("netns") if isinstance(section, dict) else None
        ns = ns if isinstance(ns, str) and ns else None
        if ns not in out:
            out.append(ns)
    return out or [None]


class OwnAddresses:
    """Collector: the host's addresses per namespace, handed to the runner (``sink.addresses``).

    Args:
        namespaces: the namespaces to read (None: the agent's own).
        refresh: seconds between re-dumps without a notification.
    """

    name = "addresses"

    def __init__(self, namespaces: list[str | None], refresh: float = 30.0) -> None:
        self.namespaces = namespaces
        self.refresh = refresh
        self.table: dict[str, list[str]] = {}
        self.inodes: dict[str, int] = {}
        self.dumps = 0

    async def run(self, sink: Any) -> None:
        """Dump, publish, and re-dump on every change until cancelled.

        Raises:
            CapabilityError: when no namespace can be read.
        """
        for place in LOSS_PLACES:
            sink.declare_loss(place)
        socks: dict[str | None, tuple[AddressSocket, AddressSocket]] = {}
        changed = asyncio.Event()
        loop = asyncio.get_running_loop()
        try:
            for ns in self.namespaces:
                dump = await asyncio.to_thread(AddressSocket, ns)
                try:
                    notify = await asyncio.to_thread(AddressSocket, ns, notify=True)
                except BaseException:
                    dump.close()
                    raise
                socks[ns] = (dump, notify)

                def on_notify(n: AddressSocket = notify) -> None:
                    any_change, overruns = n.changed()
                    if overruns:
                        sink.lost("addresses.overrun", overruns)
                    if any_change:
                        changed.set()

                loop.add_reader(notify.fileno(), on_notify)
            while True:
                changed.clear()
                await self._dump_all(sink, socks)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.refresh):
                        await changed.wait()
                await asyncio.sleep(0.05)  # a burst of changes (ip addr flush) is one dump
        finally:
            for dump, notify in socks.values():
                loop.remove_reader(notify.fileno())
                notify.close()
                dump.close()

    async def _dump_all(self, sink: Any, socks: dict) -> None:
        table: dict[str, list[str]] = {}
        inodes: dict[str, int] = {}
        for ns, (dump, _notify) in socks.items():
            key = namespace_key(ns)
            try:
                table[key] = await asyncio.to_thread(dump.dump)
            except (OSError, NetlinkError) as exc:
                sink.lost("addresses.failed_dump", 1)
                log.warning("addresses: dump of %s failed: %s", key, exc)
                table[key] = self.table.get(key, [])
            inode = netns_inode(ns)
            if inode is not None:
                inodes[key] = inode
        self.dumps += 1
        if table != self.table or inodes != self.inodes:
            self.table, self.inodes = table, inodes
            sink.addresses(table, inodes)

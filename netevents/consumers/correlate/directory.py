"""Where hosts are: their addresses, the machine (boot id) each runs on, the network namespace
inodes their counters come from, and the batches of theirs the subscription missed.

Drop attribution lives here because it is a question of where: counter-derived drops
(``source`` counter) are read from one namespace's ``/proc/net`` and belong to the host that
published them. Kernel-wide sources (tracepoint, NET_DM, eBPF, dwdump) see every namespace of a
machine: a drop is given to a namespace host only when the event says which (``netns_name``
equal to a host token, or a ``netns`` inode that host's own counter events carry); otherwise it
is *machine-wide*, keyed by the boot id of the machine (several agents on one machine report the
same drop: they are not added up).
"""

from __future__ import annotations

import ipaddress
from collections import Counter, OrderedDict
from collections.abc import Collection, Mapping
from typing import Any

from ...codec import Batch
from ...wire import EventRow

_read_place = EventRow.reader("source", "netns", "netns_name", "count")
"""The fields of a drop event that say where it belongs (:meth:`HostDirectory.attribute`)."""
ABSENT = EventRow.ABSENT

KERNEL_WIDE = frozenset({"tracepoint", "netdm", "ebpf", "dwdump"})

NS = 1_000_000_000
DROP_LAG_NS = 2 * NS
"""How long after a drop an agent's status can be sure to count the batch holding it: the
drop sources flush every second (``[drops] interval``), the runner within 0.25 s."""


class HostDirectory:
    """Address -> host, host -> boot id, netns inode -> host; batches missed per (host, kind).

    Bounded by ``max_keys`` per map; evictions counted in ``evicted`` (shared with the other
    pieces of a :class:`~.correlator.Correlator`).
    """

    def __init__(self, *, max_keys: int, evicted: Counter[str],
                 namespaces: Collection[str] | None = None) -> None:
        self.max_keys = max_keys
        self.evicted = evicted
        self.namespaces = frozenset(namespaces) if namespaces is not None else None
        """Namespaces besides the fleet's hosts whose drops count (a router or bridge on the
        path); None: every namespace a kernel-wide source names."""
        self.foreign: Counter[str] = Counter()
        """Drops set aside per namespace that is neither a host nor in ``namespaces``."""
        self.addr_host: OrderedDict[str, str] = OrderedDict()
        self.host_boot: dict[str, str] = {}
        self.boot_hosts: dict[str, set[str]] = {}
        self.netns_host: dict[int, str] = {}
        self.missed: Counter[tuple[str, str]] = Counter()
        """Batches missed per (host, kind), from the subscription's sequence tracker."""
        self.claimed: dict[str, str] = {}
        """Address -> the host whose status says it is its own (outranks what frames and
        ipstat ``local`` suggest)."""
        self.host_addrs: dict[str, frozenset[str]] = {}
        """Host -> the addresses its latest status listed."""
        self.machine_netns: dict[tuple[str, int | str], str] = {}
        """(machine, netns inode or name) -> the host whose status owns that namespace."""
        self.bad_input: Counter[str] = Counter()
        """Values of the inputs that could not be used, by what they were (never a crash)."""
        self.progress: dict[tuple[str, str], int] = {}
        """(host, kind) -> the latest window end received."""
        self.settled: dict[tuple[str, str], int] = {}
        """(host, kind) -> a time up to which every batch of that kind the host had made has
        been received (its status counted them all)."""
        self.last_seq: dict[tuple[str, str, str], int] = {}
        self.drop_publishers: set[str] = set()
        """Hosts that publish drop events (or whose status says they run a drop source)."""
        self._host_addr_index: dict[str, dict[str, None]] = {}
        """Host -> its addresses in :attr:`addr_host` (in that order): :meth:`addresses_of`."""
        self._machine_names: dict[str, str] = {}
        """Boot id -> its ``machine:<prefix>`` (:meth:`machine_of`; bounded, rebuilt)."""
        self._only_host_how: dict[str, str] = {}
        """Source -> the attribution text of a kernel-wide drop on a machine of one host."""

    def see(self, batch: Batch) -> None:
        """Learn the machine a batch's host runs on, the batches of it that were missed, how
        far its batches are in, and (status) its own addresses."""
        host, kind, t1 = batch.host, batch.kind, batch.t1
        known = self.host_boot.get(host)
        # A batch without a boot id (older agents, consumers' own batches) keeps what is known.
        boot = str(batch.fields.get("boot") or known or host)
        if known != boot:
            if known is None and len(self.host_boot) >= self.max_keys:
                self.evicted["hosts"] += 1
            else:
                if known is not None:
                    self.boot_hosts.get(known, set()).discard(host)
                self.host_boot[host] = boot
                self.boot_hosts.setdefault(boot, set()).add(host)
        if batch.missed:
            self.missed[(host, kind)] += batch.missed
        key = (host, kind)
        progress = self.progress
        if t1 > progress.get(key, 0):
            if key in progress or len(progress) < self.max_keys:
                progress[key] = t1
        rkey = (host, batch.run, kind)
        last_seq = self.last_seq
        seq = last_seq.get(rkey)
        if seq is None:
            if len(last_seq) < self.max_keys:
                last_seq[rkey] = batch.seq
        elif batch.seq > seq:
            last_seq[rkey] = batch.seq
        if kind == "drop":
            if host not in self.drop_publishers and len(self.drop_publishers) < self.max_keys:
                self.drop_publishers.add(host)
        elif kind == "status":
            for e in batch.events:
                if isinstance(e, Mapping):
                    self.learn_status(batch, e)

    def learn_status(self, batch: Batch, e: dict[str, Any]) -> None:
        """A status event: the host's own addresses (which replace what it said before) and
        namespaces; and how far its batches are in (``published`` against what arrived)."""
        host = batch.host
        published = e.get("published")
        if isinstance(published, dict):
            sources = e.get("sources") if isinstance(e.get("sources"), dict) else {}
            kinds = dict(published)
            if ("drop" in published or any(str(n).startswith("drops") for n in sources)) \
                    and len(self.drop_publishers) < self.max_keys:
                self.drop_publishers.add(host)
                kinds.setdefault("drop", 0)  # a drop source that has dropped nothing yet
            for kind, n in kinds.items():
                if isinstance(n, int) and self.last_seq.get((host, batch.run, kind), 0) >= n \
                        and ((host, kind) in self.settled or len(self.settled) < self.max_keys):
                    self.settled[(host, kind)] = max(self.settled.get((host, kind), 0), batch.t1)
        addresses = e.get("addresses")
        if host not in self.host_addrs and len(self.host_addrs) >= self.max_keys:
            self.evicted["hosts"] += 1
            addresses = None
        if isinstance(addresses, dict):
            mine: set[str] = set()
            for _ns, addrs in addresses.items():
                for text in addrs if isinstance(addrs, list) else ():
                    try:
                        mine.add(str(ipaddress.ip_address(text)))
                    except (TypeError, ValueError):
                        self.bad_input["status.addresses"] += 1
            for gone in self.host_addrs.get(host, frozenset()) - mine:
                if self.claimed.get(gone) == host:
                    del self.claimed[gone]
                    if self.addr_host.get(gone) == host:
                        del self.addr_host[gone]
                        self._unindex(gone, host)
            self.host_addrs[host] = frozenset(mine)
            for ad in sorted(mine):
                if ad not in self.claimed and len(self.claimed) >= self.max_keys:
                    self.evicted["addresses"] += 1
                    continue
                self.claimed[ad] = host
                self.learn_addr(ad, host)
            machine = self.machine_key(host)
            for ns in addresses:
                if ns not in ("root", "self"):
                    self._own_netns((machine, str(ns)), host)
        netns = e.get("netns")
        if isinstance(netns, dict):
            machine = self.machine_key(host)
            for inode in netns.values():
                if isinstance(inode, int):
                    self._own_netns((machine, inode), host)

    def _own_netns(self, key: tuple[str, int | str], host: str) -> None:
        if key not in self.machine_netns and len(self.machine_netns) >= self.max_keys:
            self.evicted["netns"] += 1
            return
        self.machine_netns[key] = host

    def drops_known_until(self, host: str) -> int | None:
        """The time up to which the drops of ``host``'s machine are all in: the least, over the
        hosts of its machine that publish drops, of the latest drop window received or the
        status that counted every drop batch (less :data:`DROP_LAG_NS`). None when no host of
        the machine publishes drops (nothing will come)."""
        machine = self.machine_key(host)
        hosts = [h for h in self.boot_hosts.get(machine, {host}) | {host}
                 if h in self.drop_publishers]
        if not hosts:
            return None
        return min(max(self.progress.get((h, "drop"), 0),
                       self.settled.get((h, "drop"), DROP_LAG_NS) - DROP_LAG_NS) for h in hosts)

    def learn_addr(self, addr: str | None, host: str) -> None:
        """``addr`` seen as ``host``'s (a frame, an ipstat ``local``); an address another
        host's status claims stays that host's."""
        if not addr or self.addr_host.get(addr) == host:
            return
        owner = self.claimed.get(addr)
        if owner is not None and owner != host:
            return
        was = self.addr_host.get(addr)
        if was is not None:
            self.addr_host.move_to_end(addr)
            self._unindex(addr, was)
        elif len(self.addr_host) >= self.max_keys:
            gone, gone_host = self.addr_host.popitem(last=False)
            self._unindex(gone, gone_host)
            self.evicted["addresses"] += 1
        self.addr_host[addr] = host
        mine = self._host_addr_index.get(host)
        if mine is None:
            mine = self._host_addr_index[host] = {}
        mine[addr] = None

    def host_at(self, addr: str | None) -> str | None:
        """The host that has address ``addr``, if one was seen with it."""
        return self.addr_host.get(addr) if addr else None

    def addresses_of(self, host: str) -> list[str]:
        """The addresses ``host`` was seen with, in the order of :attr:`addr_host` (an index
        kept along with it: a scan of every address cost each peer publication ~1000 steps)."""
        return list(self._host_addr_index.get(host, ()))

    def _unindex(self, addr: str, host: str) -> None:
        mine = self._host_addr_index.get(host)
        if mine is not None:
            mine.pop(addr, None)
            if not mine:
                del self._host_addr_index[host]

    def machine_key(self, host: str) -> str:
        """The boot id of ``host``'s machine (the host itself while it is not known)."""
        return self.host_boot.get(host) or host

    def machine_of(self, host: str) -> str:
        """The machine-wide entity of ``host``'s machine: ``machine:<boot id prefix>``."""
        key = self.host_boot.get(host) or host
        name = self._machine_names.get(key)
        if name is None:
            if len(self._machine_names) >= self.max_keys:
                self._machine_names.clear()
            name = self._machine_names[key] = f"machine:{key[:8]}"
        return name

    def missing_for(self, hosts: list[str] | set[str], kinds: list[str]) -> dict[str, int]:
        """``{"host/kind": batches missed}`` for every host and kind an incident used."""
        return {f"{h}/{k}": self.missed[(h, k)] for h in sorted(hosts) for k in kinds}

    def attribute(self, batch: Batch, event: dict) -> tuple[str | None, str]:
        """(entity, how) a drop event belongs to: a host token, ``machine:<boot>``, or
        ``netns:<name>`` for a namespace that is no host of the fleet; entity None for a
        namespace outside ``namespaces`` (its drops are counted in :attr:`foreign`)."""
        return self.attribute_of(batch.host, *_read_place(event))

    def attribute_of(self, host: str, source: Any, netns: Any, name: Any,
                     count: Any) -> tuple[str | None, str]:
        """:meth:`attribute` of a drop event of ``host`` given its ``source``, ``netns``,
        ``netns_name`` and ``count`` (each None or ABSENT when it has none)."""
        if source is ABSENT:
            source = None
        if source not in KERNEL_WIDE:
            if isinstance(netns, int) and netns not in self.netns_host:
                if len(self.netns_host) >= self.max_keys:
                    self.netns_host.pop(next(iter(self.netns_host)))
                    self.evicted["netns"] += 1
                self.netns_host[netns] = host
            return host, f"{source}: counters of {host}'s own namespace"
        if isinstance(name, str) and name in self.host_boot:
            return name, f"{source}: netns_name {name}"
        if netns is ABSENT:
            netns = None
        if name is ABSENT:
            name = None
        machine = self.machine_key(host)
        if self.machine_netns and (netns is not None or name is not None):
            for key in ((machine, netns), (machine, name)):
                owner = self.machine_netns.get(key) if isinstance(key[1], (int, str)) else None
                if owner is not None:
                    return owner, f"{source}: netns {key[1]} is {owner}'s (its status)"
        if netns is None and name is None:
            sharing = self.boot_hosts.get(machine, ())
            if len(sharing) <= 1:   # the common case, without a text made per event
                how = self._only_host_how.get(source)
                if how is None:
                    how = self._only_host_how[source] = (
                        f"{source}: kernel-wide, the only host seen on its machine")
                return host, how
        if isinstance(netns, int) and netns in self.netns_host:
            return self.netns_host[netns], f"{source}: netns inode {netns}"
        if isinstance(name, str) and name and name != "root":
            if self.namespaces is not None and name not in self.namespaces:
                if name in self.foreign or len(self.foreign) < self.max_keys:
                    self.foreign[name] += int(count or 0)
                return None, f"{source}: netns_name {name} (outside this correlator's scope)"
            # a namespace that is no host of the fleet (a router or bridge on the path)
            return f"netns:{name}", f"{source}: netns_name {name} (not a fleet host)"
        boot = self.machine_key(host)
        sharing = self.boot_hosts.get(boot, ())
        if len(sharing) <= 1:
            return host, f"{source}: kernel-wide, the only host seen on its machine"
        return f"machine:{boot[:8]}", (f"{source}: machine-wide (kernel-wide source, namespace not "
                                      f"told; machine of {', '.join(sorted(sharing))})")

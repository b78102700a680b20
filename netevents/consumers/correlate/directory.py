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

from collections import Counter, OrderedDict
from collections.abc import Collection

from ...codec import Batch

KERNEL_WIDE = frozenset({"tracepoint", "netdm", "ebpf", "dwdump"})


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

    def see(self, batch: Batch) -> None:
        """Learn the machine a batch's host runs on and the batches of it that were missed."""
        known = self.host_boot.get(batch.host)
        # A batch without a boot id (older agents, consumers' own batches) keeps what is known.
        boot = str(batch.fields.get("boot") or known or batch.host)
        if known != boot:
            if known is None and len(self.host_boot) >= self.max_keys:
                self.evicted["hosts"] += 1
            else:
                if known is not None:
                    self.boot_hosts.get(known, set()).discard(batch.host)
                self.host_boot[batch.host] = boot
                self.boot_hosts.setdefault(boot, set()).add(batch.host)
        if batch.missed:
            self.missed[(batch.host, batch.kind)] += batch.missed

    def learn_addr(self, addr: str | None, host: str) -> None:
        if not addr or self.addr_host.get(addr) == host:
            return
        if addr in self.addr_host:
            self.addr_host.move_to_end(addr)
        elif len(self.addr_host) >= self.max_keys:
            self.addr_host.popitem(last=False)
            self.evicted["addresses"] += 1
        self.addr_host[addr] = host

    def host_at(self, addr: str | None) -> str | None:
        """The host that has address ``addr``, if one was seen with it."""
        return self.addr_host.get(addr) if addr else None

    def addresses_of(self, host: str) -> list[str]:
        return [ad for ad, h in self.addr_host.items() if h == host]

    def machine_key(self, host: str) -> str:
        """The boot id of ``host``'s machine (the host itself while it is not known)."""
        return self.host_boot.get(host) or host

    def machine_of(self, host: str) -> str:
        """The machine-wide entity of ``host``'s machine: ``machine:<boot id prefix>``."""
        return f"machine:{self.machine_key(host)[:8]}"

    def missing_for(self, hosts: list[str] | set[str], kinds: list[str]) -> dict[str, int]:
        """``{"host/kind": batches missed}`` for every host and kind an incident used."""
        return {f"{h}/{k}": self.missed[(h, k)] for h in sorted(hosts) for k in kinds}

    def attribute(self, batch: Batch, event: dict) -> tuple[str | None, str]:
        """(entity, how) a drop event belongs to: a host token, ``machine:<boot>``, or
        ``netns:<name>`` for a namespace that is no host of the fleet; entity None for a
        namespace outside ``namespaces`` (its drops are counted in :attr:`foreign`)."""
        source = event.get("source")
        if source not in KERNEL_WIDE:
            netns = event.get("netns")
            if isinstance(netns, int) and netns not in self.netns_host:
                if len(self.netns_host) >= self.max_keys:
                    self.netns_host.pop(next(iter(self.netns_host)))
                    self.evicted["netns"] += 1
                self.netns_host[netns] = batch.host
            return batch.host, f"{source}: counters of {batch.host}'s own namespace"
        name = event.get("netns_name")
        if isinstance(name, str) and name in self.host_boot:
            return name, f"{source}: netns_name {name}"
        netns = event.get("netns")
        if isinstance(netns, int) and netns in self.netns_host:
            return self.netns_host[netns], f"{source}: netns inode {netns}"
        if isinstance(name, str) and name and name != "root":
            if self.namespaces is not None and name not in self.namespaces:
                if name in self.foreign or len(self.foreign) < self.max_keys:
                    self.foreign[name] += int(event.get("count") or 0)
                return None, f"{source}: netns_name {name} (outside this correlator's scope)"
            # a namespace that is no host of the fleet (a router or bridge on the path)
            return f"netns:{name}", f"{source}: netns_name {name} (not a fleet host)"
        boot = self.machine_key(batch.host)
        sharing = self.boot_hosts.get(boot, ())
        if len(sharing) <= 1:
            return batch.host, f"{source}: kernel-wide, the only host seen on its machine"
        return f"machine:{boot[:8]}", (f"{source}: machine-wide (kernel-wide source, namespace not "
                                      f"told; machine of {', '.join(sorted(sharing))})")

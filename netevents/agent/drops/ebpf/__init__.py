"""Drops with flow and network namespace: skb:kfree_skb through a CO-RE BPF program.

    kfree_skb.bpf.c  the program (tp_btf + raw_tp fallback): in-kernel aggregation per
                     (netns, reason, location, ifindex, proto, flow), sampled ring records,
                     kernel-side filter, own-loss counters
    layout.py        the C structs as Python struct formats (keep in step with the C)
    kfree_skb.bpf.o  the compiled program, committed and shipped (CO-RE: one object for every
                     BTF kernel); kfree_skb.bpf.json records its and its source's SHA-256
    prebuilt.py      the shipped object, checked; reason names from the running kernel's BTF
    build.py         developer command: rebuild the object from the source (clang, bpftool)
    libbpf.py        ctypes binding to libbpf.so.1 (object, maps, batch drain, ring buffer)
    filter.py        the ``filter`` attribute expressions: parse, compile for the kernel, match
    collector.py     EbpfDrops: the collector (window flip + drain, records, losses)

Used as a source of ``netevents.agent.drops`` (``source = "ebpf"`` or ``"auto"``), not on its own.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DropFilter", "EbpfDrops", "parse_filter"]


def __getattr__(name: str) -> Any:
    # Lazy, so `python -m netevents.agent.drops.ebpf.build` does not import the collector.
    if name == "EbpfDrops":
        from .collector import EbpfDrops
        return EbpfDrops
    if name in ("DropFilter", "parse_filter"):
        from . import filter as f
        return getattr(f, name)
    raise AttributeError(name)

"""Kernel code locations as ``symbol+0xoff [module]``, the one form every drop source reports.

    Kallsyms               PC -> ``symbol+0xoff`` from /proc/kallsyms, for sources that only
                           know a program counter (NET_DM summary mode, raw trace pages, eBPF)
    normalize_location()   the kernel's ``%pS`` text (``symbol+0xoff/0xsize [module]``) -> the
                           same form, for sources the kernel symbolises for (tracepoint text,
                           NET_DM packet mode)

NET_DM summary mode reports bare PCs; the tracepoint prints ``0xffff...`` for an address it
cannot symbolise. /proc/kallsyms is not sorted (modules follow the core image, in load order),
so the table is sorted once and looked up with bisect. Addresses read as 0 (no
CAP_SYSLOG / kptr_restrict) make the table useless: :func:`Kallsyms.load` then returns an empty
table and lookups give the bare hex PC.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable

# Symbol types that are code (nm(1) letters): only these can be a drop location.
_TEXT_TYPES = frozenset("tTwW")
_SIZE_RE = re.compile(r"^(\S+?\+0x[0-9a-f]+)/0x[0-9a-f]+")


def normalize_location(text: str) -> tuple[str, int | None]:
    """``%pS`` text -> (``symbol+0xoff[ [module]]``, pc if the kernel printed a bare address).

    The ``/0xsize`` part is dropped so the same call site reads the same from every source.
    """
    text = text.strip()
    if text.startswith("0x"):
        try:
            return text, int(text, 16)
        except ValueError:
            return text, None
    m = _SIZE_RE.match(text)
    if m:
        rest = text[m.end():].strip()
        return (f"{m.group(1)} {rest}" if rest else m.group(1)), None
    return text, None


class Kallsyms:
    """A sorted symbol table. Sans-IO: build it from lines with :meth:`from_lines`."""

    def __init__(self, entries: list[tuple[int, str]]) -> None:
        entries.sort()
        self._addrs = [a for a, _ in entries]
        self._names = [n for _, n in entries]

    def __len__(self) -> int:
        return len(self._addrs)

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> Kallsyms:
        """Parse ``addr type name [module]`` lines; malformed lines are skipped."""
        entries: list[tuple[int, str]] = []
        for line in lines:
            parts = line.split()
            if len(parts) < 3 or parts[1] not in _TEXT_TYPES:
                continue
            try:
                addr = int(parts[0], 16)
            except ValueError:
                continue
            if addr == 0:
                continue
            name = parts[2]
            if len(parts) > 3:
                name = f"{name} {parts[3]}"  # "[module]"
            entries.append((addr, name))
        return cls(entries)

    @classmethod
    def load(cls, path: str = "/proc/kallsyms") -> Kallsyms:
        """Read the kernel's table; an unreadable file gives an empty table (never raises)."""
        try:
            with open(path) as f:
                return cls.from_lines(f)
        except OSError:
            return cls([])

    def resolve(self, pc: int) -> str:
        """``symbol+0xoff`` (with `` [module]`` for module symbols), or ``0x<pc>`` if unknown."""
        i = bisect.bisect_right(self._addrs, pc) - 1
        if i < 0:
            return f"0x{pc:x}"
        name = self._names[i]
        off = pc - self._addrs[i]
        sym, sep, module = name.partition(" ")
        return f"{sym}+0x{off:x}{sep}{module}"

"""Partitioned correlators: ``n`` members that each read the whole stream and share the work by
key (stable across processes and machines: crc32, not Python's salted hash)."""

from __future__ import annotations

import zlib

from ...errors import ConfigError


def partition_of(key: bytes, n: int) -> int:
    """The member (0 .. n-1) of ``n`` partitioned correlators that owns ``key``."""
    return zlib.crc32(key) % n


def parse_partition(text: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N).

    Raises:
        ConfigError: if it is not two integers with 0 <= K < N.
    """
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--partition must look like K/N (e.g. 0/2), got {text!r}") from None
    if not 0 <= k < n:
        raise ConfigError(f"--partition {text}: K counts from 0 and must be below N (0 .. N-1, e.g. 0/2 and 1/2)")
    return k, n


class Partition:
    """Member ``k`` of ``n``: which keys are this member's work.

    Raises:
        ConfigError: for a partition that is not ``0 <= k < n``.
    """

    __slots__ = ("k", "n")

    def __init__(self, k: int = 0, n: int = 1) -> None:
        if not (isinstance(k, int) and isinstance(n, int) and 0 <= k < n):
            raise ConfigError(f"partition must be K/N with 0 <= K < N, got {k}/{n}")
        self.k, self.n = k, n

    def owns(self, key: bytes) -> bool:
        return self.n == 1 or partition_of(key, self.n) == self.k

"""What root loads is what we built: checks before loading a compiled object from a cache.

The eBPF object (netevents/agent/drops/ebpf/build.py) and the C block walker (netevents/agent/capture/cwalk.py)
are built once into a cache directory and loaded by a process that may run as root. Anyone who
can write that directory, or the file, could have it load their code instead. So an object is
loaded only if

    untrusted(path)      the file and every directory above it are owned by root or by us and
                         not writable by group or others (a root-owned sticky directory such
                         as /tmp may be above it), and
    hash_matches(path)   its SHA-256 equals the one recorded next to it when we built it
                         (``<file>.sha256``, written by :func:`record_hash`).

Otherwise the caller rebuilds it (hash) or its source says unavailable with the reason (owner,
mode).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path


def untrusted(path: Path) -> str | None:
    """Why ``path`` (and the directories above it) must not be loaded from, or None."""
    euid = os.geteuid()
    p = Path(os.path.abspath(path))
    for i, d in enumerate([p, *p.parents]):
        try:
            st = d.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            if st.st_uid in (0, euid):
                continue  # a link we (or root) made: its target's directories are checked too
            return f"{d} is a symbolic link owned by uid {st.st_uid}"
        if st.st_uid not in (0, euid):
            return f"{d} is owned by uid {st.st_uid}, not by root{'' if euid == 0 else ' or us'}"
        writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        sticky_root = i > 0 and st.st_mode & stat.S_ISVTX and st.st_uid == 0
        if writable and not sticky_root:
            return f"{d} is writable by others (mode {stat.S_IMODE(st.st_mode):o})"
    real = Path(os.path.realpath(path))
    return untrusted(real) if real != p else None


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def record_hash(built: Path, final: Path) -> None:
    """Record the hash of ``built`` (about to be renamed to ``final``) next to ``final``."""
    tmp = hash_file(built)
    tmp.write_text(_digest(built) + "\n")
    tmp.replace(hash_file(final))


def hash_matches(path: Path) -> bool:
    """Whether ``path`` is what we built: its SHA-256 equals the recorded one."""
    try:
        return hash_file(path).read_text().strip() == _digest(path)
    except OSError:
        return False

"""Build the BPF object for the running kernel, once, into a cache directory.

``vmlinux.h`` is generated from the kernel's BTF (``bpftool btf dump file
/sys/kernel/btf/vmlinux format c``) into the cache, never committed; the object is compiled
with clang (``-target bpf``, CO-RE). The cache key is the kernel release plus a hash of the C
source, so an edited program or a new kernel rebuilds, and an object built at install time
serves hosts without clang. The
``skb_drop_reason`` names are taken from the same vmlinux.h (reasons.json next to the object).

Cache directory: ``$NETEVENTS_CACHE/ebpf``, else ``/var/cache/netevents/ebpf`` for root, else
``~/.cache/netevents/ebpf``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ...base import cache_dir
from ...loadcheck import hash_matches, record_hash, untrusted

SOURCE = Path(__file__).with_name("kfree_skb.bpf.c")
BTF = Path("/sys/kernel/btf/vmlinux")
_ARCH = {"x86_64": "x86", "aarch64": "arm64", "ppc64le": "powerpc", "s390x": "s390",
         "riscv64": "riscv"}


class BuildError(RuntimeError):
    """The object cannot be built here; the message is one line saying what is missing."""


@dataclass(frozen=True)
class Built:
    obj: Path
    reasons: dict[int, str]   # skb_drop_reason number -> name without SKB_DROP_REASON_


def cache_root() -> Path:
    return cache_dir("ebpf")


def parse_reasons(vmlinux_h: str) -> dict[int, str]:
    """``enum skb_drop_reason`` of a vmlinux.h as {number: name}."""
    m = re.search(r"enum skb_drop_reason \{(.*?)\};", vmlinux_h, re.S)
    if not m:
        return {}
    return {int(v, 0): name.removeprefix("SKB_DROP_REASON_")
            for name, v in re.findall(r"(SKB_DROP_REASON_\w+) = (-?\w+),", m.group(1))}


def _tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None:
        raise BuildError(f"{name} not found (Debian package {'bpftool' if name == 'bpftool' else name})")
    return path


def build(cache: Path | None = None) -> Built:
    """The cached object (building it first if needed); see :func:`_build`.

    Raises:
        BuildError: no BTF; no cached object and no clang/bpftool; the compile failed; the
            cache directory is not writable.
    """
    try:
        return _build(cache)
    except OSError as exc:
        raise BuildError(f"eBPF object cache: {exc.filename or ''}: {exc.strerror or exc}") from exc


def _build(cache: Path | None = None) -> Built:
    """The cached object (building it first if needed).

    Raises:
        BuildError: no BTF; no cached object and no clang/bpftool; the compile failed.
    """
    if not BTF.exists():
        raise BuildError(f"no kernel BTF at {BTF} (CONFIG_DEBUG_INFO_BTF)")
    # Keyed by kernel release and program source only: an object built at install time is
    # used on a host where clang has since been removed.
    tag = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    out = (cache or cache_root()) / f"{platform.release()}-{tag}"
    obj, reasons_file = out / "kfree_skb.bpf.o", out / "reasons.json"
    if obj.exists() and reasons_file.exists():
        # What root loads is what we built (netevents/agent/loadcheck.py): a cache someone else can
        # write is not used; an object whose hash is not the recorded one is rebuilt.
        why = untrusted(obj) or untrusted(reasons_file)
        if why:
            raise BuildError(f"not loading {obj}: {why}")
        try:
            reasons = {int(k): v for k, v in json.loads(reasons_file.read_text()).items()}
            if hash_matches(obj):
                return Built(obj, reasons)
        except (OSError, ValueError):
            pass  # a damaged cache entry is rebuilt
    clang = _tool("clang")
    bpftool = _tool("bpftool")
    out.mkdir(parents=True, exist_ok=True, mode=0o755)
    why = untrusted(out)
    if why:
        raise BuildError(f"not building into {out}: {why}")
    # Per-process file names, renamed into place: agents (or tests) building at the same time
    # never read each other's half-written files.
    work = out / f"tmp.{os.getpid()}"
    work.mkdir(exist_ok=True)
    header = work / "vmlinux.h"
    try:
        with open(header, "w") as f:
            subprocess.run([bpftool, "btf", "dump", "file", str(BTF), "format", "c"], stdout=f,
                           stderr=subprocess.PIPE, check=True)
        tmp = work / "kfree_skb.bpf.o"
        arch = _ARCH.get(platform.machine(), platform.machine())
        subprocess.run([clang, "-g", "-O2", "-target", "bpf", f"-D__TARGET_ARCH_{arch}",
                        "-I", str(work), "-c", str(SOURCE), "-o", str(tmp)],
                       capture_output=True, text=True, check=True)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(work, ignore_errors=True)
        lines = (exc.stderr or "").strip().splitlines()
        first = [ln for ln in lines if "error" in ln][:1] or lines[:1]
        raise BuildError(f"building {SOURCE.name} failed: {first[0] if first else exc}") from exc
    reasons = parse_reasons(header.read_text())
    header.replace(out / "vmlinux.h")
    tmp_reasons = work / "reasons.json"
    tmp_reasons.write_text(json.dumps(reasons))
    tmp_reasons.replace(reasons_file)
    record_hash(tmp, obj)
    tmp.replace(obj)  # last: its presence says the entry is complete
    shutil.rmtree(work, ignore_errors=True)
    return Built(obj, reasons)


if __name__ == "__main__":  # install time: python -m netevents.agent.drops.ebpf.build
    import sys

    try:
        built = build()
    except BuildError as exc:
        print(f"netevents.agent.drops.ebpf.build: {exc}", file=sys.stderr)
        sys.exit(1)
    print(f"{built.obj} ({len(built.reasons)} drop reasons)")

"""Rebuild the committed eBPF object from its source: a developer command, never run by the agent.

    python -m netevents.agent.drops.ebpf.build            # rewrite kfree_skb.bpf.o + .json here
    python -m netevents.agent.drops.ebpf.build --out DIR  # build into DIR (tests compare)

Like cilium/ebpf's bpf2go, the compiled CO-RE object is committed next to its source and
shipped in the wheel: one object runs on every BTF kernel (libbpf relocates its field accesses
against the running kernel's BTF at load time), so hosts need no clang. This command is what
you run after editing ``kfree_skb.bpf.c`` (``tests/agent/drops/ebpf/test_ebpf_object.py``
fails while the committed object is older than the source).

The build is reproducible: the source and a ``vmlinux.h`` dumped from the build host's BTF
(``bpftool btf dump file /sys/kernel/btf/vmlinux format c``; never committed) are compiled in
a scratch directory with relative paths (``clang -g -O2 -target bpf``), then ``bpftool gen
object`` links the result, which drops the DWARF and keeps the BTF CO-RE needs. The same
source, ``vmlinux.h`` and toolchain give the same bytes; ``kfree_skb.bpf.json`` records the
hashes and the toolchain so a test can tell "different toolchain" from "stale object".

Needs: Debian ``clang``, ``bpftool``, ``libbpf-dev`` (bpf_helpers.h), kernel BTF.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .prebuilt import OBJECT, RECORD, SOURCE

BTF = Path("/sys/kernel/btf/vmlinux")
_ARCH = {"x86_64": "x86", "aarch64": "arm64", "ppc64le": "powerpc", "s390x": "s390",
         "riscv64": "riscv"}


class BuildError(RuntimeError):
    """The object cannot be built here; the message is one line saying what is missing."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tool(name: str) -> str:
    """The path of ``clang`` or ``bpftool`` (Debian puts bpftool in /usr/sbin).

    Raises:
        BuildError: it is not installed (the message names the Debian package).
    """
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None:
        raise BuildError(f"{name} not found (Debian package {name})")
    return path


def _run(cmd: list[str], cwd: Path, what: str) -> str:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=True,
                              timeout=300).stdout
    except subprocess.CalledProcessError as exc:
        lines = (exc.stderr or "").strip().splitlines()
        first = [ln for ln in lines if "error" in ln][:1] or lines[:1]
        raise BuildError(f"{what} failed: {first[0] if first else exc}") from None


def toolchain() -> str:
    """One line naming the compiler and linker versions (recorded with the object)."""
    clang = _run([tool("clang"), "--version"], Path("."), "clang --version").splitlines()[0]
    bpftool = "bpftool " + _run([tool("bpftool"), "version"], Path("."),
                                "bpftool version").splitlines()[0].split()[-1]
    return f"{clang}; {bpftool}"


def build(out: Path) -> dict[str, str]:
    """Compile ``kfree_skb.bpf.c`` into ``out/kfree_skb.bpf.o`` and write its record
    ``out/kfree_skb.bpf.json``; returns the record.

    Raises:
        BuildError: no BTF, clang or bpftool; a step failed (its first error line).
    """
    if not BTF.exists():
        raise BuildError(f"no kernel BTF at {BTF} (CONFIG_DEBUG_INFO_BTF)")
    clang, bpftool = tool("clang"), tool("bpftool")
    source = SOURCE.read_bytes()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="netevents-ebpf-") as tmp:
        work = Path(tmp)
        header = _run([bpftool, "btf", "dump", "file", str(BTF), "format", "c"], work,
                      "bpftool btf dump")
        (work / "vmlinux.h").write_text(header)
        (work / SOURCE.name).write_bytes(source)
        arch = _ARCH.get(platform.machine(), platform.machine())
        # Relative paths and a fixed compilation directory: no scratch path in the object.
        _run([clang, "-g", "-O2", "-target", "bpf", f"-D__TARGET_ARCH_{arch}",
              "-fdebug-compilation-dir=.", "-I", ".", "-c", SOURCE.name, "-o", "unlinked.o"],
             work, f"clang {SOURCE.name}")
        _run([bpftool, "gen", "object", "linked.o", "unlinked.o"], work, "bpftool gen object")
        obj = (work / "linked.o").read_bytes()
        record = {
            "source": SOURCE.name,
            "source_sha256": sha256(source),
            "object_sha256": sha256(obj),
            "toolchain": toolchain(),
            "vmlinux_h_sha256": sha256(header.encode()),
            "built_on": platform.release(),
        }
        tmp_obj = out / f".{OBJECT.name}.tmp"
        tmp_obj.write_bytes(obj)
        tmp_obj.replace(out / OBJECT.name)
        (out / RECORD.name).write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netevents.agent.drops.ebpf.build",
                                     description="Rebuild kfree_skb.bpf.o from kfree_skb.bpf.c.")
    parser.add_argument("--out", type=Path, default=OBJECT.parent,
                        help="directory for kfree_skb.bpf.o and .json (default: next to the source)")
    args = parser.parse_args(argv)
    try:
        record = build(args.out)
    except BuildError as exc:
        print(f"netevents.agent.drops.ebpf.build: {exc}", file=sys.stderr)
        return 1
    print(f"{args.out / OBJECT.name}: sha256 {record['object_sha256'][:16]}... "
          f"from {SOURCE.name} sha256 {record['source_sha256'][:16]}... ({record['toolchain']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

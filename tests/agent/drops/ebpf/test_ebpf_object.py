"""The committed eBPF object is what its source builds to, and the reason names come from BTF.

- Always (no tools): the record next to the object names the object's and the source's
  SHA-256 as they are, so an edited ``kfree_skb.bpf.c`` without a rebuilt object fails here.
- With clang, bpftool and kernel BTF: a rebuild from the source is byte for byte the committed
  object when the toolchain and ``vmlinux.h`` are the ones it records (the build is
  reproducible); with another toolchain, the rebuilt object loads and attaches (root).
- The BTF reader gives the same ``skb_drop_reason`` table as bpftool's vmlinux.h.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from netevents.agent.drops.ebpf import build, libbpf, prebuilt
from netevents.agent.kernel import btf

BTF = Path("/sys/kernel/btf/vmlinux")
BPFTOOL = shutil.which("bpftool") or ("/usr/sbin/bpftool" if Path("/usr/sbin/bpftool").exists()
                                      else None)
missing_tools = [what for what, ok in (
    ("clang (Debian package clang)", shutil.which("clang") is not None),
    ("bpftool (Debian package bpftool)", BPFTOOL is not None),
    ("kernel BTF at /sys/kernel/btf/vmlinux", BTF.exists()),
) if not ok]
needs_tools = pytest.mark.skipif(bool(missing_tools),
                                 reason=f"rebuilding the eBPF object needs {', '.join(missing_tools)}")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_committed_object_is_built_from_the_committed_source():
    record = json.loads(prebuilt.RECORD.read_text())
    assert record["source_sha256"] == _sha(prebuilt.SOURCE), (
        "kfree_skb.bpf.c changed since kfree_skb.bpf.o was built: "
        "run python -m netevents.agent.drops.ebpf.build and commit both")
    assert record["object_sha256"] == _sha(prebuilt.OBJECT)
    prebuilt.check_object()  # what the agent checks before loading


def test_damaged_or_stale_objects_are_refused_with_one_line(tmp_path):
    obj, rec, src = tmp_path / "k.o", tmp_path / "k.json", tmp_path / "k.c"
    shutil.copy(prebuilt.OBJECT, obj)
    shutil.copy(prebuilt.RECORD, rec)
    shutil.copy(prebuilt.SOURCE, src)
    prebuilt.check_object(obj, rec, src)
    with open(obj, "r+b") as f:
        f.seek(100)
        f.write(b"\xff")
    with pytest.raises(prebuilt.PrebuiltError, match="is not the object k.json records"):
        prebuilt.check_object(obj, rec, src)
    shutil.copy(prebuilt.OBJECT, obj)
    src.write_text(src.read_text() + "\n")
    with pytest.raises(prebuilt.PrebuiltError, match="older than k.c.*rebuild"):
        prebuilt.check_object(obj, rec, src)
    src.unlink()  # an installed package without the source: only the object is checked
    prebuilt.check_object(obj, rec, src)
    obj.unlink()
    with pytest.raises(prebuilt.PrebuiltError, match="k.o missing"):
        prebuilt.check_object(obj, rec, src)


def _btf(types: bytes, strings: bytes) -> bytes:
    return struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types),
                       len(strings)) + types + strings


def test_btf_reader_on_small_and_bad_input():
    strings = b"\0int\0e\0A\0B\0"
    types = (struct.pack("<III", 1, 1 << 24, 4) + struct.pack("<I", 32)          # INT int
             + struct.pack("<III", 5, 6 << 24 | 2, 4)                            # ENUM e (unsigned)
             + struct.pack("<II", 7, 1) + struct.pack("<II", 9, 0xFFFF0000))
    assert btf.enum_values("e", _btf(types, strings)) == {"A": 1, "B": 0xFFFF0000}
    signed = types.replace(struct.pack("<I", 6 << 24 | 2), struct.pack("<I", 1 << 31 | 6 << 24 | 2))
    assert btf.enum_values("e", _btf(signed, strings))["B"] == -65536
    assert btf.enum_values("absent", _btf(types, strings)) is None
    with pytest.raises(btf.BtfError, match="not BTF"):
        btf.enum_values("e", b"\0" * 64)
    with pytest.raises(btf.BtfError, match="unknown kind 30"):
        btf.enum_values("e", _btf(struct.pack("<III", 0, 30 << 24, 0), strings))


@pytest.mark.skipif(BPFTOOL is None or not BTF.exists(),
                    reason="comparing with bpftool needs bpftool and kernel BTF")
def test_reasons_from_btf_are_bpftool_s():
    header = subprocess.run([BPFTOOL, "btf", "dump", "file", str(BTF), "format", "c"],
                            capture_output=True, text=True, check=True).stdout
    m = re.search(r"enum skb_drop_reason \{(.*?)\};", header, re.S)
    if m is None:
        pytest.skip("this kernel has no enum skb_drop_reason (before 5.17)")
    want = {int(v): n.removeprefix("SKB_DROP_REASON_")
            for n, v in re.findall(r"(SKB_DROP_REASON_\w+) = (-?\d+),", m.group(1))}
    got = btf.skb_drop_reasons()
    assert got == want and "NETFILTER_DROP" in got.values()


@needs_tools
def test_rebuild_from_source_is_the_committed_object(tmp_path):
    record = build.build(tmp_path)
    committed = json.loads(prebuilt.RECORD.read_text())
    assert record["source_sha256"] == committed["source_sha256"]
    rebuilt = tmp_path / prebuilt.OBJECT.name
    assert record["object_sha256"] == _sha(rebuilt)
    same_inputs = (record["toolchain"], record["vmlinux_h_sha256"]) == (
        committed["toolchain"], committed["vmlinux_h_sha256"])
    if same_inputs:
        # The same source, vmlinux.h and toolchain: the same bytes.
        assert rebuilt.read_bytes() == prebuilt.OBJECT.read_bytes()
        return
    # Another toolchain or kernel headers: the bytes may differ; the rebuilt object must load.
    if os.geteuid() != 0:
        pytest.skip(f"built with {record['toolchain']} (committed: {committed['toolchain']}); "
                    "loading the rebuilt object needs root")
    obj = libbpf.BpfObject(str(rebuilt))
    try:
        obj.set_autoload("kfree_skb_raw", False)
        obj.load()
        obj.attach("kfree_skb_btf")
    finally:
        obj.close()


def test_build_without_clang_says_which_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no clang (Debian has none in /usr/sbin)
    want = r"clang not found \(Debian package clang\)" if BTF.exists() else "no kernel BTF"
    with pytest.raises(build.BuildError, match=want):
        build.build(tmp_path / "out")
    assert not (tmp_path / "out" / prebuilt.OBJECT.name).exists()

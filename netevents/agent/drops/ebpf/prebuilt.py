"""The shipped eBPF object and the running kernel's drop-reason names: what the agent loads.

``kfree_skb.bpf.o`` is committed and packaged next to ``kfree_skb.bpf.c`` (rebuilt only by the
developer command ``python -m netevents.agent.drops.ebpf.build``); ``kfree_skb.bpf.json``
records the SHA-256 of both. At run time the agent needs neither clang nor bpftool:

- the object is used as shipped, after checking it is the recorded one (a damaged or
  half-copied file is refused) and, where the source is beside it (a checkout), that the
  source has not changed since it was built (an edited program is refused until rebuilt, so a
  developer never tests the old program by mistake);
- the reason names (``enum skb_drop_reason``) come from the running kernel's BTF, read in
  Python (``netevents.agent.kernel.btf``): the numbering differs between kernels, so a table
  from the build host would name drops wrongly elsewhere. A kernel without the enum (before
  5.17) has no reasons to name.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ...kernel import btf

HERE = Path(__file__).parent
SOURCE = HERE / "kfree_skb.bpf.c"
OBJECT = HERE / "kfree_skb.bpf.o"
RECORD = HERE / "kfree_skb.bpf.json"
REBUILD = "python -m netevents.agent.drops.ebpf.build"


class PrebuiltError(RuntimeError):
    """The object or the reason names cannot be used here; the message is one line."""


@dataclass(frozen=True)
class Prebuilt:
    obj: Path
    reasons: dict[int, str]   # skb_drop_reason number -> name without SKB_DROP_REASON_


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_object(obj: Path | None = None, record: Path | None = None,
                 source: Path | None = None) -> None:
    """Raise PrebuiltError unless ``obj`` (default: the shipped object) is the object
    ``record`` describes and (when the source is present) was built from ``source`` as it is
    now."""
    obj, record, source = obj or OBJECT, record or RECORD, source or SOURCE
    try:
        rec = json.loads(record.read_text())
        want_obj, want_src = rec["object_sha256"], rec["source_sha256"]
    except FileNotFoundError:
        raise PrebuiltError(f"{record.name} missing: the package is incomplete") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PrebuiltError(f"{record}: unreadable record ({exc})") from None
    try:
        got = _sha256(obj)
    except FileNotFoundError:
        raise PrebuiltError(f"{obj.name} missing: the package is incomplete") from None
    if got != want_obj:
        raise PrebuiltError(f"{obj} is not the object {record.name} records "
                            f"(sha256 {got[:12]}, recorded {want_obj[:12]}); rebuild: {REBUILD}")
    if source.exists() and _sha256(source) != want_src:
        raise PrebuiltError(f"{obj.name} is older than {source.name} (edited since it was "
                            f"built); rebuild: {REBUILD}")


def prebuilt(vmlinux: Path = btf.VMLINUX) -> Prebuilt:
    """The checked object and this kernel's reason names.

    Raises:
        PrebuiltError: no kernel BTF; the object is missing, damaged or stale; the BTF
            cannot be read.
    """
    if not vmlinux.exists():
        raise PrebuiltError(f"no kernel BTF at {vmlinux} (CONFIG_DEBUG_INFO_BTF)")
    check_object()
    try:
        reasons = btf.skb_drop_reasons(vmlinux)
    except (OSError, btf.BtfError) as exc:
        raise PrebuiltError(f"reading drop reasons from {vmlinux}: {exc}") from None
    return Prebuilt(OBJECT, reasons)

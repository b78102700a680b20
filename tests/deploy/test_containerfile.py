"""deploy/Containerfile builds the image the Kubernetes manifests run, and in it the agent has
the prebuilt eBPF object and the C walker with no compiler. Needs a working podman or docker
(a daemon that answers); builds from the repository, so it takes a few minutes."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _engine() -> str | None:
    for name in ("podman", "docker"):
        path = shutil.which(name)
        if path and subprocess.run([path, "info"], capture_output=True, timeout=30).returncode == 0:
            return path
    return None


ENGINE = _engine()

CHECK = """
import shutil
from netevents.agent.capture import cwalk
from netevents.agent.drops.ebpf import libbpf, prebuilt
prebuilt.check_object(); cwalk.load(); libbpf.load_library()
assert not any(shutil.which(c) for c in ("cc", "gcc", "clang", "bpftool"))
print("ok")
"""


@pytest.mark.skipif(ENGINE is None, reason="needs podman or docker with a running daemon")
def test_the_image_carries_the_prebuilt_parts_and_no_compiler():
    tag = f"localhost/netevents-test:{uuid.uuid4().hex[:8]}"
    subprocess.run([ENGINE, "build", "-f", "deploy/Containerfile", "-t", tag, "."], cwd=ROOT,
                   check=True, capture_output=True, timeout=1200)
    try:
        out = subprocess.run([ENGINE, "run", "--rm", "--read-only", tag, "python", "-c", CHECK],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    finally:
        subprocess.run([ENGINE, "rmi", "-f", tag], capture_output=True, timeout=120)

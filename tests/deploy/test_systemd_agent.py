"""The agent runs with the systemd unit's capabilities: exactly its CapabilityBoundingSet (and
NoNewPrivileges), applied with setpriv, still attaches the eBPF source and the capture ring.

systemd itself is not needed (this host may not run it as PID 1); the unit's syntax is
checked by systemd-analyze in test_configs.py.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.test_package import agent_sources, needs_ebpf

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "netevents-agent.service"


def unit_capabilities() -> list[str]:
    text = UNIT.read_text()
    bounding = re.search(r"^CapabilityBoundingSet=(.*)$", text, re.M).group(1).split()
    ambient = re.search(r"^AmbientCapabilities=(.*)$", text, re.M).group(1).split()
    assert bounding == ambient
    assert re.search(r"^NoNewPrivileges=yes$", text, re.M)
    return [c.removeprefix("CAP_").lower() for c in bounding]


@needs_ebpf
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_agent_attaches_with_only_the_units_capabilities(nats_url, tmp_path):
    caps = ",".join(f"+{c}" for c in unit_capabilities())
    setpriv = [shutil.which("setpriv"), f"--bounding-set=-all,{caps}", "--inh-caps=-all",
               "--no-new-privs", "--"]
    sources, err = agent_sources(nats_url, tmp_path, setpriv)
    assert "ebpf: kfree_skb_btf attached" in err, err[-3000:]
    assert sources["drops.ebpf"] == {"state": "running"}, sources
    assert sources["capture"]["state"] == "running", sources
    assert sources["capture.c_walker"] == {"state": "running"}, sources


@needs_ebpf
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_without_cap_bpf_the_ebpf_source_says_why(nats_url, tmp_path):
    caps = ",".join(f"+{c}" for c in unit_capabilities() if c not in ("bpf", "sys_admin"))
    setpriv = [shutil.which("setpriv"), f"--bounding-set=-all,{caps}", "--inh-caps=-all",
               "--no-new-privs", "--"]
    sources, _ = agent_sources(nats_url, tmp_path, setpriv)
    assert sources["drops.ebpf"]["state"] == "unavailable"
    assert "CAP_BPF" in sources["drops.ebpf"]["reason"], sources

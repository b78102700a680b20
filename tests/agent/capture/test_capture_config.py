"""The [capture] section and command-line values: validated once, errors name the option."""

from __future__ import annotations

import os

import pytest

from netevents.agent.capture import RingCapture, build, capture_config, parse_workers
from netevents.agent.capture.workers import CaptureSupervisor
from netevents.agent.config import AgentConfig
from netevents.errors import ConfigError


def test_workers_auto_and_numbers():
    assert parse_workers("auto") == (os.cpu_count() or 1)
    assert parse_workers("3") == 3 and parse_workers(None) == 1
    for bad in ("0", "many", "1000"):
        with pytest.raises(ConfigError, match="capture workers"):
            parse_workers(bad)


@pytest.mark.parametrize("section, message", [
    ({}, "no interface"),
    ({"iface": "eth0", "colour": "red"}, "unknown option"),
    ({"iface": "eth0", "fanout": "roundrobin"}, "fanout 'roundrobin'"),
    ({"iface": "eth0", "block_size": 1000}, "block_size 1000"),
    ({"iface": "eth0", "snaplen": 0}, "snaplen 0"),
    ({"iface": "eth0", "filter": "2\n6 0 0 0"}, "capture filter"),
    ({"iface": "eth0", "snaplen": "abc"}, r"\[capture\] snaplen"),
    ({"iface": "eth0", "hwtstamp": "false"}, r"\[capture\] hwtstamp"),
])
def test_bad_sections_are_one_clear_error(section, message):
    with pytest.raises(ConfigError, match=message):
        capture_config(section)


def test_build_picks_in_process_or_workers():
    assert isinstance(build({"iface": "eth0"}), RingCapture)
    assert isinstance(build({"iface": "eth0", "workers": 2}), CaptureSupervisor)
    assert isinstance(build({"ifaces": ["eth0", "eth1"]}), CaptureSupervisor)
    assert isinstance(build({"iface": "eth0", "capture_only": True}), CaptureSupervisor)
    cfg = capture_config({"iface": "eth0", "ifaces": ["eth1"], "rollover": True, "fanout": "cpu"})
    assert cfg.interfaces == ["eth0", "eth1"] and cfg.worker_count == 1
    assert cfg.rollover and cfg.fanout == "cpu" and cfg.snaplen == 96


def test_fanout_group_ids_differ_per_interface():
    sup = CaptureSupervisor(capture_config({"ifaces": ["eth0", "eth1"], "workers": 2}),
                            AgentConfig(bus="nats://127.0.0.1:4222"))
    g0 = sup.worker_config("eth0", 0, 0)["fanout_group"]
    assert g0 == sup.worker_config("eth0", 0, 1)["fanout_group"]
    assert g0 != sup.worker_config("eth1", 1, 0)["fanout_group"]


def test_workers_are_handed_the_compiled_filter(monkeypatch):
    import shutil

    if shutil.which("tcpdump") is None:
        pytest.skip("needs tcpdump to compile the expression once")
    cfg = capture_config({"iface": "eth0", "filter": "udp dst port 9999"})
    monkeypatch.setenv("PATH", "/nonexistent")  # the worker's copy must not need tcpdump
    again = capture_config(cfg.section())
    assert again.bpf == cfg.bpf and len(again.bpf) > 4

"""Usage errors read as usage errors (exit 2, naming what is wrong), and the way out is named."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netevents.app", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=timeout, env=env)


@pytest.mark.parametrize("args, needle", [
    (("tail", "--bus", "http://x"), "nats://, tls://, ws://, wss://"),
    (("top", "--bus", "127.0.0.1:4222"), "is not a NATS URL"),
    (("tail", "--count", "-1"), "--count: must be 1 or more"),
    (("tail", "--count", "0"), "--count: must be 1 or more"),
    (("correlate", "--partition", "3/2", "--bus", "nats://127.0.0.1:1"), "K counts from 0"),
    (("tail", "--host", "a.b", "--bus", "nats://127.0.0.1:1"), "name or glob"),
])
def test_usage_errors_exit_2_and_say_what_is_wrong(args, needle):
    r = cli(*args)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr
    assert "no wildcards" not in r.stderr


def test_bus_from_the_environment_is_checked_too():
    import os

    r = cli("tail", "--timeout", "1", env={**os.environ, "NETEVENTS_BUS": "http://nats:4222"})
    assert r.returncode == 2 and "is not a NATS URL" in r.stderr


def test_partition_help_says_k_counts_from_0():
    assert "K counts from 0" in " ".join(cli("correlate", "--help").stdout.split())


def test_up_names_the_process_holding_its_port(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        r = cli("up", "--port", str(port), "--duration", "2", "--netstat", "--store",
                str(tmp_path / "store"), "--spool", str(tmp_path / "spool"))
    finally:
        holder.close()
    assert r.returncode == 1
    line = r.stderr.strip().splitlines()[-1]
    assert f"port {port} on 127.0.0.1 is taken by" in line
    assert f"--port {port + 1}" in line

"""`netevents agent --ipstats` and `netevents ctl HOST level ...` as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.integration


def cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netevents.app", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=timeout)


@pytest.fixture
def agent(nats_url, tmp_path):
    host = f"ipst-cli-{uuid.uuid4().hex[:6]}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "netevents.app", "agent", "--bus", nats_url, "--host", host,
         "--ipstats-level", "diagnostics", "--duration", "60", "--spool", str(tmp_path / "spool")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while True:  # ready when its control server answers
            r = cli("ctl", host, "commands", "--bus", nats_url, "--timeout", "0.5")
            if r.returncode == 0:
                break
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, r.stderr
        yield host
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_ctl_switches_the_level_and_refuses_bad_values(agent, nats_url):
    r = cli("ctl", agent, "level", "--bus", nats_url)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["result"]["level"] == "diagnostics"  # from --ipstats-level

    r = cli("ctl", agent, "level", "default", "--bus", nats_url)
    assert r.returncode == 0, r.stderr
    reply = json.loads(r.stdout)
    assert reply["ok"] and reply["result"] == {"source": "ipstats", "level": "default",
                                               "previous": "diagnostics"}

    r = cli("ctl", agent, "level", "loud", "--bus", nats_url)
    assert r.returncode == 2
    assert "unknown level 'loud'" in r.stderr and json.loads(r.stdout)["ok"] is False
    r = cli("ctl", agent, "level", "--bus", nats_url)
    assert json.loads(r.stdout)["result"]["level"] == "default"  # unchanged by the refusal


def test_ctl_without_an_agent_exits_1_with_a_clear_message(nats_url):
    r = cli("ctl", "nobody-here", "level", "default", "--bus", nats_url, "--timeout", "1")
    assert r.returncode == 1
    assert "nobody-here" in r.stderr and "no agent" in r.stderr


def test_ctl_refuses_a_host_that_is_not_a_token(nats_url):
    r = cli("ctl", "bad.host", "level", "default", "--bus", nats_url)
    assert r.returncode == 2 and "invalid host" in r.stderr

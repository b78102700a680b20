"""The command line as a user runs it: `up --duration`, `tail --json`, `agent` with SIGTERM."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

NETEVENTS = [sys.executable, "-m", "netevents.app"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_up_runs_a_server_and_an_agent_and_tail_reads_it(tmp_path):
    port = free_port()
    up = subprocess.Popen([*NETEVENTS, "up", "--duration", "10", "--port", str(port),
                           "--store", str(tmp_path / "store"), "--status-interval", "2"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        tail = None
        while time.monotonic() < deadline:  # wait for the embedded server to listen
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        tail = subprocess.run([*NETEVENTS, "tail", "--json", "--kind", "netstat", "--count", "5",
                               "--timeout", "8", "--bus", f"nats://127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=30)
        out, err = up.communicate(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    assert tail.returncode == 0, tail.stderr
    lines = tail.stdout.strip().splitlines()
    assert len(lines) == 5
    for line in lines:
        doc = json.loads(line)
        assert doc["kind"] == "netstat" and doc["group"] and doc["host"] and doc["seq"] >= 1
    assert up.returncode == 0, err
    counts = {ln.split()[0]: int(ln.split()[1]) for ln in out.splitlines() if ln.startswith("  ")
              and "events in" in ln}
    assert counts.get("netstat", 0) > 0 and counts.get("status", 0) >= 2
    assert "unexplained losses: 0" in out
    assert "batches missed by this viewer: 0" in out


def test_agent_drains_on_sigterm_and_says_so_in_a_final_status(nats_url, tmp_path):
    import asyncio

    from netevents import connect

    agent = subprocess.Popen([*NETEVENTS, "agent", "--bus", nats_url, "--host", "term-test",
                              "--netstat", "--interval", "0.2", "--spool", str(tmp_path / "spool")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    async def watch():
        async with connect(nats_url) as bus:
            async with bus.subscribe(hosts=["term-test"]) as sub:
                seen = []
                while True:
                    b = await sub.next(15)
                    assert b is not None, "agent went silent"
                    seen.append(b)
                    if b.kind == "netstat" and b.seq >= 3 and agent.returncode is None:
                        agent.send_signal(signal.SIGTERM)
                        agent.returncode = -1  # mark: signal sent
                    if b.kind == "status" and b.events[0]["final"]:
                        return seen, sub

    seen, sub = asyncio.run(watch())
    agent.returncode = None
    assert agent.wait(timeout=15) == 0
    final = seen[-1].events[0]
    assert final["sources"]["netstat"]["state"] == "stopped"
    published = final["published"]
    got = {}
    for b in seen:
        got[b.kind] = got.get(b.kind, 0) + 1
    # Every batch the agent says it published reached the subscriber (it joined at seq 1).
    assert got == published
    assert sub.missed == 0
    assert sum(final["lost"].values()) == 0


@pytest.mark.parametrize("argv, code, words", [
    (["agent", "--host", "a.b"], 2, "invalid host 'a.b'"),
    (["agent", "--config", "/nonexistent.toml"], 2, "cannot read config file"),
    (["tail", "--bus", "nats://127.0.0.1:1", "--count", "1"], 1, "cannot connect to the bus"),
    (["tail", "--kind", "nope"], 2, "invalid choice"),
])
def test_errors_are_one_clear_line_with_the_documented_exit_code(argv, code, words, tmp_path):
    env = dict(os.environ, NETEVENTS_BUS="nats://127.0.0.1:1")
    r = subprocess.run([*NETEVENTS, *argv], capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == code
    assert words in r.stderr
    assert "Traceback" not in r.stderr


def test_server_without_duration_serves_until_sigterm(tmp_path):
    import signal
    import time

    p = subprocess.Popen([*NETEVENTS, "server", "--port", "0", "--store", str(tmp_path / "s")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert "NATS with JetStream at nats://127.0.0.1:" in line, line + p.stderr.read()
        url = line.split(" at ", 1)[1].split(",", 1)[0]
        time.sleep(1.0)
        assert p.poll() is None, "the server stopped by itself"
        r = subprocess.run([*NETEVENTS, "tail", "--bus", url, "--count", "1", "--timeout", "1"],
                           capture_output=True, text=True, timeout=30)
        assert "cannot connect" not in r.stderr, r.stderr
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
    assert p.returncode == 0


def test_server_runs_with_streams_and_stops_by_itself(tmp_path):
    r = subprocess.run([*NETEVENTS, "server", "--port", "0", "--store", str(tmp_path / "s"),
                        "--duration", "1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "NATS with JetStream at nats://127.0.0.1:" in r.stdout
    assert (tmp_path / "s" / "jetstream").is_dir()


def test_correlate_prints_each_incident_as_it_is_published(nats_url):
    import asyncio

    from netevents import connect
    from netevents.codec import Batch

    def storm_batch(host: str, seq: int) -> Batch:
        now = time.time_ns()
        return Batch(kind="drop", site="local", host=host, run=f"run-{host}", seq=seq, t0=now,
                     t1=now, events=[{"count": 3, "source": "counter", "reason": "TCP_CSUM",
                                      "location": "tcp_v4_rcv+0x1", "first_ts": now,
                                      "last_ts": now}])

    async def scene(quiet: bool) -> tuple[str | None, str]:
        corr = await asyncio.create_subprocess_exec(
            *NETEVENTS, "correlate", "--bus", nats_url, "--duration", "20",
            *(["--quiet"] if quiet else []), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        first = None
        async with connect(nats_url, streams=True) as bus:
            seq = 0
            deadline = time.monotonic() + (6 if quiet else 15)
            while time.monotonic() < deadline:
                seq += 1
                for host in ("sa", "sb"):
                    await bus.publish(storm_batch(host, seq))
                try:
                    line = await asyncio.wait_for(corr.stdout.readline(), 0.5)
                except TimeoutError:
                    continue
                if line:
                    first = line.decode().strip()
                    break
        corr.send_signal(signal.SIGTERM)
        _out, err = await corr.communicate()
        assert corr.returncode == 0, err.decode()
        return first, err.decode()

    first, err = asyncio.run(scene(quiet=False))
    assert first is not None and first.startswith("[drop_storm]") and "TCP_CSUM" in first, first
    assert "stopped: incidents" in err            # and the summary at the end
    first, err = asyncio.run(scene(quiet=True))
    assert first is None and "incident.drop_storm" in err   # made, not printed

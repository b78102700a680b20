"""Per-host credentials against a real nats-server started from deploy/nats/single.conf.

The users come from `netevents auth` (netevents/auth.py); the server enforces them. An agent
holding web-1's credentials cannot speak for web-2, cannot send control requests, and cannot
listen to another host's control subject; a read-only consumer cannot publish events; what each
is meant to do (acked JetStream publishing, control replies, durable pull consumers) works.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import nats.errors
import pytest

from netevents.agent.control import ControlServer, control_request
from netevents import connect
from netevents.auth import Fleet
from netevents.codec import Batch
from netevents.errors import BusError

from .servers import NATS_CONFS, NatsProcess, PortMap, rewrite_conf

NETEVENTS = [sys.executable, "-m", "netevents.app"]


def batch(host: str, seq: int = 1, kind: str = "drop", site: str = "dc1") -> Batch:
    return Batch(kind=kind, site=site, host=host, run="r1", seq=seq, t0=1, t1=2,
                 events=[{"count": seq, "source": "counter", "reason": "QDISC_DROP"}])


def env_value(env_file: Path, name: str) -> str:
    line = next(ln for ln in env_file.read_text().splitlines() if ln.startswith(f"{name}="))
    return line.split("=", 1)[1]


def creds_url(env_file: Path, port: int) -> str:
    """The NETEVENTS_BUS of a generated credentials file, pointed at the test server."""
    return env_value(env_file, "NETEVENTS_BUS").replace("127.0.0.1:4222", f"127.0.0.1:{port}")


@pytest.fixture(scope="module")
def fleet_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("perm")
    fleet = Fleet(tmp / "fleet")
    users = {}
    for host in ("web-1", "web-2"):
        users[host] = fleet.add("agent", host, "nats://127.0.0.1:4222", site="dc1", host=host)[1]
    # the consumer owns the durables its tests use (`netevents auth consumer t --durable ...`)
    users["consumer"] = fleet.add("consumer", "t", "nats://127.0.0.1:4222",
                                  durables=["archive", "archive-test"])[1]
    for role in ("operator", "admin"):
        users[role] = fleet.add(role, "t", "nats://127.0.0.1:4222")[1]
    conf = rewrite_conf(NATS_CONFS / "single.conf", tmp / "server", PortMap(), tmp / "fleet" / "auth.conf")
    server = NatsProcess(conf).start()
    try:
        urls = {who: creds_url(path, server.port) for who, path in users.items()}
        urls["operator-key"] = env_value(users["operator"], "NETEVENTS_OPERATOR_KEY")
        urls["trusted"] = str(tmp / "fleet" / "operators.pub")
        # The admin user creates the streams (agents and consumers may not change them).
        out = subprocess.run([*NETEVENTS, "streams", "--bus", urls["admin"]], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        yield server, urls
    finally:
        server.stop()


async def _violations(bus) -> str:
    await asyncio.sleep(0.3)  # the server's -ERR arrives asynchronously
    err = bus.nc.last_error
    return str(err).lower() if err else ""


def test_unauthenticated_and_wrong_password_are_refused(fleet_server):
    server, urls = fleet_server

    async def main():
        for url in (server.url, urls["web-1"].replace("@", "x@")):
            with pytest.raises(BusError):
                async with connect(url, reconnect=False, connect_timeout=3):
                    pass

    asyncio.run(main())


def test_agent_publishing_as_another_host_is_refused_and_never_delivered(fleet_server):
    server, urls = fleet_server

    async def main():
        async with connect(urls["consumer"], reconnect=False) as reader, \
                connect(urls["web-1"], reconnect=False) as agent:
            async with reader.subscribe(kinds=["drop"]) as sub:
                await agent.publish(batch("web-2", seq=7))      # speaking for web-2: refused
                await agent.flush()
                assert 'permissions violation for publish to "netevents.v1.drop.dc1.web-2"' \
                    in await _violations(agent)
                await agent.publish(batch("web-1", seq=1))      # its own subject: delivered
                await agent.publish(batch("web-1", seq=2), ack=True)  # JetStream ack comes back
                got = [await sub.next(5), await sub.next(5)]
                assert [(b.host, b.seq) for b in got] == [("web-1", 1), ("web-1", 2)]
                assert await sub.next(1) is None                # web-2's never arrives
            # ... and it is not in the stream either (JetStream saw only web-1's two).
            info = await reader.js.stream_info("NETEVENTS_EVENTS", subjects_filter="netevents.v1.drop.>")
            assert info.state.subjects == {"netevents.v1.drop.dc1.web-1": 2}
        assert ('user:agent.dc1.web-1" - Publish Violation - Subject "netevents.v1.drop.dc1.web-2"'
                in server.log_text())

    asyncio.run(main())


def test_agent_cannot_create_streams_send_incidents_or_control_requests(fleet_server):
    server, urls = fleet_server

    async def main():
        async with connect(urls["web-1"], reconnect=False) as agent, \
                connect(urls["web-2"], reconnect=False) as other:
            async with ControlServer(other, "dc1", "web-2") as web2_control:
                with pytest.raises(BusError, match="user agent.dc1.web-1 may not publish on "
                                   "netevents.v1.control.dc1.web-2"):
                    await control_request(agent, "web-2", "commands", site="dc1", timeout=1)
                assert "permissions violation for publish to " \
                       '"netevents.v1.control.dc1.web-2"' in await _violations(agent)
                assert web2_control.served.total() == 0
                # its own control subject is not publishable either (deny beats the allow): the
                # server says so (it used to pass by timeout whatever the permissions were)
                async with ControlServer(agent, "dc1", "web-1") as own:
                    with pytest.raises(BusError, match="may not publish on "
                                       "netevents.v1.control.dc1.web-1"):
                        await control_request(agent, "web-1", "commands", site="dc1", timeout=1)
                    assert own.served.total() == 0
                assert 'permissions violation for publish to "netevents.v1.control.dc1.web-1"' \
                    in await _violations(agent)
                await agent.publish(batch("web-1", kind="incident"))
                await agent.flush()
                assert '"netevents.v1.incident.dc1.web-1"' in await _violations(agent)
                with pytest.raises(nats.errors.TimeoutError):  # the server never answers
                    await agent.nc.request("$JS.API.STREAM.CREATE.NETEVENTS_EVENTS", b"{}", timeout=1)
                assert '"$js.api.stream.create.netevents_events"' in await _violations(agent)

    asyncio.run(main())


def test_agent_cannot_listen_to_another_hosts_control_subject(fleet_server):
    server, urls = fleet_server

    async def main():
        async with connect(urls["web-1"], reconnect=False) as agent:
            await agent.nc.subscribe("netevents.v1.control.dc1.web-2")
            await agent.flush()
            assert 'permissions violation for subscription to "netevents.v1.control.dc1.web-2"' \
                in await _violations(agent)

    asyncio.run(main())


def test_operator_control_request_is_answered_by_the_agent(fleet_server):
    server, urls = fleet_server

    async def main():
        async with connect(urls["web-1"], reconnect=False) as agent, \
                connect(urls["operator"], reconnect=False) as ops:
            # the agent trusts the fleet's operator keys; ctl signs with the operator's key
            async with ControlServer(agent, "dc1", "web-1", trusted_keys=urls["trusted"]) as control:
                key = urls["operator-key"]
                reply = await control_request(ops, "web-1", "commands", site="dc1", timeout=5, key=key)
                assert reply["ok"] and reply["host"] == "web-1" and "commands" in reply["result"]["commands"]
                bad = await control_request(ops, "web-1", "no-such-command", site="dc1", timeout=5,
                                            key=key)
                assert not bad["ok"] and "unknown command" in bad["error"]
                assert control.served == {"ok": 1, "error": 1}
            # an operator still may not publish events
            await ops.publish(batch("web-1", seq=99))
            await ops.flush()
            assert "permissions violation for publish" in await _violations(ops)

    asyncio.run(main())


def test_read_only_consumer_cannot_publish_but_reads_through_a_durable_consumer(fleet_server):
    server, urls = fleet_server

    async def main():
        async with connect(urls["consumer"], reconnect=False) as reader, \
                connect(urls["web-2"], reconnect=False) as agent:
            await agent.publish(batch("web-2", seq=1), ack=True)
            await reader.publish(batch("web-2", seq=2))
            await reader.flush()
            assert 'permissions violation for publish to "netevents.v1.drop.dc1.web-2"' \
                in await _violations(reader)
            async with reader.subscribe(kinds=["drop"], hosts=["web-2"], durable="archive-test") as sub:
                first = await sub.next(10)
                assert first is not None and (first.host, first.seq) == ("web-2", 1)
                assert await sub.next(1) is None  # the consumer's forged seq 2 went nowhere
            info = await reader.js.consumer_info("NETEVENTS_EVENTS", "archive-test-drop")
            assert info.num_pending == 0

    asyncio.run(main())


def test_cli_credential_options_name_a_missing_file(tmp_path):
    for opt, cmd in (("--creds", "tail"), ("--nkey-seed", "top"), ("--tls-ca", "ctl"),
                     ("--tls-cert", "agent")):
        argv = {"tail": ["tail", "--timeout", "1"], "top": ["top", "--duration", "1"],
                "ctl": ["ctl", "web-1", "commands"], "agent": ["agent", "--duration", "1"]}[cmd]
        out = subprocess.run([*NETEVENTS, *argv, opt, str(tmp_path / "missing"), "--bus",
                              "nats://127.0.0.1:9"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 2, (cmd, out.stderr)
        assert opt in out.stderr and "no such file" in out.stderr, out.stderr


def test_nkey_seed_without_the_nkeys_package_is_a_clear_error(tmp_path):
    import importlib.util

    if importlib.util.find_spec("nkeys") is not None:
        pytest.skip("the nkeys package is installed here")
    seed = tmp_path / "seed.nk"
    seed.write_text("SUAEXAMPLE\n")
    out = subprocess.run([*NETEVENTS, "tail", "--timeout", "1", "--nkey-seed", str(seed), "--bus",
                          "nats://127.0.0.1:9"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "--nkey-seed needs the 'nkeys' package" in out.stderr, out.stderr


def test_archive_runs_with_read_only_credentials(fleet_server, tmp_path):
    server, urls = fleet_server
    refused = 'user:consumer.t" - '  # the server logs each violation with the user
    before = server.log_text().count(refused)
    out = subprocess.run([*NETEVENTS, "archive", "--out", str(tmp_path / "arch"), "--duration", "2",
                          "--bus", urls["consumer"]], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert server.log_text().count(refused) == before, server.log_text()[-2000:]

"""The fleet is a trust boundary: each attack of issue 13, performed against a real nats-server
configured only by `netevents auth` output and deploy/nats/single.conf, fails -- with a
permissions violation or a refused command -- and nothing is lost: the archiver's durable still
exists, every batch of the victim is in the stream and reaches the archiver, the victim's level
is unchanged.

    web-1        the attacking host (agent.dc1.web-1); web-2 is the victim host
    archive      consumer.archive, owns the durable "archive" (consumers archive-<kind>)
    snoop        consumer.snoop, another read-only consumer
    correlate    correlator.correlate (incidents as dc1/corr-1), owns the durable "correlate"
    ops          operator.ops (signs control requests) and admin.ops (creates the streams)
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import nats.errors
import pytest

from netevents.agent.control import ControlServer, control_request
from netevents.agent.ipstats import build as build_ipstats
from netevents.agent.spool import ReliablePublisher, Spool
from netevents import connect
from netevents.auth import Fleet
from netevents.codec import Batch, encode_batch
from netevents.errors import BusError

from .servers import NATS_CONFS, NatsProcess, PortMap, creds_url, env_value, rewrite_conf

NETEVENTS = [sys.executable, "-m", "netevents.app"]


def batch(host: str, seq: int, kind: str = "drop", run: str = "r1") -> Batch:
    return Batch(kind=kind, site="dc1", host=host, run=run, seq=seq, t0=1, t1=2,
                 events=[{"count": seq, "source": "counter", "reason": "QDISC_DROP"}])


async def violations(bus) -> str:
    await asyncio.sleep(0.3)  # the server's -ERR arrives asynchronously
    return " | ".join(f"{v} {'on' if v == 'publish' else 'to'} {s}"
                      for s, v in bus.violations.items()).lower()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("attacks")
    fleet = Fleet(tmp / "fleet")
    bus = "nats://127.0.0.1:4222"
    env = {"operator": fleet.add("operator", "ops", bus)[1]}  # first: agents get its key
    for host in ("web-1", "web-2"):
        env[host] = fleet.add("agent", host, bus, site="dc1", host=host)[1]
    env["archive"] = fleet.add("consumer", "archive", bus)[1]
    env["snoop"] = fleet.add("consumer", "snoop", bus)[1]
    env["correlate"] = fleet.add("correlator", "correlate", bus, site="dc1", host="corr-1")[1]
    env["admin"] = fleet.add("admin", "ops", bus)[1]
    conf = rewrite_conf(NATS_CONFS / "single.conf", tmp / "server", PortMap(), tmp / "fleet" / "auth.conf")
    server = NatsProcess(conf).start()
    try:
        urls = {who: creds_url(path, server.port) for who, path in env.items()}
        out = subprocess.run([*NETEVENTS, "streams", "--bus", urls["admin"]], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        yield server, urls, env
    finally:
        server.stop()


async def stream_count(admin, subject: str) -> int:
    info = await admin.js.stream_info("NETEVENTS_EVENTS", subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


def test_a_host_cannot_read_other_users_inboxes(fleet):
    """web-1 subscribing `_INBOX.>` (or the archiver's inbox) while an archiver pulls web-2's
    batches: refused; web-1 receives nothing, the archiver everything."""
    server, urls, _ = fleet

    async def main():
        async with connect(urls["web-1"], reconnect=False) as web1, \
                connect(urls["web-2"], reconnect=False) as web2, \
                connect(urls["archive"], reconnect=False) as archive:
            seen = []

            async def spy(msg):
                seen.append(msg.subject)

            for subject in ("_INBOX.>", "_INBOX.consumer.archive.>", "_INBOX.agent.dc1.web-2.>"):
                await web1.nc.subscribe(subject, cb=spy)
            await web1.flush()
            assert 'subscribe to _inbox.>' in await violations(web1)
            assert 'subscribe to _inbox.consumer.archive.>' in await violations(web1)
            async with archive.subscribe(kinds=["drop"], hosts=["web-2"], durable="archive") as sub:
                for seq in (1, 2, 3):
                    await web2.publish(batch("web-2", seq, run="inbox"), ack=True)  # PubAcks
                got = []
                while len(got) < 3 and (b := await sub.next(5)) is not None:
                    got.append(b)
                assert [(b.run, b.seq) for b in got if b.run == "inbox"] == [("inbox", 1), ("inbox", 2), ("inbox", 3)]
            await asyncio.sleep(0.3)
            assert seen == []
        assert 'user:agent.dc1.web-1" - Subscription Violation - Subject "_INBOX.>"' in server.log_text()

    asyncio.run(main())


def test_no_one_acknowledges_another_consumers_messages(fleet):
    """web-1 (or another consumer) answering the archiver's `$JS.ACK` reply subject with +TERM:
    refused; the message stays pending for the archiver, and is delivered again."""
    _, urls, _ = fleet

    async def main():
        async with connect(urls["web-2"], reconnect=False) as web2, \
                connect(urls["archive"], reconnect=False) as archive, \
                connect(urls["web-1"], reconnect=False) as web1, \
                connect(urls["snoop"], reconnect=False) as snoop:
            await web2.publish(batch("web-2", 1, kind="gap", run="ack"), ack=True)
            psub = await archive.js.pull_subscribe("netevents.v1.gap.>", durable="archive-gap",
                                                   stream="NETEVENTS_EVENTS")
            msgs = await psub.fetch(10, timeout=5)
            target = next(m for m in msgs if b"ack" in m.data)
            sniffed = target.reply  # as if web-1 had read it: it cannot any more (test above)
            assert sniffed.startswith("$JS.ACK.NETEVENTS_EVENTS.archive-gap.")
            for attacker in (web1, snoop):
                await attacker.nc.publish(sniffed, b"+TERM")
                await attacker.flush()
                assert f"publish on {sniffed.lower()}" in await violations(attacker)
            info = await archive.js.consumer_info("NETEVENTS_EVENTS", "archive-gap")
            assert info.num_ack_pending == len(msgs)  # nothing acknowledged away
            for m in msgs:
                await m.nak()
            again = await psub.fetch(10, timeout=5)
            assert sniffed.split(".")[5] in {m.reply.split(".")[5] for m in again}  # same stream seq
            for m in again:
                await m.ack()

    asyncio.run(main())


def test_a_host_cannot_make_the_stream_drop_another_hosts_batches(fleet, tmp_path):
    """web-1, knowing web-2's run id, publishes with Nats-Msg-Id web-2:<run>:drop:3..7 first:
    web-2's ids are keyed with a secret of its run, so all of its 9 batches are stored and the
    archiver gets 1..9 with nothing missed."""
    _, urls, _ = fleet
    run = "dup0run"

    async def main():
        async with connect(urls["web-1"], reconnect=False) as web1, \
                connect(urls["web-2"], reconnect=False) as web2, \
                connect(urls["admin"], reconnect=False) as admin, \
                connect(urls["archive"], reconnect=False) as archive:
            for seq in range(3, 8):
                forged = batch("web-1", seq, kind="drop", run=run)
                await web1.publish_raw("netevents.v1.drop.dc1.web-1", encode_batch(forged),
                                       f"web-2:{run}:drop:{seq}", ack=True)
                plain = batch("web-2", seq, kind="drop", run=run).msg_id  # the old id form too
                await web1.publish_raw("netevents.v1.drop.dc1.web-1", encode_batch(forged),
                                       plain + ":" + "0" * 32, ack=True)
            publisher = ReliablePublisher(web2, Spool(tmp_path / "spool"))
            for seq in range(1, 10):
                await publisher.publish(batch("web-2", seq, kind="drop", run=run))
            await publisher.close()
            assert await stream_count(admin, "netevents.v1.drop.dc1.web-2") >= 9
            async with archive.subscribe(kinds=["drop"], hosts=["web-2"], durable="archive") as sub:
                got = []
                while (b := await sub.next(3)) is not None:
                    if b.run == run:
                        got.append(b.seq)
                assert got == list(range(1, 10))
                assert sub.missed == 0

    asyncio.run(main())


def test_a_consumer_cannot_delete_or_take_over_another_consumers_durable(fleet):
    """consumer.snoop deleting (or re-creating, or pulling from) the archiver's durable:
    refused; the durable exists and the running archiver keeps receiving."""
    _, urls, _ = fleet

    async def main():
        async with connect(urls["archive"], reconnect=False) as archive, \
                connect(urls["snoop"], reconnect=False) as snoop, \
                connect(urls["correlate"], reconnect=False) as corr, \
                connect(urls["web-2"], reconnect=False) as web2:
            async with archive.subscribe(kinds=["drop"], hosts=["web-2"], durable="archive") as sub:
                await web2.publish(batch("web-2", 1, run="del"), ack=True)
                first = await sub.next(5)
                assert first is not None
                for attacker in (snoop, corr):
                    for api in ("$JS.API.CONSUMER.DELETE.NETEVENTS_EVENTS.archive-drop",
                                "$JS.API.CONSUMER.CREATE.NETEVENTS_EVENTS.archive-drop",
                                "$JS.API.CONSUMER.MSG.NEXT.NETEVENTS_EVENTS.archive-drop",
                                "$JS.API.CONSUMER.CREATE.NETEVENTS_EVENTS"):
                        with pytest.raises(nats.errors.TimeoutError):  # never answered: a violation
                            await attacker.nc.request(api, b'{"stream_name":"NETEVENTS_EVENTS"}', timeout=1)
                        assert f"publish on {api.lower()}" in await violations(attacker)
                info = await archive.js.consumer_info("NETEVENTS_EVENTS", "archive-drop")
                assert info.name == "archive-drop"
                # Off the 1 s rhythm of the refused requests above: a batch published just as
                # the pull loop's fetch times out is delivered but handed out only after the
                # ack wait (30 s) -- a client-side race outside this test's subject.
                await asyncio.sleep(0.5)
                await web2.publish(batch("web-2", 2, run="del"), ack=True)
                later = [b for b in [await sub.next(5)] if b is not None]
                assert [(b.run, b.seq) for b in later] == [("del", 2)] and sub.missed == 0
            # and snoop's own durable works, under its own name only
            async with snoop.subscribe(kinds=["drop"], hosts=["web-2"], durable="snoop") as own:
                assert await own.next(5) is not None
            with pytest.raises(BusError, match="consumer.snoop may not publish on"):
                async with snoop.subscribe(kinds=["drop"], durable="archive") as stolen:
                    await stolen.next(1)

    asyncio.run(main())


def test_no_push_consumer_or_stream_can_command_a_host(fleet):
    """The correlator stores a crafted `{"cmd": "level", ...}` incident and points a push
    consumer of its own at web-2's control subject: web-2 refuses the unsigned request, does not
    answer the JetStream ack subject, and its level is unchanged; a consumer name it does not
    own is refused outright. An operator's signed request still works, once."""
    _, urls, env = fleet
    trusted = env_value(env["web-2"], "NETEVENTS_OPERATOR_KEYS")
    key = env_value(env["operator"], "NETEVENTS_OPERATOR_KEY")

    async def main():
        async with connect(urls["web-2"], reconnect=False) as web2, \
                connect(urls["correlate"], reconnect=False) as corr, \
                connect(urls["operator"], reconnect=False) as ops:
            control = ControlServer(web2, "dc1", "web-2", trusted_keys=trusted)
            ipstats = build_ipstats({"level": "default"})
            control.register_source(ipstats)
            async with control:
                crafted = json.dumps({"cmd": "level", "value": "diagnostics"}).encode()
                await corr.publish_raw("netevents.v1.incident.dc1.corr-1", crafted, ack=True)
                for name in ("correlate-incident", "evil-incident"):
                    cfg = {"stream_name": "NETEVENTS_EVENTS", "config": {
                        "name": name, "durable_name": name, "ack_policy": "explicit",
                        "deliver_subject": "netevents.v1.control.dc1.web-2",
                        "filter_subject": "netevents.v1.incident.dc1.corr-1"}}
                    try:
                        await corr.nc.request(f"$JS.API.CONSUMER.CREATE.NETEVENTS_EVENTS.{name}."
                                              "netevents.v1.incident.dc1.corr-1",
                                              json.dumps(cfg).encode(), timeout=2)
                    except Exception:
                        pass
                assert "publish on $js.api.consumer.create.netevents_events.evil-incident" \
                    in await violations(corr)
                await asyncio.sleep(1.5)  # the own-name push consumer delivers (and redelivers)
                assert ipstats.level == "default"
                assert control.refused["unsigned"] >= 1 and control.refused["reply"] >= 1
                assert control.served["ok"] == 0
                # the operator, signing, is obeyed (replays: tests/agent/test_control.py)
                reply = await control_request(ops, "web-2", "level", "diagnostics", site="dc1", key=key)
                assert reply["ok"] and ipstats.level == "diagnostics"
                reply = await control_request(ops, "web-2", "level", "default", site="dc1", key=key)
                assert reply["ok"] and ipstats.level == "default"
            # its own consumer is its own to delete (nothing else owns the name)
            assert await corr.js.delete_consumer("NETEVENTS_EVENTS", "correlate-incident")

    asyncio.run(main())


def test_wrong_password_and_violations_say_what_happened(fleet):
    _, urls, _ = fleet

    async def main():
        wrong = urls["web-1"].replace("@", "x@")
        with pytest.raises(BusError, match="refused user agent.dc1.web-1: authorization violation"):
            async with connect(wrong, connect_timeout=2):  # reconnecting, as agents do
                pass
        async with connect(urls["web-1"], reconnect=False) as web1:
            with pytest.raises(BusError, match="user agent.dc1.web-1 may not publish on "
                               "netevents.v1.drop.dc1.web-2"):
                await web1.publish(batch("web-2", 1), ack=True, timeout=1)

    asyncio.run(main())


def test_server_refuses_to_listen_exposed_without_authorization(fleet, tmp_path):
    _, urls, env = fleet
    out = subprocess.run([*NETEVENTS, "server", "--listen", "0.0.0.0", "--port", "0", "--duration",
                          "1", "--store", str(tmp_path / "s")], capture_output=True, text=True,
                         timeout=60, env={k: v for k, v in __import__("os").environ.items()
                                          if k != "NETEVENTS_FLEET"})
    assert out.returncode == 2 and "refusing to serve a non-loopback address" in out.stderr
    assert "--auth DIR" in out.stderr and "--insecure" in out.stderr
    fleet_dir = env["admin"].parent.parent
    proc = subprocess.Popen([*NETEVENTS, "server", "--port", "0", "--duration", "20", "--store",
                             str(tmp_path / "s"), "--auth", str(fleet_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "serving users of" in line, proc.stderr.read() if proc.poll() is not None else line
        url = line.split(" at ", 1)[1].split(",", 1)[0]
        port = int(url.rsplit(":", 1)[1])

        async def main():
            with pytest.raises(BusError, match="refused a client without credentials"):
                async with connect(url, reconnect=False, connect_timeout=3):
                    pass
            async with connect(creds_url(env["web-1"], port), reconnect=False) as web1:
                await web1.publish(batch("web-1", 1), ack=True)  # the streams exist, acks come
                await web1.publish(batch("web-2", 1))
                await web1.flush()
                assert "publish on netevents.v1.drop.dc1.web-2" in await violations(web1)

        asyncio.run(main())
    finally:
        proc.terminate()
        proc.wait(timeout=20)

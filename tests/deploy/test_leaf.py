"""A per-host leaf node (deploy/nats/leaf.conf) in front of the hub (deploy/nats/single.conf).

The leaf logs in to the hub with the host's own leaf user (`netevents auth add-host --leaf`), so the hub enforces that user's
permissions on everything the leaf forwards, even if the host's local leaf config lets anyone
in: a local client of the leaf that publishes as another host reaches nobody on the hub.
"""

from __future__ import annotations

import asyncio
import time

from netevents.agent.control import ControlServer, control_request
from netevents import connect
from netevents.auth import Fleet
from netevents.codec import Batch

from .servers import NATS_CONFS, NatsProcess, PortMap, free_port, rewrite_conf


def batch(host: str, seq: int) -> Batch:
    return Batch(kind="drop", site="local", host=host, run="r1", seq=seq, t0=1, t1=2,
                 events=[{"count": seq, "source": "counter", "reason": "QDISC_DROP"}])


def _env(env_file, name: str) -> str:
    line = next(ln for ln in env_file.read_text().splitlines() if ln.startswith(f"{name}="))
    return line.split("=", 1)[1]


def _bus(env_file, port: int) -> str:
    return _env(env_file, "NETEVENTS_BUS").replace("127.0.0.1:4222", f"127.0.0.1:{port}")


def test_leaf_forwards_its_hosts_events_and_the_hub_refuses_the_rest(tmp_path):
    fleet = Fleet(tmp_path / "fleet")
    web1 = fleet.add("leaf", "web-1", "nats://127.0.0.1:4222", site="local", host="web-1")[1]
    reader = fleet.add("consumer", "hub-reader", "nats://127.0.0.1:4222")[1]
    ops = fleet.add("operator", "ops", "nats://127.0.0.1:4222")[1]
    leaf_port = free_port()
    hub_conf = rewrite_conf(NATS_CONFS / "single.conf", tmp_path / "hub", PortMap(),
                            tmp_path / "fleet" / "auth.conf")
    hub_conf.write_text(hub_conf.read_text() + f'\nleafnodes {{ listen: "127.0.0.1:{leaf_port}" }}\n')
    hub = NatsProcess(hub_conf)
    # The host's leaf: a local config that lets any local client in (the worst case), and the
    # remote logging in to the hub as agent.local.web-1.
    leaf_dir = tmp_path / "leaf"
    leaf_dir.mkdir()
    (leaf_dir / "open-auth.conf").write_text('authorization { users = [{user: "local", password: "local"}] }\n')
    leaf_conf = rewrite_conf(NATS_CONFS / "leaf.conf", leaf_dir, PortMap(), None)
    hub_leaf_url = _bus(web1, leaf_port).replace("nats://", "nats-leaf://")
    text = leaf_conf.read_text().replace('include "auth.conf"', 'include "open-auth.conf"')
    text = text.replace("nats-leaf://leaf.local.web-1:PASSWORD@nats-hub.example:7422", hub_leaf_url)
    leaf_conf.write_text(text)
    leaf = NatsProcess(leaf_conf)
    try:
        hub.start()
        leaf.start()
        local = f"nats://local:local@127.0.0.1:{leaf.port}"

        async def main():
            async with connect(_bus(reader, hub.port), reconnect=False) as hub_reader, \
                    connect(_bus(ops, hub.port), reconnect=False) as operator, \
                    connect(local, reconnect=False) as agent:
                trusted = str(tmp_path / "fleet" / "operators.pub")
                async with hub_reader.subscribe(kinds=["drop"]) as sub, \
                        ControlServer(agent, "local", "web-1", trusted_keys=trusted):
                    # wait until the leaf connection carries the hub's interest
                    deadline = time.monotonic() + 10
                    first = None
                    seq = 0
                    while first is None and time.monotonic() < deadline:
                        seq += 1
                        await agent.publish(batch("web-1", seq))
                        first = await sub.next(0.3)
                    assert first is not None, "nothing crossed the leaf connection"
                    await agent.publish(batch("web-2", 1))          # forged: the hub drops it
                    await agent.publish(batch("web-1", seq + 1))
                    got = [first]
                    while (b := await sub.next(1)) is not None:
                        got.append(b)
                    assert {b.host for b in got} == {"web-1"}
                    assert got[-1].seq == seq + 1
                    # the operator on the hub reaches the agent behind the leaf
                    reply = await control_request(operator, "web-1", "commands", site="local",
                                                  timeout=5, key=_env(ops, "NETEVENTS_OPERATOR_KEY"))
                    assert reply["ok"] and reply["host"] == "web-1"

        asyncio.run(main())
    finally:
        leaf.stop()
        hub.stop()


def test_a_leaf_host_cannot_read_inboxes_or_acknowledge_for_the_hubs_consumers(tmp_path):
    """Behind its own leaf (whose local config lets anyone in), a host subscribes `_INBOX.>`
    and answers the archiver's ack subject with +TERM: the hub forwards it neither the
    archiver's pulled batches nor any reply, and drops the +TERM (leaf.<site>.<host> may
    publish only its events and into operators' inboxes)."""
    fleet = Fleet(tmp_path / "fleet")
    web1 = fleet.add("leaf", "web-1", "nats://127.0.0.1:4222", site="local", host="web-1")[1]
    web2 = fleet.add("agent", "web-2", "nats://127.0.0.1:4222", site="local", host="web-2")[1]
    archive = fleet.add("consumer", "archive", "nats://127.0.0.1:4222")[1]
    admin = fleet.add("admin", "ops", "nats://127.0.0.1:4222")[1]
    leaf_port = free_port()
    hub_conf = rewrite_conf(NATS_CONFS / "single.conf", tmp_path / "hub", PortMap(),
                            tmp_path / "fleet" / "auth.conf")
    hub_conf.write_text(hub_conf.read_text() + f'\nleafnodes {{ listen: "127.0.0.1:{leaf_port}" }}\n')
    hub = NatsProcess(hub_conf)
    leaf_dir = tmp_path / "leaf"
    leaf_dir.mkdir()
    (leaf_dir / "open-auth.conf").write_text('authorization { users = [{user: "local", password: "local"}] }\n')
    leaf_conf = rewrite_conf(NATS_CONFS / "leaf.conf", leaf_dir, PortMap(), None)
    text = leaf_conf.read_text().replace('include "auth.conf"', 'include "open-auth.conf"')
    text = text.replace("nats-leaf://leaf.local.web-1:PASSWORD@nats-hub.example:7422",
                        _bus(web1, leaf_port).replace("nats://", "nats-leaf://"))
    leaf_conf.write_text(text)
    leaf = NatsProcess(leaf_conf)
    try:
        hub.start()
        leaf.start()

        async def main():
            async with connect(_bus(admin, hub.port), reconnect=False) as ops:
                await ops.ensure_streams()
            async with connect(_bus(archive, hub.port), reconnect=False) as arch, \
                    connect(_bus(web2, hub.port), reconnect=False) as victim, \
                    connect(f"nats://local:local@127.0.0.1:{leaf.port}", reconnect=False) as spy:
                seen = []

                async def cb(msg):
                    seen.append(msg.subject)

                await spy.nc.subscribe("_INBOX.>", cb=cb)  # the leaf's own config allows it
                await spy.flush()
                await asyncio.sleep(1)  # the leaf connection would carry the interest by now
                for seq in (1, 2):
                    await victim.publish(batch_of("web-2", seq), ack=True)
                psub = await arch.js.pull_subscribe("netevents.v1.drop.>", durable="archive-drop",
                                                    stream="NETEVENTS_EVENTS")
                msgs = await psub.fetch(2, timeout=5)
                assert len(msgs) == 2
                for m in msgs:
                    await spy.nc.publish(m.reply, b"+TERM")
                await spy.flush()
                await asyncio.sleep(1)
                info = await arch.js.consumer_info("NETEVENTS_EVENTS", "archive-drop")
                assert info.num_ack_pending == 2  # nothing acknowledged away
                assert seen == []  # no batch, no PubAck, no reply crossed to the leaf
        asyncio.run(main())
    finally:
        leaf.stop()
        hub.stop()


def batch_of(host: str, seq: int) -> Batch:
    return Batch(kind="drop", site="local", host=host, run="leaf-attack", seq=seq, t0=1, t1=2,
                 events=[{"count": seq, "source": "counter", "reason": "QDISC_DROP"}])

"""The host's own addresses: the rtnetlink parser (sans-IO) and the agent publishing them in its
status, at once when an address is added or removed (a real namespace)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time

import jsonschema
import msgpack
import pytest

from netevents import events as ev
from netevents.agent.addresses import OwnAddresses, namespaces_of
from netevents.agent.kernel.ifaddr import (
    IFA_ADDRESS,
    IFA_LOCAL,
    IFADDRMSG,
    RT_SCOPE_HOST,
    RT_SCOPE_LINK,
    RT_SCOPE_UNIVERSE,
    RTM_DELADDR,
    RTM_NEWADDR,
    own,
    parse_addresses,
)
from netevents.agent.kernel.netlink import NLMSG_DONE, pack_attr, pack_message
from netevents.agent.runner import AgentRunner, RunnerOptions
from netevents.errors import NetlinkError
from netevents.memory import MemoryBus


def addr_msg(kind: int, addr: str, scope: int, *, local: str | None = None, plen: int = 24) -> bytes:
    ip = ipaddress.ip_address(addr)
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    body = IFADDRMSG.pack(family, plen, 0, scope, 2) + pack_attr(IFA_ADDRESS, ip.packed)
    if local:
        body += pack_attr(IFA_LOCAL, ipaddress.ip_address(local).packed)
    return pack_message(kind, 2, 1, body)


def test_the_parser_keeps_global_addresses_and_the_local_end_of_point_to_point():
    data = (addr_msg(RTM_NEWADDR, "10.0.0.2", RT_SCOPE_UNIVERSE)
            + addr_msg(RTM_NEWADDR, "127.0.0.1", RT_SCOPE_HOST, plen=8)
            + addr_msg(RTM_NEWADDR, "fe80::1", RT_SCOPE_LINK, plen=64)
            + addr_msg(RTM_NEWADDR, "fd00::2", RT_SCOPE_UNIVERSE, plen=64)
            + addr_msg(RTM_NEWADDR, "192.0.2.9", RT_SCOPE_UNIVERSE, local="192.0.2.1", plen=32)
            + addr_msg(RTM_DELADDR, "10.0.0.3", RT_SCOPE_UNIVERSE)
            + pack_message(NLMSG_DONE, 2, 1, b"\0" * 4))
    found, done = parse_addresses(data)
    assert done and [a.addr for a in found if a.deleted] == ["10.0.0.3"]
    assert own(found) == ["10.0.0.2", "192.0.2.1", "fd00::2"]


def test_a_truncated_message_is_a_netlink_error_not_a_crash():
    good = addr_msg(RTM_NEWADDR, "10.0.0.2", RT_SCOPE_UNIVERSE)
    with pytest.raises(NetlinkError):
        parse_addresses(good[:-3])
    with pytest.raises(NetlinkError):
        parse_addresses(pack_message(RTM_NEWADDR, 2, 1, b"\x02\x18"))  # no ifaddrmsg


def test_the_namespaces_an_agent_owns_are_those_its_sources_read():
    assert namespaces_of([{"netns": "web"}, {"interval": 1.0}, {"netns": "web"}]) == ["web", None]
    assert namespaces_of([]) == [None]


def test_a_new_address_goes_out_in_a_status_at_once(netns_pair):
    a, _b, prefix = netns_pair
    bus = MemoryBus()

    def addresses() -> list[dict]:
        return [e["addresses"] for b in bus.batches("status") for e in b.events if "addresses" in e]

    async def main() -> float:
        runner = AgentRunner(bus, [OwnAddresses([a.name])],
                             RunnerOptions(host="va", status_interval=60.0))
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        try:
            async with asyncio.timeout(10):
                while not addresses():
                    await asyncio.sleep(0.05)
            assert addresses()[-1] == {a.name: [f"{prefix}.1"]}
            started = time.monotonic()
            await asyncio.to_thread(a.run, "ip", "addr", "add", f"{prefix}.7/24", "dev", "veth-a")
            async with asyncio.timeout(5):  # the heartbeat is 60 s: only the change can do it
                while addresses()[-1] != {a.name: [f"{prefix}.1", f"{prefix}.7"]}:
                    await asyncio.sleep(0.02)
            took = time.monotonic() - started
            await asyncio.to_thread(a.run, "ip", "addr", "del", f"{prefix}.7/24", "dev", "veth-a")
            async with asyncio.timeout(5):
                while addresses()[-1] != {a.name: [f"{prefix}.1"]}:
                    await asyncio.sleep(0.02)
        finally:
            stop.set()
            await task
        return took

    took = asyncio.run(main())
    assert took < 2.0
    status = bus.batches("status")[-1]
    assert set(status.events[0]["netns"]) == {a.name} and status.events[0]["final"]
    assert runner_sources(bus)["addresses"]["state"] == "stopped"
    for _subject, data, _id in bus.messages:  # what the agent sends is what the schema says
        doc = ev.json_view(msgpack.unpackb(data))
        jsonschema.validate(doc, ev.json_schema(doc["kind"]))


def runner_sources(bus: MemoryBus) -> dict:
    return bus.batches("status")[-1].events[0]["sources"]

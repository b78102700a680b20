"""The control server's request handling (no bus: ``handle`` is the whole protocol)."""

from __future__ import annotations

import asyncio
import json

import msgpack
import pytest

from netevents.agent.control import ControlServer, decode_request
from netevents.agent.ipstats import build
from netevents.errors import ConfigError


def serve(server: ControlServer, payload: bytes) -> bytes:
    return asyncio.run(server.handle(payload))


def server_with_ipstats():
    server = ControlServer(bus=None, site="local", host="h1")
    collector = build({"level": "default"})
    server.register_source(collector)
    return server, collector


def test_level_switch_is_answered_with_the_new_state():
    server, collector = server_with_ipstats()
    reply = json.loads(serve(server, b'{"cmd": "level", "value": "diagnostics"}'))
    assert reply == {"ok": True, "site": "local", "host": "h1", "cmd": "level",
                     "result": {"source": "ipstats", "level": "diagnostics", "previous": "default"}}
    assert collector.level == "diagnostics"


def test_msgpack_request_gets_a_msgpack_reply():
    server, collector = server_with_ipstats()
    reply = msgpack.unpackb(serve(server, msgpack.packb({"cmd": "level", "value": "diagnostics"})))
    assert reply["ok"] is True and collector.level == "diagnostics"


@pytest.mark.parametrize("payload, fragment", [
    (b'{"cmd": "level", "value": "verbose"}', "unknown level 'verbose'"),
    (b'{"cmd": "level", "value": 3}', "level must be a string"),
    (b'{"cmd": "reboot"}', "unknown command 'reboot'"),
    (b'{"value": 1}', "no 'cmd'"),
    (b"[1, 2]", "neither JSON nor msgpack"),
    (b"{nope", "not valid JSON"),
    (msgpack.packb([1, 2]), "must be a map"),
    (b"\xc1", "neither JSON nor msgpack"),
])
def test_bad_requests_get_an_error_reply_and_change_nothing(payload, fragment):
    server, collector = server_with_ipstats()
    raw = serve(server, payload)
    try:
        reply = json.loads(raw)
    except ValueError:
        reply = msgpack.unpackb(raw)
    assert reply["ok"] is False and fragment in reply["error"]
    assert collector.level == "default"
    assert server.served["error"] == 1


def test_commands_are_listed_and_cannot_be_registered_twice():
    server, _ = server_with_ipstats()
    reply = json.loads(serve(server, b'{"cmd": "commands"}'))
    assert reply["result"] == {"commands": ["commands", "level"]}
    with pytest.raises(ValueError, match="already registered"):
        server.register("level", lambda req: {})


def test_a_broken_handler_is_an_error_reply():
    server = ControlServer(bus=None, site="local", host="h1")
    server.register("boom", lambda req: 1 / 0)
    reply = json.loads(serve(server, b'{"cmd": "boom"}'))
    assert reply["ok"] is False and "ZeroDivisionError" in reply["error"]


def test_oversized_request_is_refused():
    with pytest.raises(Exception, match="larger than"):
        decode_request(b"{" + b" " * 70000 + b"}")


@pytest.mark.parametrize("section, fragment", [
    ({"intervall": 5}, r"\[ipstats\] intervall: unknown option"),
    ({"interval": 0}, "ipstats.interval"),
    ({"level": "loud"}, "ipstats.level"),
    ({"max_peers": 0}, "ipstats.max_peers"),
    ({"families": ["ipx"]}, "ipstats.families"),
])
def test_config_errors_name_the_option(section, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build(section)


# -- only an operator commands an agent ------------------------------------------------------

def signed_server():
    from netevents.auth import new_operator_key

    private, public = new_operator_key()
    server = ControlServer(bus=None, site="dc1", host="web-2", trusted_keys=public)
    collector = build({"level": "default"})
    server.register_source(collector)
    return server, collector, private


def request(private, host="web-2", site="dc1", value="diagnostics", now=None, **change):
    from netevents.agent.control import signed_request
    from netevents.auth import load_signing_key

    req = signed_request(load_signing_key(private), site, host, "level", value, now=now)
    req.update(change)
    return json.dumps(req).encode()


def test_a_signed_request_is_served_once():
    server, collector, private = signed_server()
    payload = request(private)
    assert json.loads(serve(server, payload))["ok"] and collector.level == "diagnostics"
    collector.set_level("default")
    again = json.loads(serve(server, payload))  # a replay (a stream redelivery, a reader's copy)
    assert not again["ok"] and "served already" in again["error"]
    assert collector.level == "default" and server.refused["replay"] == 1


@pytest.mark.parametrize("how, reason", [
    ("unsigned", "unsigned"), ("other-key", "signature"), ("other-host", "target"),
    ("old", "stale"), ("tampered", "signature"),
])
def test_requests_not_from_an_operator_now_for_this_host_change_nothing(how, reason):
    import time

    from netevents.auth import new_operator_key

    server, collector, private = signed_server()
    payload = {
        "unsigned": lambda: b'{"cmd": "level", "value": "diagnostics"}',
        "other-key": lambda: request(new_operator_key()[0]),
        "other-host": lambda: request(private, host="web-1"),
        "old": lambda: request(private, now=time.time() - 3600),
        "tampered": lambda: request(private, value="default", cmd="level", host="web-2", nonce="f" * 24),
    }[how]()
    reply = json.loads(serve(server, payload))
    assert not reply["ok"] and reply["error"].startswith("refused")
    assert server.refused[reason] == 1 and collector.level == "default"


def test_an_authenticated_agent_without_keys_refuses_and_never_answers_a_jetstream_subject():
    class FakeBus:
        user = "agent.dc1.web-2"

    server = ControlServer(bus=FakeBus(), site="dc1", host="web-2")
    reply = json.loads(serve(server, b'{"cmd": "commands"}'))
    assert not reply["ok"] and "trusts no operator key" in reply["error"]

    class Msg:
        data = b'{"cmd": "commands"}'
        reply = "$JS.ACK.NETEVENTS_EVENTS.archive-drop.1.2.3.4.5"
        answered = []

        async def respond(self, payload):
            self.answered.append(payload)

    msg = Msg()
    asyncio.run(server._on_msg(msg))
    assert msg.answered == [] and server.refused["reply"] == 1

"""The control server's request handling (no bus: ``handle`` is the whole protocol)."""

from __future__ import annotations

import asyncio
import json

import msgpack
import pytest

from agents.control import ControlServer, decode_request
from agents.ipstats import build
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

"""The way in of core subscriptions (netevents/bus/inbound.py): the C scan against the Python one,
the reader against nats-py's own parser, and a real server's traffic through the reader."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.errors import ProtocolError
from nats.protocol.parser import Parser

from netevents import connect
from netevents.bus import inbound
from netevents.codec import Batch

cnats = pytest.importorskip("netevents.bus._cnats", reason="the C reader extension is not built")

HDR = b"NATS/1.0\r\nNats-Msg-Id: h:r:drop:1\r\n\r\n"


def msg(subject=b"netevents.v1.drop.s.h", sid=1, payload=b"x", reply=b"", headers=None, sep=b" "):
    args = [subject, str(sid).encode()] + ([reply] if reply else [])
    if headers is None:
        return b"MSG " + sep.join(args + [str(len(payload)).encode()]) + b"\r\n" + payload + b"\r\n"
    sizes = [str(len(headers)).encode(), str(len(headers) + len(payload)).encode()]
    return b"HMSG " + sep.join(args + sizes) + b"\r\n" + headers + payload + b"\r\n"


OTHER_OPS = [b"PING\r\n", b"PONG\r\n", b"+OK\r\n", b"-ERR 'Stale Connection'\r\n",
             b'INFO {"server_id":"x","max_payload":8388608}\r\n']
ops = st.one_of(
    st.builds(msg, subject=st.sampled_from([b"a", b"netevents.v1.frame.dc1.web-1", b"_INBOX.x.y"]),
              sid=st.integers(0, 10**9), payload=st.binary(max_size=300),
              reply=st.sampled_from([b"", b"_INBOX.abc.1"]), headers=st.sampled_from([None, HDR, b""]),
              sep=st.sampled_from([b" ", b"\t", b"  "])),
    st.sampled_from(OTHER_OPS),
    st.sampled_from([b"MSG a 1\r\n", b"MSG a x 3\r\nabc\r\n", b"HMSG a 1 9 3\r\nabc\r\n",
                     b"MSG a 1 2 3 4 5\r\n", b"MSG a -1 1\r\nx\r\n", b"MSG a 1 " + b"9" * 19 + b"\r\n",
                     b"MSGX a 1 1\r\nx\r\n", b"HMSG a 1 2\r\nxx\r\n", b"garbage\r\n"]))


@settings(max_examples=300, deadline=None)
@given(st.lists(ops, max_size=8))
def test_the_c_scan_reads_every_prefix_of_a_stream_as_the_python_scan_does(stream) -> None:
    data = b"".join(stream)
    for cut in range(len(data) + 1):
        prefix = bytearray(data[:cut])
        assert cnats.scan(prefix) == inbound.scan_py(prefix), (cut, data)


def test_scan_stops_where_a_message_is_incomplete_or_something_else_starts() -> None:
    one, two = msg(payload=b"abc"), msg(sid=2, payload=b"\r\n\r\n", headers=HDR, reply=b"r.1")
    assert cnats.scan(one + two) == (len(one + two), [
        (1, b"netevents.v1.drop.s.h", b"", b"abc", None),
        (2, b"netevents.v1.drop.s.h", b"r.1", b"\r\n\r\n", HDR)], inbound.END)
    assert cnats.scan(one + two[:-1]) == (len(one), [(1, b"netevents.v1.drop.s.h", b"", b"abc", None)],
                                          inbound.END)
    assert cnats.scan(one + b"PING\r\n" + two)[::2] == (len(one), inbound.OTHER)
    assert cnats.scan(b"MSG a 1 x 2 3\r\nab\r\n")[::2] == (0, inbound.MALFORMED)
    assert cnats.scan(b"HMSG a 1 5 3\r\nabc\r\n")[::2] == (0, inbound.MALFORMED)  # headers > total
    assert cnats.scan(b"MSG a 1 " + b"1" * 5000) == (0, [], inbound.MALFORMED)   # no line end
    assert cnats.scan(b"HMS") == (0, [], inbound.END)   # an op cut by the read: wait
    assert cnats.scan(memoryview(b"")) == (0, [], inbound.END)


class FakeClient:
    """What the reader touches of nats-py's Client, recording what reaches nats-py."""

    def __init__(self) -> None:
        self.stats = {"in_msgs": 0, "in_bytes": 0}
        self._ps = Parser(self)
        self.log: list[tuple] = []

    async def _process_msg(self, sid, subject, reply, data, headers):
        self.log.append(("msg", sid, subject, reply, data, headers))

    async def _process_ping(self):
        self.log.append(("ping",))

    async def _process_pong(self):
        self.log.append(("pong",))

    async def _process_info(self, info):
        self.log.append(("info", json.dumps(info, sort_keys=True)))

    async def _process_err(self, err):
        self.log.append(("err", err))

    async def _error_cb(self, exc):
        self.log.append(("error", type(exc).__name__))


GOOD_OPS = st.one_of(
    st.builds(msg, sid=st.sampled_from([1, 2, 3]), payload=st.binary(max_size=200),
              reply=st.sampled_from([b"", b"_INBOX.abc.1"]), headers=st.sampled_from([None, HDR])),
    st.sampled_from(OTHER_OPS))


@settings(max_examples=200, deadline=None)
@given(st.lists(GOOD_OPS, max_size=12), st.lists(st.integers(1, 400), min_size=1, max_size=30))
def test_the_reader_delivers_what_nats_py_parser_delivers_in_the_same_order(stream, cuts) -> None:
    """Any stream in any chunks: routed sids (1, 2) to their handler, the rest (3, PING, INFO...)
    to nats-py's methods, all in the order of the stream."""
    data = b"".join(stream)

    async def read(install: bool) -> list[tuple]:
        nc = FakeClient()
        if install:
            table = inbound.routes(nc)
            for sid in (1, 2):
                table[sid] = lambda subject, payload, sid=sid: nc.log.append(
                    ("msg", sid, subject, b"", payload, None))
        pos, k = 0, 0
        while pos < len(data):
            n = cuts[k % len(cuts)]
            await nc._ps.parse(data[pos:pos + n])
            pos, k = pos + n, k + 1
        assert not nc._ps.buf   # everything was read
        return nc.log

    theirs = asyncio.run(read(False))
    ours = asyncio.run(read(True))
    # a routed message's handler gets (subject, payload): the rest of nats-py's record is not its
    assert ours == [e if e[0] != "msg" or e[1] == 3 else ("msg", e[1], e[2], b"", e[4], None)
                    for e in theirs]


def test_a_malformed_message_line_is_nats_py_protocol_error() -> None:
    async def main():
        nc = FakeClient()
        inbound.routes(nc)[1] = lambda *a: None
        await nc._ps.parse(msg(payload=b"ok") + b"MSG a 1 x 2 3\r\n")

    with pytest.raises(ProtocolError):
        asyncio.run(main())


def test_a_handler_that_raises_goes_to_the_error_callback_and_reading_goes_on() -> None:
    async def main():
        nc = FakeClient()
        got = []

        def handler(subject, payload):
            if payload == b"bad":
                raise ValueError("boom")
            got.append(payload)

        inbound.routes(nc)[1] = handler
        await nc._ps.parse(msg(payload=b"a") + msg(payload=b"bad") + msg(payload=b"b"))
        return got, nc.log, nc.stats

    got, log, stats = asyncio.run(main())
    assert got == [b"a", b"b"] and log == [("error", "ValueError")]
    assert stats == {"in_msgs": 3, "in_bytes": 5}


def test_a_real_servers_traffic_comes_through_the_reader(nats_url) -> None:
    """Batches of a core subscription, a request's reply (nats-py's path) and PONGs (flush) on
    one connection, in many reads: every batch arrives, in order, and nothing else breaks."""
    n = 3000

    async def main():
        async with connect(nats_url) as pub, connect(nats_url) as bus:
            async with bus.subscribe(kinds=["drop"]) as sub:
                ps = bus.nc._ps
                assert ps.parse.__qualname__.startswith("_install_reader")   # ours is in place
                async def echo(m):
                    await m.respond(m.data)

                responder = await pub.nc.subscribe("svc.echo", cb=echo)
                await pub.nc.flush()
                for seq in range(1, n + 1):
                    await pub.publish(Batch(kind="drop", site="dc1", host="web-1", run="r",
                                            seq=seq, t0=1, t1=2, events=[
                                                {"count": seq, "source": "counter",
                                                 "reason": "QDISC_DROP" * (seq % 7)}]))
                    if seq % 500 == 0:
                        reply = await bus.nc.request("svc.echo", b"seq %d" % seq, timeout=5)
                        assert reply.data == b"seq %d" % seq
                        await bus.nc.flush(timeout=5)
                got = [await sub.next(10) for _ in range(n)]
                await responder.unsubscribe()
                return got, sub.missed, sum(sub.rejected.values()), bus.nc.stats["in_msgs"]

    got, missed, rejected, in_msgs = asyncio.run(main())
    assert [b.seq for b in got] == list(range(1, n + 1))
    assert [b.events[0]["count"] for b in got] == list(range(1, n + 1))
    assert missed == 0 and rejected == 0
    assert in_msgs == n + n // 500   # the batches and the replies


def test_the_reader_goes_on_after_the_server_is_killed_and_restarted(tmp_path) -> None:
    """A reconnect resets nats-py's parser (a new buffer, maybe a message cut in half): the
    reader reads the new connection's messages, and the sequence tracker counts what was
    published while the subscriber was away."""
    import os
    import signal

    from netevents.bus import EmbeddedServer
    from tests.deploy.servers import free_port

    server = EmbeddedServer(tmp_path / "store", port=free_port())
    url = server.start_blocking()

    def drop(seq):
        return Batch(kind="drop", site="dc1", host="web-1", run="r", seq=seq, t0=1, t1=2,
                     events=[{"count": seq, "source": "counter", "reason": "X" * 2000}])

    async def main():
        async with connect(url) as bus:
            async with bus.subscribe(kinds=["drop"]) as sub:
                async with connect(url, name="before") as pub:
                    for seq in range(1, 501):
                        await pub.publish(drop(seq))
                    await pub.flush()
                    before = [await sub.next(10) for _ in range(500)]
                os.kill(server.proc.pid, signal.SIGKILL)
                server.proc.wait()
                await asyncio.sleep(1)
                await asyncio.to_thread(server.start_blocking)
                for _ in range(100):   # the subscriber's connection comes back by itself
                    if bus.nc.is_connected:
                        break
                    await asyncio.sleep(0.1)
                await bus.nc.flush(timeout=10)   # its SUB is in place before the publishing
                async with connect(url, name="after") as pub:
                    for seq in range(601, 1101):   # 100 published while it was away
                        await pub.publish(drop(seq))
                    await pub.flush()
                    after = [await sub.next(10) for _ in range(500)]
                assert bus.nc._ps.parse.__qualname__.startswith("_install_reader")  # still ours
                return before, after, sub.missed, sum(sub.rejected.values()), bus.errors

    try:
        before, after, missed, rejected, errors = asyncio.run(main())
    finally:
        server.stop_blocking()
    assert [b.seq for b in before] == list(range(1, 501))
    assert [b.seq for b in after] == list(range(601, 1101))
    assert after[0].missed == 100 and missed == 100 and rejected == 0
    assert errors["disconnected"] >= 1

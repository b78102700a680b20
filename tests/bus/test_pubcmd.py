"""The one-copy publish commands (netevents/bus/pubcmd.py) against nats-py's own."""

from __future__ import annotations

import asyncio
import importlib

import nats.errors
import pytest

from netevents.bus import pubcmd

nats_command = pytest.importorskip("nats.protocol.command")


def _theirs():
    return importlib.reload(nats_command)  # nats-py's functions, as shipped


@pytest.mark.parametrize("payload", [b"", b"x", b"\r\n", bytes(range(256)) * 4000,
                                     bytearray(b"abc"), memoryview(b"view")])
@pytest.mark.parametrize("reply", ["", "_INBOX.u.abc.1"])
def test_same_bytes_as_nats_py(payload, reply) -> None:
    theirs = _theirs()
    hdr = bytearray(b"NATS/1.0\r\nNats-Msg-Id: h:r:frame:12:abc\r\n\r\n")
    assert pubcmd.pub_cmd("netevents.v1.frame.s.h", reply, payload) == \
        theirs.pub_cmd("netevents.v1.frame.s.h", reply, payload)
    assert pubcmd.hpub_cmd("netevents.v1.frame.s.h", reply, hdr, payload) == \
        theirs.hpub_cmd("netevents.v1.frame.s.h", reply, hdr, payload)


def test_install_only_over_equivalent_functions(monkeypatch) -> None:
    theirs = _theirs()
    monkeypatch.setattr(pubcmd, "_installed", False)
    # a nats-py whose command differs is left alone
    monkeypatch.setattr(theirs, "hpub_cmd", lambda subject, reply, hdr, payload: b"other")
    assert pubcmd.install() is False
    assert theirs.hpub_cmd is not pubcmd.hpub_cmd
    # so is one with another signature
    monkeypatch.setattr(theirs, "hpub_cmd", lambda s, r, h, p, x=0: b"")
    assert pubcmd.install() is False
    _theirs()
    assert pubcmd.install() is True
    assert nats_command.hpub_cmd is pubcmd.hpub_cmd and nats_command.pub_cmd is pubcmd.pub_cmd
    assert pubcmd.install() is True  # once per process


def test_encoded_parts_give_the_same_command_as_bytes() -> None:
    import msgpack

    from netevents.codec import Batch, EncodedParts, PackedColumns, encode_batch

    cols = {"ts": [1, 2, 3], "head": [b"a", b"bb", b"ccc"]}
    released = []

    def batch(events):
        return Batch(kind="frame", site="s", host="h", run="r", seq=1, t0=1, t1=3,
                     events=events, fields={"iface": "eth0"})

    body = msgpack.packb(cols, use_bin_type=True)
    whole = encode_batch(batch(PackedColumns(body, 3)))
    lent = PackedColumns(None, 3, [body[:5], memoryview(body)[5:]], lambda: released.append(1))
    enc = encode_batch(batch(lent), parts=True)
    assert isinstance(enc, EncodedParts) and len(enc) == len(whole) and bytes(enc) == whole
    hdr = bytearray(b"NATS/1.0\r\nNats-Msg-Id: x\r\n\r\n")
    assert pubcmd.hpub_cmd("a.b", "_INBOX.1", hdr, enc) == pubcmd.hpub_cmd("a.b", "_INBOX.1", hdr, whole)
    assert pubcmd.pub_cmd("a.b", "", enc) == pubcmd.pub_cmd("a.b", "", whole)
    del lent
    assert not released  # the encoded parts still lend the buffers
    del enc
    assert released == [1]


def _client(sent: list):
    from nats.aio.client import Client

    nc = Client()
    nc._status = Client.CONNECTED
    nc._max_payload = 1 << 20

    async def send(cmd, priority=False):
        sent.append(bytes(cmd))

    nc._send_command = send
    return nc


@pytest.mark.parametrize("payload", [b"", b"x\r\n", bytes(range(256)) * 100])
def test_a_publish_with_an_id_sends_what_nats_py_sends(payload) -> None:
    pubcmd.install()
    ours, theirs = [], []
    msg_id = "web-1:3f2a:frame:17:" + "ab" * 16
    subject = "netevents.v1.frame.dc1.web-1"
    nc = _client(ours)
    assert asyncio.run(pubcmd.publish_with_id(nc, subject, payload, msg_id)) is True
    ref = _client(theirs)
    asyncio.run(ref.publish(subject, payload, headers={"Nats-Msg-Id": msg_id}))
    assert ours == theirs and len(ours) == 1
    assert nc.stats["out_msgs"] == ref.stats["out_msgs"] == 1
    assert nc.stats["out_bytes"] == ref.stats["out_bytes"] == len(payload)


def test_a_publish_with_an_id_raises_what_nats_py_raises_or_leaves_it_to_nats_py() -> None:
    from nats.aio.client import Client

    pubcmd.install()
    sent = []
    nc = _client(sent)
    with pytest.raises(nats.errors.MaxPayloadError):
        asyncio.run(pubcmd.publish_with_id(nc, "s.t", b"x" * (nc._max_payload + 1), "id"))
    nc._status = Client.CLOSED
    with pytest.raises(nats.errors.ConnectionClosedError):
        asyncio.run(pubcmd.publish_with_id(nc, "s.t", b"x", "id"))
    nc._status = Client.CONNECTED
    # an id nats-py would rewrite (spaces stripped, line ends removed) goes through nats-py
    for odd in (" id", "a\r\nX-Evil: 1", "", "é"):
        assert asyncio.run(pubcmd.publish_with_id(nc, "s.t", b"x", odd)) is False
    assert sent == []

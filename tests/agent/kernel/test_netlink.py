"""The sans-IO netlink module: headers and attributes round trip, NLMSG_ERROR becomes the
project's NetlinkError naming the errno, and short or lying input is a NetlinkError too."""

from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netevents.agent.kernel import netlink as nl
from netevents.errors import NeteventsError, NetlinkError


def _nlmsgerr(err: int, seq: int = 7) -> bytes:
    """An NLMSG_ERROR as the kernel sends it: the error and the request's header."""
    return nl.pack_message(nl.NLMSG_ERROR, 0, seq,
                           nl.NLMSGERR.pack(err) + nl.NLMSG_HDR.pack(20, 0x1D, 5, seq, 0))


def _family_answer() -> bytes:
    groups = nl.pack_attr(nl.CTRL_ATTR_MCAST_GROUPS | nl.NLA_F_NESTED,
                          nl.pack_attr(1 | nl.NLA_F_NESTED,
                                       nl.pack_attr(nl.CTRL_ATTR_MCAST_GRP_NAME, b"events\0")
                                       + nl.pack_attr(nl.CTRL_ATTR_MCAST_GRP_ID,
                                                      struct.pack("=I", 4))))
    attrs = (nl.pack_attr(nl.CTRL_ATTR_FAMILY_ID, struct.pack("=H", 0x1D))
             + nl.pack_attr(nl.CTRL_ATTR_FAMILY_NAME, b"NET_DM\0") + groups)
    return nl.genl_request(nl.GENL_ID_CTRL, nl.CTRL_CMD_NEWFAMILY, attrs, seq=3, flags=0)


def test_the_header_round_trips():
    msg = nl.pack_message(20, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, 42, b"abcdefgh", pid=9)
    assert nl.NLMSG_HDR.unpack_from(msg) == (24, 20, 0x301, 42, 9)
    (m,) = nl.messages(msg)
    assert (m.type, m.flags, m.seq, m.pid, bytes(m.body)) == (20, 0x301, 42, 9, b"abcdefgh")


def test_messages_of_any_length_are_walked_past_their_padding():
    bodies = [b"", b"x", b"xy", b"xyz", b"wxyz", b"12345"]
    buf = b""
    for i, body in enumerate(bodies):
        msg = nl.pack_message(0x10 + i, 0, i, body)
        buf += msg + b"\0" * (nl.align(len(msg)) - len(msg))
    out = list(nl.messages(buf))
    assert [(m.type, m.seq, bytes(m.body)) for m in out] == \
        [(0x10 + i, i, body) for i, body in enumerate(bodies)]


def test_attributes_round_trip_with_padding_and_flags_masked():
    payloads = [b"", b"\1", b"\1\2", b"\1\2\3", b"\1\2\3\4", b"\1\2\3\4\5"]
    data = b"".join(nl.pack_attr(t, p) for t, p in enumerate(payloads, 1))
    data += nl.pack_attr(9 | nl.NLA_F_NESTED, nl.pack_attr(1, b"in"))
    assert all(len(nl.pack_attr(1, p)) % 4 == 0 for p in payloads)
    walked = [(t, bytes(v)) for t, v in nl.attrs(data)]
    assert walked[:-1] == list(enumerate(payloads, 1))
    nested_type, nested = walked[-1]
    assert nested_type == 9
    assert [(t, bytes(v)) for t, v in nl.attrs(nested)] == [(1, b"in")]


def test_attribute_values():
    for size, fmt in ((1, "=B"), (2, "=H"), (4, "=I"), (8, "=Q")):
        value = (1 << (8 * size)) - 2
        assert nl.attr_uint(struct.pack(fmt, value)) == value
    with pytest.raises(NetlinkError, match="PC: integer of 3 bytes"):
        nl.attr_uint(b"\0\0\0", "PC")
    assert nl.attr_str(memoryview(b"eth0\0junk")) == "eth0"
    assert nl.attr_str(b"no-nul") == "no-nul"


def test_nlmsg_error_becomes_the_project_error_naming_the_errno():
    (m,) = nl.messages(_nlmsgerr(-errno.EBUSY))
    assert m.type == nl.NLMSG_ERROR
    assert nl.error_of(m.body) == errno.EBUSY
    with pytest.raises(NetlinkError) as info:
        nl.check_error(m.body, "NET_DM")
    assert isinstance(info.value, NeteventsError)
    assert info.value.errno == errno.EBUSY
    assert "EBUSY" in str(info.value) and str(info.value).startswith("NET_DM")


def test_an_ack_is_not_an_error():
    (m,) = nl.messages(_nlmsgerr(0))
    assert nl.error_of(m.body) == 0
    assert nl.check_error(m.body) is None


def test_an_nlmsg_error_without_its_code_is_a_netlink_error():
    (m,) = nl.messages(nl.pack_message(nl.NLMSG_ERROR, 0, 1, b"\xff\xff"))
    with pytest.raises(NetlinkError, match="no error code") as info:
        nl.check_error(m.body)
    assert info.value.errno is None


def test_a_lying_message_length_is_a_netlink_error_naming_the_offset():
    first = nl.pack_message(0x10, 0, 1, b"abcd")
    second = bytearray(nl.pack_message(0x10, 0, 2, b"efgh"))
    struct.pack_into("=I", second, 0, 64)
    with pytest.raises(NetlinkError, match="offset 20 claims 64 bytes, 20 available"):
        list(nl.messages(first + bytes(second)))
    struct.pack_into("=I", second, 0, 8)  # shorter than its own header
    with pytest.raises(NetlinkError, match="offset 20 claims 8 bytes"):
        list(nl.messages(first + bytes(second)))
    with pytest.raises(NetlinkError, match="3 trailing bytes"):
        list(nl.messages(first + b"\1\2\3"))


def test_a_lying_attribute_length_is_a_netlink_error():
    data = bytearray(nl.pack_attr(1, b"abcd") + nl.pack_attr(2, b"efgh"))
    struct.pack_into("=H", data, 8, 40)
    with pytest.raises(NetlinkError, match="NET_DM: attribute type 2 at offset 8 has length 40"):
        list(nl.attrs(bytes(data), "NET_DM"))
    struct.pack_into("=H", data, 8, 2)
    with pytest.raises(NetlinkError, match="has length 2"):
        list(nl.attrs(bytes(data)))


def _decode_everything(buf: bytes) -> list:
    """What a reader does with a datagram: messages, their error or genl header, attributes."""
    out = []
    for m in nl.messages(buf):
        if m.type == nl.NLMSG_ERROR:
            out.append(nl.error_of(m.body))
        elif m.type == nl.GENL_ID_CTRL:
            out.append(nl.nlctrl_family(nl.genl_header(m.body)[2]))
        else:
            out.append([(t, bytes(v)) for t, v in nl.attrs(nl.genl_header(m.body)[2])])
    return out


def test_every_truncation_is_a_netlink_error_or_a_clean_prefix():
    buf = (_family_answer() + _nlmsgerr(-errno.ENOENT)
           + nl.genl_request(0x1D, 5, nl.pack_attr(2, struct.pack("=Q", 1)), seq=4))
    whole = _decode_everything(buf)
    for cut in range(len(buf)):
        try:
            part = _decode_everything(buf[:cut])
        except NetlinkError:
            continue
        assert part == whole[:len(part)]
    for cut in range(len(buf)):
        lying = bytearray(buf[:cut])
        if len(lying) >= 4:
            struct.pack_into("=I", lying, 0, len(buf))  # the first header claims everything
            with pytest.raises(NetlinkError):
                _decode_everything(bytes(lying))


def test_generic_netlink_request_and_nlctrl_answer():
    req = nl.genl_request(nl.GENL_ID_CTRL, nl.CTRL_CMD_GETFAMILY,
                          nl.pack_attr(nl.CTRL_ATTR_FAMILY_NAME, b"NET_DM\0"), seq=5, version=2)
    (m,) = nl.messages(req)
    assert (m.type, m.flags, m.seq) == (nl.GENL_ID_CTRL, nl.NLM_F_REQUEST | nl.NLM_F_ACK, 5)
    cmd, version, attrs = nl.genl_header(m.body)
    assert (cmd, version) == (nl.CTRL_CMD_GETFAMILY, 2)
    assert [(t, nl.attr_str(v)) for t, v in nl.attrs(attrs)] == [(nl.CTRL_ATTR_FAMILY_NAME, "NET_DM")]
    (fam,) = _decode_everything(_family_answer())
    assert (fam.id, fam.name, fam.groups) == (0x1D, "NET_DM", {"events": 4})
    with pytest.raises(NetlinkError, match="no genl header"):
        nl.genl_header(memoryview(b"\1\2"))


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_but_netlink_error(data):
    try:
        _decode_everything(data)
    except NetlinkError:
        pass
    try:
        list(nl.attrs(data))
        nl.nlctrl_family(memoryview(data))
    except NetlinkError:
        pass

"""The NET_DM decoder against dwdump's sample capture, checked field by field with tshark."""

from __future__ import annotations

import asyncio
import calendar
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from netevents.agent.drops import dwdump, netdm
from netevents.agent.kernel.netlink import NETLINK_GENERIC
from netevents.errors import CapabilityError, CodecError, ConfigError, NetlinkError
from netevents.memory import MemoryBus

SAMPLE = Path(__file__).resolve().parent / "testdata" / "net_dm" / "dwdump-sample.pcap"
"""dropwatch's dwdump capture format (testdata/net_dm/README.md says what each frame holds)."""

FIELDS = ["frame.number", "net_dm.cmd", "net_dm.pc", "net_dm.symbol", "net_dm.port.netdev_index",
          "net_dm.port.netdev_name", "net_dm.timestamp", "net_dm.proto", "net_dm.orig_len",
          "net_dm.origin", "net_dm.hw_trap_group_name", "net_dm.hw_trap_name",
          "net_dm.stats.dropped"]


def _tshark_frames() -> dict[int, dict[str, str]]:
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    cmd = ["tshark", "-r", str(SAMPLE), "-T", "fields", "-E", "separator=|"]
    for f in FIELDS:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    frames = {}
    for line in out.splitlines():
        values = dict(zip(FIELDS, line.split("|"), strict=True))
        frames[int(values["frame.number"])] = values
    return frames


def _tshark_time_ns(text: str) -> int:
    # "Nov 23, 2025 12:13:20.123456789 UTC"
    whole, frac = text.removesuffix(" UTC").rsplit(".", 1)
    secs = calendar.timegm(time.strptime(whole, "%b %d, %Y %H:%M:%S"))
    return secs * 1_000_000_000 + int(frac.ljust(9, "0"))


def _frames_decoded() -> dict[int, list[netdm.NetDmMessage]]:
    linktype, records = dwdump.read_pcap(SAMPLE.read_bytes())
    assert linktype == dwdump.DLT_NETLINK
    return {n: netdm.decode_messages(r.data[dwdump.COOKED.size:])
            for n, r in enumerate(records, 1)}


def test_packet_alerts_match_tshark():
    ts = _tshark_frames()
    dec = _frames_decoded()
    for n in (2, 3, 4):
        (m,) = dec[n]
        t = ts[n]
        assert m.cmd == int(t["net_dm.cmd"]) == netdm.NET_DM_CMD_PACKET_ALERT
        if t["net_dm.pc"]:
            assert m.pc == int(t["net_dm.pc"], 16)
            assert m.symbol == t["net_dm.symbol"]
        else:
            assert m.pc is None and m.symbol is None
        assert m.ifindex == int(t["net_dm.port.netdev_index"])
        assert m.iface == t["net_dm.port.netdev_name"]
        assert m.timestamp == _tshark_time_ns(t["net_dm.timestamp"])
        assert m.proto == int(t["net_dm.proto"], 16)
        assert m.orig_len == int(t["net_dm.orig_len"])
        assert m.origin == ("hw" if int(t["net_dm.origin"]) == 1 else "sw")
        assert (m.hw_group or "") == t["net_dm.hw_trap_group_name"]
        assert (m.hw_trap or "") == t["net_dm.hw_trap_name"]
        assert m.payload is not None and len(m.payload) == m.orig_len


def test_reason_attribute_tshark_does_not_know():
    dec = _frames_decoded()
    assert dec[2][0].reason == "NETFILTER_DROP"
    assert dec[3][0].reason == "NO_SOCKET"
    assert dec[4][0].reason is None and dec[4][0].hw_trap == "blackhole_route"


def test_stats_match_tshark():
    (m,) = _frames_decoded()[6]
    assert m.cmd == netdm.NET_DM_CMD_STATS_NEW
    assert m.dropped == int(_tshark_frames()[6]["net_dm.stats.dropped"]) == 42


def test_summary_alert_matches_readme():
    (m,) = _frames_decoded()[5]
    assert m.cmd == netdm.NET_DM_CMD_ALERT
    assert [(p.pc, p.count) for p in m.points] == [(0xffffffff81a2b3c4, 17),
                                                   (0xffffffffa0123456, 5)]


def test_nlctrl_announcement_names_the_family():
    (m,) = _frames_decoded()[1]
    assert (m.family_name, m.family_id) == ("NET_DM", 0x1D)


def test_truncated_and_lying_messages_raise_netlink_error():
    _, records = dwdump.read_pcap(SAMPLE.read_bytes())
    msg = records[1].data[dwdump.COOKED.size:]
    for cut in (10, 20, 30, 60, len(msg) - 1):
        with pytest.raises(NetlinkError):
            bad = bytearray(msg[:cut])
            struct.pack_into("=I", bad, 0, len(msg))  # claims more than it has
            netdm.decode_messages(bytes(bad))
    lying = bytearray(records[4].data[dwdump.COOKED.size:])
    struct.pack_into("=I", lying, 24, 1000)  # net_dm_alert_msg entries
    with pytest.raises(NetlinkError, match="drop points"):
        netdm.decode_messages(bytes(lying))


def test_samples_resolve_summary_pcs_with_kallsyms():
    from netevents.agent.kernel.kallsyms import Kallsyms
    ks = Kallsyms.from_lines(["ffffffff81a2b000 T __udp4_lib_rcv", "ffffffffa0123000 t nft_do_chain"])
    (m,) = _frames_decoded()[5]
    samples = netdm.samples_of(m, ks)
    assert [(s.location, s.count) for s in samples] == [("__udp4_lib_rcv+0x3c4", 17),
                                                        ("nft_do_chain+0x456", 5)]


def test_netdm_collector_reports_missing_drop_monitor():
    """This kernel has no CONFIG_NET_DROP_MONITOR: one clear CapabilityError, nothing else."""
    import socket
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
    except OSError:
        pytest.skip("no generic netlink")
    c = netdm.NetDmDrops()
    with s:
        try:
            c.resolve_family(s)
        except CapabilityError as exc:
            assert exc.capability == "CONFIG_NET_DROP_MONITOR"
            assert "CONFIG_NET_DROP_MONITOR" in str(exc)
            return
    pytest.skip("this kernel has NET_DM")


def test_tail_drop_accounting():
    class Sink:
        lost_n: dict = {}

        def lost(self, place, n):
            self.lost_n[place] = self.lost_n.get(place, 0) + n

    sink = Sink()
    c = netdm.NetDmDrops()
    for v in (5, 5, 12, 40):
        c.account_stats(v, sink)
    assert sink.lost_n["netdm.tail_drop"] == 35  # 5 were dropped before we started


# -- dwdump import -------------------------------------------------------------------------------

def test_import_capture_publishes_proper_batches():
    bus = MemoryBus()
    counts = asyncio.run(dwdump.import_capture(SAMPLE, bus, site="lab", host="old-host"))
    batches = bus.batches("drop")
    assert len(batches) == counts["batches"] == 1
    b = batches[0]
    assert (b.site, b.host, b.seq) == ("lab", "old-host", 1)
    events = list(b.rows())
    assert all(e["source"] == "dwdump" for e in events)
    assert sum(e["count"] for e in events) == counts["drops"] == 3 + 17 + 5
    assert counts["tail_drops"] == 42
    nft = next(e for e in events if e.get("reason") == "NETFILTER_DROP")
    assert nft["location"] == "nft_do_chain+0x3a1" and nft["iface"] == "veth1"
    assert nft["orig_len"] == 62 and len(nft["payload"]) == 62
    assert nft["flow"]["dport"] == 7777
    hw = next(e for e in events if e.get("origin") == "hw")
    assert (hw["hw_trap"], hw["hw_group"]) == ("blackhole_route", "l3_drops")


@pytest.mark.parametrize("mangle", ["empty", "pcapng", "not_pcap", "truncated_record",
                                    "wrong_linktype"])
def test_malformed_captures_give_one_clear_error(tmp_path, mangle):
    data = SAMPLE.read_bytes()
    bad = {
        "empty": b"",
        "pcapng": b"\x0a\x0d\x0d\x0a" + data[4:],
        "not_pcap": b"hello world, this is not a capture file",
        "truncated_record": data[:-7],
        "wrong_linktype": data[:20] + struct.pack("<I", 1) + data[24:],
    }[mangle]
    path = tmp_path / "bad.pcap"
    path.write_bytes(bad)
    bus = MemoryBus()
    with pytest.raises(CodecError) as info:
        asyncio.run(dwdump.import_capture(path, bus, host="h"))
    assert len(str(info.value)) > 10
    assert bus.messages == []


def test_bad_record_inside_good_capture_is_counted_and_rest_decoded(tmp_path):
    data = bytearray(SAMPLE.read_bytes())
    # Break frame 3's netlink length (record 3 starts after 24 + 16+56 + 16+228 bytes).
    off = 24 + 16 + 56 + 16 + 228 + 16 + dwdump.COOKED.size
    struct.pack_into("<I", data, off, 5000)
    cap = dwdump.decode_capture(bytes(data))
    assert len(cap.errors) == 1 and "record 3" in cap.errors[0]
    assert sum(s.count for s in cap.samples) == 2 + 17 + 5


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        asyncio.run(dwdump.import_capture(tmp_path / "nope.pcap", MemoryBus(), host="h"))


class _Sink:
    def __init__(self):
        self.batches, self.losses = [], {}

    def emit_batch(self, kind, events, **kw):
        self.batches.append((kind, events, kw))
        return True

    def lost(self, place, n):
        self.losses[place] = self.losses.get(place, 0) + n


def test_collector_handles_recorded_messages_in_packet_mode():
    """The collector's receive path (decode -> aggregate -> one batch per window), fed the
    recorded kernel messages; only the socket is missing on this kernel."""
    _, records = dwdump.read_pcap(SAMPLE.read_bytes())
    c = netdm.NetDmDrops(mode="packet", packet_cap=2)
    c.family = 0x1D
    sink = _Sink()
    for r in records:
        c.handle(r.data[dwdump.COOKED.size:], sink)
    c.handle(b"\x10\x00\x00\x00garbage-bytes", sink)   # undecodable: counted, nothing else lost
    c.flush(sink)
    (kind, events, kw) = sink.batches[0]
    assert kind == "drop" and kw["mode"] == "packet"
    assert sum(e["count"] for e in events) == 3 + 17 + 5
    assert len([e for e in events if "payload" in e]) == 2       # the cap
    assert sink.losses == {"netdm.tail_drop": 0, "netdm.decode_error": 1, "netdm.packet_cap": 1}


def test_config_request_round_trips_through_the_decoder():
    attrs = netdm.encode_config(packet_mode=True, trunc_len=96, queue_len=500)
    msg = netdm.encode_request(0x1D, netdm.NET_DM_CMD_CONFIG_NEW, attrs)
    (m,) = netdm.decode_messages(msg, 0x1D)
    assert (m.cmd, m.alert_mode, m.trunc_len, m.queue_len) == (netdm.NET_DM_CMD_CONFIG_NEW, 1, 96, 500)


def test_collector_run_without_drop_monitor_raises_one_capability_error():
    class Sink(_Sink):
        def declare_loss(self, place):
            self.losses.setdefault(place, 0)

    sink = Sink()

    async def run():
        async with asyncio.timeout(3):   # a kernel with NET_DM would run until cancelled
            await netdm.NetDmDrops().run(sink)

    try:
        asyncio.run(run())
    except TimeoutError:
        pytest.skip("this kernel has NET_DM")
    except CapabilityError as exc:
        assert exc.capability in ("CONFIG_NET_DROP_MONITOR", "NETLINK_GENERIC")
        assert sink.batches == []
        return
    pytest.fail("NetDmDrops.run returned on a kernel without NET_DM")

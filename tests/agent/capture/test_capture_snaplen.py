"""The snap length holds, filter or not: frames longer than it on a veth pair arrive on the bus
with heads of at most snaplen bytes (``caplen`` too, ``len`` the wire length), the archive
writes them as such under an interface block that states that snap length (read by tshark).
Plus the socket program itself (bpf.py), run by a small classic BPF interpreter."""

from __future__ import annotations

import asyncio
import shutil
import socket
import struct
import subprocess
import sys

import pytest

from netevents.agent.capture import capture_config, ring_capture
from netevents.agent.capture.bpf import bus_endpoints, exclude_tcp, ring_program, snap_program
from netevents.consumers.archive.core import PcapngArchive
from tests.agent.capture.test_capture_netns import run_capture

BIG_SENDER = """
import socket, sys
dst, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(n):
    s.sendto(i.to_bytes(4, "big") + b"y" * 400, (dst, 9999))
"""


def run_bpf(prog, pkt: bytes) -> int:
    """A classic BPF interpreter for the instructions bpf.py and tcpdump -ddd use."""
    a = x = 0
    pc = 0
    while True:
        code, jt, jf, k = prog[pc]
        pc += 1
        if code in (0x20, 0x28, 0x30):                       # ld w/h/b [k]
            size = {0x20: 4, 0x28: 2, 0x30: 1}[code]
            if k + size > len(pkt):
                return 0
            a = int.from_bytes(pkt[k:k + size], "big")
        elif code in (0x40, 0x48, 0x50):                     # ld w/h/b [x + k]
            size = {0x40: 4, 0x48: 2, 0x50: 1}[code]
            if x + k + size > len(pkt):
                return 0
            a = int.from_bytes(pkt[x + k:x + k + size], "big")
        elif code == 0xB1:                                   # ldxb 4*([k]&0xf)
            x = (pkt[k] & 0xF) * 4
        elif code == 0x05:
            pc += k
        elif code in (0x15, 0x25, 0x35, 0x45):
            ok = {0x15: a == k, 0x25: a > k, 0x35: a >= k, 0x45: bool(a & k)}[code]
            pc += jt if ok else jf
        elif code == 0x06:
            return k
        elif code == 0x16:
            return a
        else:
            raise AssertionError(f"instruction {code:#x} not interpreted")


def tcp_frame(src: str, dst: str, sport: int, dport: int, v6: bool = False) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, 0x18, 1000, 0, 0) + b"z" * 300
    if v6:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64, socket.inet_pton(socket.AF_INET6, src),
                         socket.inet_pton(socket.AF_INET6, dst))
        et = b"\x86\xdd"
    else:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
        et = b"\x08\x00"
    return b"\x02" * 6 + b"\x04" * 6 + et + ip + tcp


def test_program_cuts_every_accepted_frame_to_snaplen():
    assert snap_program(None, 96) == [(0x06, 0, 0, 96)]
    udp_ret_a = [(0x28, 0, 0, 12), (0x15, 0, 3, 0x800), (0x30, 0, 0, 23), (0x15, 0, 1, 17),
                 (0x06, 0, 0, 262144), (0x06, 0, 0, 0)]
    prog = snap_program(udp_ret_a, 64)
    udp = b"\0" * 12 + b"\x08\x00" + b"\x45" + b"\0" * 8 + b"\x11" + b"\0" * 300
    assert run_bpf(prog, udp) == 64 and run_bpf(prog, udp[:23] + b"\x06" + udp[24:]) == 0
    # ret A: clamped through the appended tail
    ret_a = [(0x20, 0, 0, 0), (0x15, 0, 1, 7), (0x06, 0, 0, 0), (0x16, 0, 0, 0)]
    prog = snap_program(ret_a, 96)
    assert run_bpf(prog, (200).to_bytes(4, "big")) == 96
    assert run_bpf(prog, (50).to_bytes(4, "big")) == 50
    assert run_bpf(prog, (7).to_bytes(4, "big")) == 0


def test_bus_exclusion_refuses_the_bus_port_only():
    local = ring_program(None, 96, [(None, 4222)])
    assert run_bpf(local, tcp_frame("127.0.0.1", "127.0.0.1", 4222, 50000)) == 0
    assert run_bpf(local, tcp_frame("10.0.0.1", "127.0.0.1", 50000, 4222)) == 0
    assert run_bpf(local, tcp_frame("::1", "::1", 4222, 50000, v6=True)) == 0
    assert run_bpf(local, tcp_frame("127.0.0.1", "127.0.0.1", 4223, 50000)) == 96
    assert run_bpf(local, b"\0" * 12 + b"\x08\x06" + b"\0" * 40) == 96   # ARP passes
    remote = ring_program(None, 96, [("10.1.2.3", 4222), ("fd00::3", 4222)])
    assert run_bpf(remote, tcp_frame("10.1.2.3", "10.9.9.9", 4222, 50000)) == 0
    assert run_bpf(remote, tcp_frame("10.9.9.9", "10.1.2.3", 50000, 4222)) == 0
    assert run_bpf(remote, tcp_frame("10.9.9.9", "10.1.2.4", 50000, 4222)) == 96
    assert run_bpf(remote, tcp_frame("fd00::9", "fd00::3", 50000, 4222, v6=True)) == 0
    assert run_bpf(remote, tcp_frame("fd00::9", "fd00::4", 50000, 4222, v6=True)) == 96
    assert exclude_tcp([]) == []
    assert bus_endpoints("nats://127.0.0.1:4333") == [(None, 4333)]
    # the option keeps them, and the default leaves them out in the program workers are handed
    cfg = capture_config({"iface": "lo", "bus_traffic": True})
    cfg.exclude_bus("nats://127.0.0.1:4333")
    assert cfg.bpf is None
    cfg = capture_config({"iface": "lo"})
    cfg.exclude_bus("nats://127.0.0.1:4333")
    again = capture_config(cfg.section())
    assert run_bpf(ring_program(again.bpf, 96), tcp_frame("127.0.0.1", "127.0.0.1", 1, 4333)) == 0


@pytest.mark.integration
@pytest.mark.parametrize("snaplen,flt", [(96, None), (64, None), (64, "udp")])
def test_heads_archive_and_idb_hold_the_snap_length(netns_pair, nats_url, tmp_path, snaplen, flt):
    if flt and shutil.which("tcpdump") is None:
        pytest.skip("compiling a filter expression needs tcpdump")
    a, b, prefix = netns_pair
    section = {"iface": "veth-b", "netns": b.name, "snaplen": snaplen, "hwtstamp": False}
    if flt:
        section["filter"] = flt
    cap = ring_capture("veth-b", capture_config(section))
    out = asyncio.run(run_capture(nats_url, [cap], lambda: a.run(
        sys.executable, "-c", BIG_SENDER, f"{prefix}.2", "40", timeout=60)))
    big = [r for r in out["frames"] if r["len"] > snaplen]
    assert len([r for r in big if r["dport"] == 9999]) == 40
    assert all(len(r["head"]) <= snaplen and r["caplen"] == len(r["head"]) for r in out["frames"])
    assert {r["caplen"] for r in big} == {snaplen} and {r["len"] for r in big if r["dport"] == 9999} == {446}
    assert {fb.fields["snaplen"] for fb in out["frame_batches"]} == {snaplen}
    core = PcapngArchive()
    data = core.open_section()
    for fb in out["frame_batches"]:
        data += core.add(fb)
    data += core.close_section(out["frame_batches"][-1].t1 + 1, final=True)
    path = tmp_path / "snap.pcapng"
    path.write_bytes(data)
    if shutil.which("tshark") is None:
        pytest.skip("needs tshark to read the archive")
    fields = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "frame.cap_len",
                             "-e", "frame.len"], capture_output=True, text=True, check=True).stdout
    rows = [tuple(map(int, ln.split())) for ln in fields.splitlines() if ln.strip()]
    assert len(rows) == len(out["frames"])
    assert all(c <= snaplen for c, _n in rows) and sum(1 for c, n in rows if n == 446) == 40
    if shutil.which("capinfos") is not None:
        info = subprocess.run(["capinfos", str(path)], capture_output=True, text=True).stdout
        assert "Number of interfaces in file: 1" in info and f"Capture length = {snaplen}\n" in info, info

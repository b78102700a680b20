"""Frame, gap and drop batches built per the capture contract (netevents/events.py), for the
archive and pcapng tests: real Ethernet/IPv4/UDP heads whose ports carry the frame sequence."""

from __future__ import annotations

import struct

from netevents.codec import Batch

T0 = 1_700_000_000_123_456_789


def eth_ipv4_udp(seq: int, *, payload_len: int = 200, snap: int = 96) -> tuple[bytes, int]:
    """(head, wire length) of an Ethernet/IPv4/UDP frame whose source port is 1024 + seq % 60000
    and IP ID seq & 0xffff."""
    ip_len = 20 + 8 + payload_len
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, ip_len, seq & 0xFFFF, 0, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    udp = struct.pack("!HHHH", 1024 + seq % 60000, 9, 8 + payload_len, 0)
    eth = bytes.fromhex("02000000000202000000000108 00".replace(" ", ""))
    frame = eth + ip + udp + bytes(payload_len)
    return frame[:snap], len(frame)


def frame_batch(host: str, run: str, seq: int, first_frame: int, n: int, *, iface: str = "eth0",
                worker: int = 0, ts0: int = T0, step: int = 1000, dirs: list[int] | None = None,
                hwtstamp: dict | None = None, gaps_before: int | None = None) -> Batch:
    cols: dict[str, list] = {k: [] for k in (
        "ts", "ts_src", "caplen", "len", "dir", "queue", "rxhash", "vlan", "ethertype", "src",
        "dst", "l4", "sport", "dport", "ip_id", "tcp_seq", "head")}
    for i in range(n):
        f = first_frame + i
        head, wire = eth_ipv4_udp(f)
        cols["ts"].append(ts0 + f * step)
        cols["ts_src"].append(1)
        cols["caplen"].append(len(head))
        cols["len"].append(wire)
        cols["dir"].append(dirs[i % len(dirs)] if dirs else 0)
        cols["queue"].append(worker)
        cols["rxhash"].append((f * 2654435761) & 0xFFFFFFFF or 1)
        cols["vlan"].append(None)
        cols["ethertype"].append(0x0800)
        cols["src"].append(bytes([10, 0, 0, 1]))
        cols["dst"].append(bytes([10, 0, 0, 2]))
        cols["l4"].append(17)
        cols["sport"].append(1024 + f % 60000)
        cols["dport"].append(9)
        cols["ip_id"].append(f & 0xFFFF)
        cols["tcp_seq"].append(None)
        cols["head"].append(head)
    ts = cols["ts"]
    fields = {"iface": iface, "worker": worker, "first_frame": first_frame}
    if hwtstamp is not None:
        fields["hwtstamp"] = hwtstamp
    if gaps_before is not None:  # gap records the ring had made (agents since gaps_before)
        fields["gaps_before"] = {"records": gaps_before, "lost": 0}
    return Batch(kind="frame", site="local", host=host, run=run, seq=seq,
                 t0=ts[0] if ts else ts0, t1=ts[-1] if ts else ts0, events=cols, fields=fields)


def gap_batch(host: str, run: str, seq: int, gaps: list[tuple[int, int]], *, iface: str = "eth0",
              worker: int = 0, ts0: int = T0, step: int = 1000) -> Batch:
    """``gaps`` = [(after_frame, lost)]: ``lost`` frames lost between after_frame and after_frame+1."""
    events = [{"iface": iface, "worker": worker, "lost": lost, "after_frame": k,
               "before_frame": k + 1, "after_ts": ts0 + k * step, "before_ts": ts0 + (k + 1) * step,
               "cause": "ring_full", "source": "packet_statistics"} for k, lost in gaps]
    return Batch(kind="gap", site="local", host=host, run=run, seq=seq, t0=ts0, t1=ts0 + 1,
                 events=events)


def drop_batch(host: str, run: str, seq: int, n: int, *, ts0: int = T0) -> Batch:
    events = []
    for i in range(n):
        head, wire = eth_ipv4_udp(50_000 + i)
        events.append({"count": 1, "source": "netdm", "reason": "NETFILTER_DROP",
                       "location": "nf_hook_slow+0x8e", "iface": "veth-b", "proto": 0x0800,
                       "payload": head, "orig_len": wire, "first_ts": ts0 + i, "last_ts": ts0 + i})
    # one packet without its MAC header (an L3 drop): the archive synthesises Ethernet
    head, wire = eth_ipv4_udp(60_000)
    events.append({"count": 1, "source": "tracepoint", "reason": "NO_SOCKET",
                   "location": "__udp4_lib_rcv+0xa1f", "iface": "lo", "proto": 0x0800,
                   "payload": head[14:], "orig_len": wire - 14, "last_ts": ts0 + n})
    # and an alert-mode event (no payload): counted, not archived
    events.append({"count": 7, "source": "netdm", "reason": "TCP_CSUM", "location": "tcp_v4_rcv+0x1"})
    return Batch(kind="drop", site="local", host=host, run=run, seq=seq, t0=ts0, t1=ts0 + n + 1,
                 events=events, fields={"mode": "packet"})

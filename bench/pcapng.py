"""Frames/s written by netevents' PcapNG writer vs python-pcapng, scapy and dpkt, in one run.

    python bench/pcapng.py [--frames N] [--repeat R]

The same frames (96-byte Ethernet/IPv4/UDP heads, nanosecond timestamps, wire length, direction,
queue, rxhash, packet id) go through each writer into a file in a temporary directory; the figure is frames per second of
the writing alone (the frame columns are built beforehand, as the archive gets them from a
batch), the median of ``--repeat`` runs. Each output is read back with netevents.pcapng.read_pcapng to check it holds N packets.

What each writes per frame (so the ratios compare like with like where the library allows):
  netevents      EPB + epb_flags, epb_hash, epb_packetid, epb_queue (ns timestamps)
  python-pcapng  EPB + the same four options (ns timestamps, if_tsresol 9)
  scapy          EPB + epb_flags (direction only: all its writer supports), raw bytes in
  dpkt           EPB without options (its Writer takes bytes + a float timestamp, microseconds)

Needs the optional `bench` extra: pip install python-pcapng scapy dpkt.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

# This file is named pcapng.py: drop its own folder from the path so `import pcapng` finds the
# python-pcapng package, and put the repository root there for netevents.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from netevents.heap import keep_heap  # noqa: E402
from netevents.pcapng import PcapngWriter, pkttype_flags, read_pcapng  # noqa: E402
from tests.framegen import T0, eth_ipv4_udp  # noqa: E402

BATCH = 1024
"""Frames per batch for netevents' writer (the archive writes batch by batch)."""


def make_frames(n: int) -> dict[str, list]:
    heads, lens = [], []
    for i in range(n):
        h, w = eth_ipv4_udp(i, payload_len=200 + i % 1200)
        heads.append(h)
        lens.append(w)
    cols = {"ts": [T0 + i * 1733 for i in range(n)], "head": heads, "len": lens,
            "dir": [i % 5 for i in range(n)], "queue": [i % 4 for i in range(n)],
            "rxhash": [(i * 2654435761) & 0xFFFFFFFF or 1 for i in range(n)]}
    # The batches' own columns, as the archive gets them from each decoded batch (cut here,
    # before the timing: cutting is not the writer's work).
    cols["batches"] = [(s, {k: v[s:s + BATCH] for k, v in cols.items()})
                       for s in range(0, n, BATCH)]
    return cols


def bench_netevents(cols, path: Path) -> None:
    keep_heap()  # as `netevents archive` does
    out = open(path, "wb")
    w = PcapngWriter(userappl="bench")
    w.add_interface("eth0", description="bench", snaplen=96)
    for s, b in cols["batches"]:  # as the archive does: one frames() call + one write per batch
        w.frames(0, b["ts"], b["head"], b["len"], b["dir"], b["queue"], b["rxhash"],
                 packetid_base=1 << 40, first_frame=s)
        out.write(w.take())
    out.close()


def bench_python_pcapng(cols, path: Path) -> None:
    from pcapng import FileWriter, blocks

    out = open(path, "wb")
    shb = blocks.SectionHeader(options={"shb_userappl": "bench"})
    shb.new_member(blocks.InterfaceDescription, link_type=1, snaplen=96,
                   options={"if_name": "eth0", "if_tsresol": b"\x09"})
    writer = FileWriter(out, shb)
    for ts, head, wire, d, q, h, pid in zip(cols["ts"], cols["head"], cols["len"], cols["dir"],
                                            cols["queue"], cols["rxhash"], range(len(cols["ts"])),
                                            strict=True):
        epb = shb.new_member(
            blocks.EnhancedPacket, interface_id=0, timestamp_high=ts >> 32,
            timestamp_low=ts & 0xFFFFFFFF, packet_len=wire, packet_data=head,
            options={"epb_flags": pkttype_flags(d), "epb_packetid": (1 << 40) + pid,
                     "epb_queue": q, "epb_hash": [(5, h.to_bytes(4, "little"))]})
        writer.write_block(epb)
    out.close()


def bench_scapy(cols, path: Path) -> None:
    from scapy.utils import PcapNgWriter

    w = PcapNgWriter(str(path))
    w.linktype = 1                  # Ethernet (raw bytes: scapy cannot guess it)
    w.write_header(None)            # SHB + IDB (write() would do it on the first packet)
    for ts, head, wire, d in zip(cols["ts"], cols["head"], cols["len"], cols["dir"], strict=True):
        w._write_packet(head, 1, sec=ts / 1e9, caplen=len(head), wirelen=wire,
                        direction=pkttype_flags(d) & 3)
    w.close()


def bench_dpkt(cols, path: Path) -> None:
    import dpkt

    out = open(path, "wb")
    w = dpkt.pcapng.Writer(out, snaplen=96, linktype=dpkt.pcap.DLT_EN10MB)
    for ts, head in zip(cols["ts"], cols["head"], strict=True):
        w.writepkt(head, ts=ts / 1e9)
    out.close()


WRITERS = {"netevents": bench_netevents, "python-pcapng": bench_python_pcapng,
           "scapy": bench_scapy, "dpkt": bench_dpkt}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3, help="runs per writer; the median is shown")
    args = ap.parse_args()
    cols = make_frames(args.frames)
    rates: dict[str, float] = {}
    tmp = tempfile.TemporaryDirectory(prefix="netevents-bench-")
    for name, fn in WRITERS.items():
        path = Path(tmp.name) / f"{name}.pcapng"
        try:
            times = []
            for _ in range(args.repeat):
                path.unlink(missing_ok=True)  # truncating the last run's file is not writing
                t = time.perf_counter()
                fn(cols, path)
                times.append(time.perf_counter() - t)
            dt = statistics.median(times)
        except ImportError as exc:
            print(f"{name:14s} skipped: {exc} (pip install python-pcapng scapy dpkt)")
            continue
        data = path.read_bytes()
        got = sum(1 for b in read_pcapng(data).blocks if b.type == 6)
        if got != args.frames:
            print(f"{name:14s} wrote {got} packets, expected {args.frames}: not counted")
            continue
        rates[name] = args.frames / dt
        print(f"{name:14s} {rates[name]:>12,.0f} frames/s  ({dt:.3f} s, {len(data) / args.frames:.0f} B/frame)")
    tmp.cleanup()
    ours = rates.get("netevents")
    if ours:
        for name, r in rates.items():
            if name != "netevents":
                print(f"netevents / {name}: {ours / r:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Record the fleet bench's traffic once, then replay it through the consumers in one process.

    python bench/replay.py record OUT [--rate 3] [--duration 10]   # runs bench/fleet.py
    python bench/replay.py replay OUT [--only correlator|view] [--repeat 1]

``record`` starts a nats-server, a raw subscriber that appends every message's (subject,
payload) to OUT, and bench/fleet.py against that server. ``replay`` feeds the recording
through :class:`~netevents.bus.intake.Intake` (decode, validate, sequence accounting) and the
Correlator and the FleetView, and prints the CPU each costs per batch -- no sockets, no other
process in the way, so two versions of the code can be compared on the same traffic. The
correlator is ticked every second of stream time, so its verdicts are the same on every
replay of one recording: a change that keeps behaviour prints the same figures.

The anchor, timed in the same run: ``msgpack.unpackb`` of every message (reading it, no
validation, no analysis), and each consumer's CPU per batch as a multiple of it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NS = 1_000_000_000
_LEN = struct.Struct("<HI")


def record(path: str, rate: float, duration: float) -> None:
    import nats

    from netevents.bus import EmbeddedServer

    server = EmbeddedServer(port=0)
    url = server.start_blocking()

    async def main() -> None:
        nc = await nats.connect(url)
        out = open(path, "wb")  # noqa: SIM115 - closed below
        count = 0

        async def cb(msg) -> None:
            nonlocal count
            subject = msg.subject.encode()
            out.write(_LEN.pack(len(subject), len(msg.data)) + subject + msg.data)
            count += 1

        await nc.subscribe("netevents.v1.>", cb=cb, pending_msgs_limit=10_000_000,
                           pending_bytes_limit=4 << 30)
        await nc.flush()
        bench = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).with_name("fleet.py")), "--url", url,
            "--rate", str(rate), "--duration", str(duration))
        await bench.wait()
        await asyncio.sleep(2)
        await nc.drain()
        out.close()
        print(f"recorded {count} messages in {path} ({os.path.getsize(path) / 1e6:.0f} MB)")

    try:
        asyncio.run(main())
    finally:
        server.stop_blocking()


def messages(path: str) -> list[tuple[str, bytes]]:
    data = Path(path).read_bytes()
    out, off = [], 0
    while off < len(data):
        ns, nd = _LEN.unpack_from(data, off)
        off += _LEN.size
        out.append((data[off:off + ns].decode(), data[off + ns:off + ns + nd]))
        off += ns + nd
    return out


def _incident_text(inc) -> bytes:
    """An incident as text for the digest, without what is random per run (a peer
    episode's id)."""
    details = {k: v for k, v in inc.details.items() if not (k == "episode" and type(v) is str)}
    return repr((inc.type, inc.summary, inc.hosts, inc.first_ts, inc.last_ts, details,
                 inc.inputs, inc.missing_input)).encode()


def _view_digest(view) -> str:
    state = (view.batches, view.events, dict(view.per_host), view.drop_sites, view.counters,
             view.peers, view.peer_resets, view.peer_timeouts, view.peer_span, view.flow_drops,
             view.flow_span, view.missed, view.gaps, view.evicted, view.feed_errors,
             {k: (a.run, a.status) for k, a in view.agents.items()}, view.unclean_ends,
             dict(view.directory.addr_host), view.directory.host_boot)
    return hashlib.sha256(repr(state).encode()).hexdigest()[:16]


def replay(path: str, only: str | None, repeat: int) -> None:
    import msgpack

    from netevents.bus import tune_gc
    from netevents.bus.intake import Intake
    from netevents.consumers.correlate import INPUT_KINDS, Correlator
    from netevents.consumers.view import FleetView

    tune_gc()  # as the bench's consumers do
    msgs = messages(path)
    for _ in range(repeat):
        c0 = time.process_time()
        for _subject, data in msgs:
            msgpack.unpackb(data)
        anchor = (time.process_time() - c0) / len(msgs)
        print(f"    anchor: msgpack.unpackb of each of {len(msgs)} messages "
              f"{anchor * 1e6:.1f} us per message", flush=True)
        for name in ("correlator", "view"):
            if only and name != only:
                continue
            intake = Intake(INPUT_KINDS if name == "correlator" else None)
            corr = Correlator(grace=2.0) if name == "correlator" else None
            view = FleetView() if name == "view" else None
            incidents = batches = 0
            next_tick = None
            t_intake = t_feed = t_tick = 0.0
            digest = hashlib.sha256()
            clock = time.process_time
            for subject, data in msgs:
                c0 = clock()
                batch = intake.accept(subject, data)
                c1 = clock()
                t_intake += c1 - c0
                if batch is None:
                    continue
                batches += 1
                if corr is not None:
                    made = corr.feed(batch)
                    if next_tick is None:
                        next_tick = corr.stream_time
                    if corr.stream_time >= next_tick:  # once a second of stream time
                        next_tick = corr.stream_time + NS
                        c2 = clock()
                        made = made + corr.tick(corr.stream_time)
                        t_tick += clock() - c2
                    for inc in made:
                        digest.update(_incident_text(inc))
                    incidents += len(made)
                else:
                    view.feed(batch)
                t_feed += clock() - c1
            line = (f"{name:>10}: {batches} batches; intake {t_intake / batches * 1e6:.1f} us, "
                    f"feed {t_feed / batches * 1e6:.1f} us per batch "
                    f"(total {(t_intake + t_feed) / batches * 1e6:.1f}, "
                    f"x{(t_intake + t_feed) / batches / anchor:.1f} the anchor); "
                    f"missed {intake.missed}, unreceived {intake.unreceived}")
            if corr is not None:
                made = corr.tick(corr.stream_time + 3600 * NS, flush=True)
                for inc in made:
                    digest.update(_incident_text(inc))
                incidents += len(made)
                pairs = corr.pairs.values()
                line += (f"; of which tick {t_tick / batches * 1e6:.1f} us"
                         f"; delivered {sum(p.delivered for p in pairs)}, lost "
                         f"{sum(p.lost for p in pairs)}, unknown {sum(p.unknown for p in pairs)}, "
                         f"incidents {incidents} (digest {digest.hexdigest()[:16]}); counts "
                         f"{dict(sorted(corr.counts.items()))}; evicted {dict(corr.evicted)}")
            else:
                line += (f"; events {dict(sorted(view.events.items()))}, drop sites "
                         f"{len(view.drop_sites)}, peers {len(view.peers)} / "
                         f"{sum(view.peers.values())}, gaps {sum(view.gaps.values())}, "
                         f"agents {len(view.agents)}, evicted {view.evicted}; state digest "
                         f"{_view_digest(view)}")
            print(line, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("out")
    r.add_argument("--rate", type=float, default=3.0)
    r.add_argument("--duration", type=float, default=10.0)
    p = sub.add_parser("replay")
    p.add_argument("file")
    p.add_argument("--only", choices=("correlator", "view"))
    p.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    if args.cmd == "record":
        record(args.out, args.rate, args.duration)
    else:
        replay(args.file, args.only, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The capture agent for real: a veth pair between two namespaces, a real nats-server, real
traffic, the kernel's own counters. Needs root (skips otherwise)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys

import pytest

from netevents.agent.capture import capture_config, ring_capture
from netevents.agent.runner import AgentRunner, RunnerOptions
from netevents.bus import connect
from netevents.events import json_view
from tests.agent.capture.test_capture_filter import UDP_9999
from tests.conftest import ROOT

SENDER = """
import socket, sys, struct
dst, port, n, sport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if sport: s.bind(("0.0.0.0", sport))
for i in range(n):
    s.sendto(struct.pack("!I", i) + b"x" * 36, (dst, port))
"""


def send_udp(ns, dst: str, port: int, count: int, sport: int = 0) -> None:
    ns.run(sys.executable, "-c", SENDER, dst, str(port), str(count), str(sport), timeout=120)


async def run_capture(nats_url: str, collectors: list, drive) -> dict:
    """Run an agent with ``collectors`` publishing to the real bus while ``drive()`` makes
    traffic; collect every frame row, gap and the final status from a live subscription."""
    out: dict = {"frames": [], "gaps": [], "status": None, "missed": 0, "frame_batches": [],
                 "gap_batches": []}
    async with connect(nats_url) as bus:
        sub = bus.subscribe(["frame", "gap", "status"], hosts=["captest"])
        await sub.start()
        runner = AgentRunner(bus, collectors, RunnerOptions(host="captest", max_wait=0.05))
        stop = asyncio.Event()

        async def driver() -> None:
            await asyncio.sleep(0.2)  # the ring is up (the collector opens it at once)
            await asyncio.to_thread(drive)
            await asyncio.sleep(0.3)
            stop.set()

        async def reader() -> None:
            while True:
                batch = await sub.next(timeout=20)
                assert batch is not None, "the agent's final status never arrived"
                out["missed"] += batch.missed
                if batch.kind == "frame":
                    out["frames"].extend(batch.rows())
                    out["frame_batches"].append(batch)
                elif batch.kind == "gap":
                    out["gaps"].extend(batch.events)
                    out["gap_batches"].append(batch)
                elif batch.events[0].get("final"):
                    out["status"] = batch.events[0]
                    return

        async with asyncio.TaskGroup() as tg:
            tg.create_task(driver())
            r = tg.create_task(reader())
            await runner.run(stop)
            await r
        await sub.close()
    return out


def check_schema(batch) -> None:
    """A real emitted batch, in its JSON view, against schemas/v1/<kind>.json."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "schemas" / "v1" / f"{batch.kind}.json").read_text())
    jsonschema.validate(json_view({**batch.header(), "events": batch.events}), schema)


@pytest.fixture(params=["c", "python"])
def walker(request) -> str:
    """Each real-ring test once per block walker (the C one skips where it cannot be built)."""
    if request.param == "c":
        from netevents.agent.capture import cwalk

        try:
            cwalk.load()
        except cwalk.BuildError as exc:
            pytest.skip(f"the C walker is not installed here: {exc}")
    return request.param


def counters(rows) -> list[int]:
    return [int.from_bytes(r["head"][42:46], "big") for r in rows]


@pytest.mark.integration
def test_frames_arrive_on_the_bus_with_their_keys(netns_pair, nats_url, walker):
    a, b, prefix = netns_pair
    opts = capture_config({"iface": "veth-b", "netns": b.name, "walker": walker})
    cap = ring_capture("veth-b", opts)

    def drive() -> None:
        send_udp(a, f"{prefix}.2", 9999, 50, sport=40001)
        # a TCP SYN to a closed port: b answers with an outgoing RST (captured too, dir 4)
        a.run(sys.executable, "-c", f"import socket; s=socket.socket(); s.settimeout(2)\n"
              f"try: s.connect(('{prefix}.2', 9998))\nexcept OSError: pass", check=False)

    out = asyncio.run(run_capture(nats_url, [cap], drive))
    a_ip, b_ip = socket.inet_aton(f"{prefix}.1"), socket.inet_aton(f"{prefix}.2")
    udp = [r for r in out["frames"] if r["l4"] == 17 and r["dport"] == 9999]
    assert len(udp) == 50
    assert counters(udp) == list(range(50))
    r = udp[0]
    assert (r["ethertype"], r["src"], r["dst"], r["sport"], r["dir"]) == (0x0800, a_ip, b_ip, 40001, 0)
    assert r["ts_src"] == 1 and r["caplen"] == r["len"] == 82 and len(r["head"]) == 82
    assert r["ip_id"] is not None and r["tcp_seq"] is None
    syn = [r for r in out["frames"] if r["l4"] == 6 and r["dport"] == 9998]
    assert syn and syn[0]["tcp_seq"] is not None and syn[0]["src"] == a_ip
    rst = [r for r in out["frames"] if r["l4"] == 6 and r["sport"] == 9998]
    assert rst and rst[0]["dir"] == 4 and rst[0]["src"] == b_ip
    assert out["gaps"] == [] and cap.accountant.drops == 0
    assert len(out["frames"]) == cap.accountant.packets == cap.frames
    batch = out["frame_batches"][0]
    assert batch.fields["iface"] == "veth-b" and batch.fields["worker"] == 0
    assert batch.fields["first_frame"] == 0
    for b in out["frame_batches"]:
        check_schema(b)
    last = out["frame_batches"][-1].fields["ring"]
    assert last["drops"] == 0 and 0 < last["packets"] <= cap.accountant.packets
    # veth has no hardware stamps: the batch says so, received UDP is software-stamped. TCP
    # segments keep their sender's monotonic departure time (EDT) through veth, which the ring
    # will not report as a wall-clock stamp, so they show the fallback: what ts_src is for.
    assert batch.fields["hwtstamp"] == {"filter": None, "phc_index": None}
    assert {r["ts_src"] for r in udp} == {1}
    assert {r["ts_src"] for r in out["frames"]} <= {0, 1}
    assert out["missed"] == 0 and out["status"]["lost"]["capture.ring.veth-b.w0"] == 0
    # status says which walker ran: the C one, or why not
    assert out["status"]["sources"]["capture.c_walker"]["state"] == (
        "running" if walker == "c" else "unavailable")


@pytest.mark.integration
def test_overload_gaps_equal_tp_drops_exactly(netns_pair, nats_url, walker):
    """A tiny ring (2 blocks of 4 KiB), a slow consumer and a fast sender: the ring overflows.
    The gap records on the bus sum to the kernel's tp_drops, summaries + gaps == tp_packets,
    and each gap sits exactly where the sender's sequence numbers jump."""
    a, b, prefix = netns_pair
    opts = capture_config({
        "iface": "veth-b", "netns": b.name, "block_size": 4096, "block_nr": 2,
        "retire_tov_ms": 10, "block_delay": 0.002, "filter": UDP_9999, "walker": walker})
    cap = ring_capture("veth-b", opts)
    sent = 20_000
    out = asyncio.run(run_capture(nats_url, [cap],
                                  lambda: send_udp(a, f"{prefix}.2", 9999, sent)))
    acc = cap.accountant
    lost = sum(g["lost"] for g in out["gaps"])
    assert acc.drops > 0, "the ring never overflowed; the test proves nothing"
    assert lost == acc.drops                                  # sum of gaps == kernel tp_drops
    assert len(out["frames"]) + lost == acc.packets           # summaries + gaps == tp_packets
    assert acc.packets <= sent and cap.invariant_error is None
    assert out["missed"] == 0 and out["status"]["lost"]["capture.ring.veth-b.w0"] == lost
    assert out["status"]["lost"].get("queue.frame", 0) == 0
    # Placement: between frames k and k+1 the sender's counter jumps by `lost` + 1. Exact
    # except where two CPUs race the counters (a drop counted after the read that followed
    # the release, a freeze starting within microseconds of one ending): allow 2%.
    seq = counters(out["frames"])
    placed: dict[int, int] = {}
    for g in out["gaps"]:
        assert g["cause"] == "ring_full" and g["iface"] == "veth-b" and g["worker"] == 0
        if g.get("before_frame") is None:
            assert g["after_frame"] == len(seq) - 1
            placed[len(seq)] = g["lost"]
            continue
        k = g["before_frame"]
        assert g["after_frame"] == k - 1 and g["after_ts"] <= g["before_ts"]
        placed[k] = g["lost"]
    holes = {k: seq[k] - seq[k - 1] - 1 for k in range(1, len(seq)) if seq[k] != seq[k - 1] + 1}
    if seq and seq[0]:
        holes[0] = seq[0]
    if acc.packets == sent and seq[-1] != sent - 1:  # nothing was lost before the tap
        holes[len(seq)] = sent - 1 - seq[-1]
    elif len(seq) in placed:
        holes[len(seq)] = placed[len(seq)]  # frames lost before the tap: can't check the end
    misplaced = sum(abs(placed.get(k, 0) - holes.get(k, 0)) for k in set(placed) | set(holes)) // 2
    print(f"drops {acc.drops} in {len(out['gaps'])} gaps, misplaced {misplaced}, late "
          f"{acc.late_drops}, ambiguous reads {acc.ambiguous_reads}, packets {acc.packets}/{sent}")
    assert misplaced <= max(5, acc.drops // 50), (misplaced, acc.late_drops, acc.ambiguous_reads)
    for b in out["gap_batches"]:
        check_schema(b)
    assert len(out["gaps"]) < acc.drops  # coalesced, not one record per lost frame
    # Each frame batch says how many gap records its ring had made (gaps_before): exactly the
    # gaps placed before its last frame, so a reader can wait for the ones it has not seen.
    placed_before = sorted(g["before_frame"] for g in out["gaps"] if g.get("before_frame") is not None)
    for fb in out["frame_batches"]:
        last = fb.fields["first_frame"] + len(fb) - 1
        owed = sum(1 for k in placed_before if k <= last)
        assert fb.fields["gaps_before"]["records"] == owed, (fb.fields, owed)
    assert any(fb.fields["gaps_before"]["records"] for fb in out["frame_batches"])


def test_unknown_interface_is_a_capability_error():
    from netevents.errors import CapabilityError

    cap = ring_capture("no-such-if0", capture_config({"iface": "no-such-if0",
                                                       "hwtstamp": False}))

    class Sink:
        def declare_loss(self, place):
            pass

    with pytest.raises(CapabilityError, match="no interface 'no-such-if0'"):
        asyncio.run(cap.run(Sink()))



@pytest.mark.integration
def test_stopping_mid_traffic_keeps_the_accounting_exact_also_for_fanout_members(netns_pair,
                                                                                nats_url):
    """Two fanout members in one process, stopped while frames are still arriving: each ring's
    published summaries + gaps equal its own kernel tp_packets, and the stop is quick (the
    drop-all filter stops delivery; the final drain does not chase new frames)."""
    a, b, prefix = netns_pair
    group = 0x4E00 | (socket.inet_aton(f"{prefix}.1")[2] & 0xFF)
    caps = []
    for w in range(2):
        opts = capture_config({"iface": "veth-b", "netns": b.name,
                               "filter": UDP_9999, "hwtstamp": False,
                               "block_size": 65536, "block_nr": 4})
        caps.append(ring_capture("veth-b", opts, worker=w, fanout_group=group))
    flood = a.name
    senders: list[subprocess.Popen] = []

    def drive() -> None:
        # Keep sending for longer than the agent runs, from 32 flows (source ports) so that
        # the fanout hash gives both members some (all on one member: p = 2**-31). The sender
        # says when it has sent its first frames: on a loaded machine its start-up alone can
        # take longer than the capture would run.
        sender = subprocess.Popen(
            ["ip", "netns", "exec", flood, sys.executable, "-c",
             "import socket,time,struct,sys\n"
             "ss=[socket.socket(socket.AF_INET,socket.SOCK_DGRAM) for _ in range(32)]\n"
             "end=time.time()+4\ni=0\n"
             "while time.time()<end:\n"
             f"    ss[i%32].sendto(struct.pack('!I',i)+b'q'*36,('{prefix}.2',9999)); i+=1\n"
             "    time.sleep(0.0002) if i % 20 == 0 else None\n"
             "    i == 64 and print('sending', flush=True)\n"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        senders.append(sender)
        assert sender.stdout.readline().strip() == "sending"
        import time

        time.sleep(1.0)

    try:
        out = asyncio.run(run_capture(nats_url, caps, drive))
    finally:
        for sender in senders:  # by its pid (ip netns exec execs the interpreter)
            sender.kill()
            sender.wait()
            sender.stdout.close()
    assert all(cap.stop_seconds < 0.9 for cap in caps), [cap.stop_seconds for cap in caps]
    per_worker = {0: 0, 1: 0}
    for r in out["frames"]:
        per_worker[r["queue"]] += 1
    lost = {0: 0, 1: 0}
    for g in out["gaps"]:
        lost[g["worker"]] += g["lost"]
    for w, cap in enumerate(caps):
        assert cap.invariant_error is None, cap.invariant_error
        assert per_worker[w] > 0
        assert per_worker[w] + lost[w] == cap.accountant.packets

"""History end to end against a real nats-server: events published before the command started
are found by --since with each filter and nothing else; query figures are the sums of the
events read; extract output opens in tshark with the expected frames and drop counts; retention
set and shown; no replay consumer is left behind."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import subprocess
import time

import pytest

from netevents import connect
from netevents.app.cli import main
from netevents.codec import Batch
from netevents.consumers.verify import verify
from tests.framegen import frame_batch, gap_batch

DROPS = [  # (host, reason, location, source, netns, flow)
    ("web-1", "NETFILTER_DROP", "nf_hook_slow+0x8e", "ebpf", 4026532001,
     {"src": "10.1.0.1", "dst": "10.1.0.2", "sport": 40000, "dport": 443, "l4": 6}),
    ("web-1", "NO_SOCKET", "__udp4_lib_rcv+0xa1f", "netdm", None,
     {"src": "10.1.0.9", "dst": "10.1.0.1", "sport": 53, "dport": 5353, "l4": 17}),
    ("web-2", "QDISC_DROP", "__dev_queue_xmit+0x7b", "tracepoint", None, None),
    ("db-1", "NETFILTER_DROP", "nf_hook_slow+0x8e", "ebpf", 4026532002,
     {"src": "10.2.0.5", "dst": "10.1.0.2", "sport": 5432, "dport": 41000, "l4": 6}),
]


def drop_batch(host, seq, rows, run="r1"):
    events = []
    for i, (_h, reason, loc, source, netns, flow) in enumerate(rows):
        e = {"count": 10 * seq + i + 1, "source": source, "reason": reason, "location": loc,
             "iface": "veth-b" if flow else "eth0"}
        if netns:
            e["netns"] = netns
        if flow:
            e["flow"] = flow
        events.append(e)
    now = time.time_ns()
    return Batch(kind="drop", site="dc1", host=host, run=run, seq=seq, t0=now, t1=now, events=events)


def ipstat_batch(host, seq, peers, run="r1"):
    now = time.time_ns()
    return Batch(kind="ipstat", site="dc1", host=host, run=run, seq=seq, t0=now, t1=now,
                 events=[{"peer": p, "retrans_segs": r, "resets": s, "resets_in": t}
                         for p, r, s, t in peers])


async def publish(url, batches):
    async with connect(url, streams=True) as bus:
        for b in batches:
            await bus.publish(b, ack=True)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def consumer_counts(url):
    async with connect(url) as bus:
        return {s: (await bus.js.stream_info(s)).state.consumer_count
                for s in ("NETEVENTS_EVENTS", "NETEVENTS_STATS", "NETEVENTS_FRAMES")}


@pytest.fixture
def history(nats_url):
    """Drops and ipstats published before the commands run, then more after --until."""
    before = [drop_batch(h, 1, [r for r in DROPS if r[0] == h]) for h in ("web-1", "web-2", "db-1")]
    before.append(ipstat_batch("web-1", 1, [("10.1.0.2", 5, 1, 0), ("10.2.0.5", 2, 0, 3)]))
    asyncio.run(publish(nats_url, before))
    time.sleep(0.05)
    until = time.time_ns()
    time.sleep(0.05)
    after = [drop_batch("web-1", 2, DROPS[:2]), ipstat_batch("web-1", 2, [("10.1.0.2", 7, 0, 0)])]
    asyncio.run(publish(nats_url, after))
    return nats_url, str(until / 1e9)


def _iso(ns_text: str) -> str:
    import datetime as dt
    return dt.datetime.fromtimestamp(float(ns_text), tz=dt.UTC).isoformat()


@pytest.mark.parametrize("opts,want", [
    ([], {("web-1", 11), ("web-1", 12), ("web-2", 11), ("db-1", 11), ("web-1", "10.1.0.2"),
          ("web-1", "10.2.0.5")}),
    (["--reason", "NETFILTER_DROP"], {("web-1", 11), ("db-1", 11)}),
    (["--location", "__udp4*"], {("web-1", 12)}),
    (["--source", "tracepoint"], {("web-2", 11)}),
    (["--netns", "4026532002"], {("db-1", 11)}),
    (["--addr", "10.1.0.2"], {("web-1", 11), ("db-1", 11)}),
    (["--addr", "10.2.0.0/16", "--port", "41000"], {("db-1", 11)}),
    (["--port", "53"], {("web-1", 12)}),
    (["--peer", "10.2.0.5"], {("web-1", "10.2.0.5")}),
    (["--iface", "eth*"], {("web-2", 11)}),
    (["--host", "web-*", "--reason", "NETFILTER_DROP"], {("web-1", 11)}),
])
def test_tail_since_until_with_each_filter(history, capsys, opts, want):
    url, until = history
    code, out, err = run_cli(capsys, "tail", "--bus", url, "--since", "5m", "--until",
                             _iso(until), "--json", "--timeout", "20", *opts)
    assert code == 0, err
    got = {(d["host"], d.get("count", d.get("peer"))) for d in map(json.loads, out.splitlines())}
    assert got == want
    assert asyncio.run(consumer_counts(url)) == {"NETEVENTS_EVENTS": 0, "NETEVENTS_STATS": 0,
                                                 "NETEVENTS_FRAMES": 0}


def test_tail_since_goes_on_live(history, capsys):
    url, _until = history
    code, out, _err = run_cli(capsys, "tail", "--bus", url, "--since", "5m", "--kind", "drop",
                              "--json", "--count", "6", "--timeout", "20")
    assert code == 0
    assert [json.loads(x)["count"] for x in out.splitlines()][-2:] == [21, 22]


def test_top_over_a_window(history, capsys):
    url, until = history
    code, out, _err = run_cli(capsys, "top", "--bus", url, "--since", "5m", "--until",
                              _iso(until), "--view", "drops", "--reason", "NETFILTER_DROP")
    assert code == 0
    assert "nf_hook_slow+0x8e" in out and "__udp4_lib_rcv" not in out and "QDISC_DROP" not in out


def test_bad_history_options_are_usage_errors(nats_url, capsys):
    assert run_cli(capsys, "tail", "--bus", nats_url, "--until", "5m")[0] == 2
    code, _out, err = run_cli(capsys, "tail", "--bus", nats_url, "--since", "soon")
    assert code == 2 and "--since: not a time" in err
    code, _out, err = run_cli(capsys, "tail", "--bus", nats_url, "--kind", "netstat", "--reason", "X")
    assert code == 2 and "can pass the filters" in err


# -- query ---------------------------------------------------------------------------------------

def test_query_figures_equal_the_sum_of_the_events(nats_url, capsys):
    rng = random.Random(7)
    reasons = ["NETFILTER_DROP", "NO_SOCKET", "QDISC_DROP", "TCP_CSUM"]
    batches, want_drops, want_lost, want_retrans, want_paths = [], {}, {}, {}, {}
    for host in ("web-1", "web-2", "db-1"):
        for seq in range(1, 6):
            events = []
            for _ in range(rng.randint(1, 4)):
                r = rng.choice(reasons)
                n = rng.randint(1, 50)
                events.append({"count": n, "source": "ebpf", "reason": r, "location": f"{r.lower()}+0x1"})
                want_drops[(host, r)] = want_drops.get((host, r), 0) + n
            b = drop_batch(host, seq, [])
            b.events = events
            batches.append(b)
            lost = rng.randint(0, 30)
            batches.append(gap_batch(host, "r1", seq, [(seq * 100, lost)]))
            want_lost[host] = want_lost.get(host, 0) + lost
            peers = [(f"10.0.0.{rng.randint(1, 3)}", rng.randint(0, 9), rng.randint(0, 2), 0)
                     for _ in range(2)]
            batches.append(ipstat_batch(host, seq, peers))
            for p, r, *_ in peers:
                want_retrans[(host, p)] = want_retrans.get((host, p), 0) + r
    for seq in range(1, 4):   # a correlator's path_loss reports
        now = time.time_ns()
        batches.append(Batch(kind="incident", site="local", host="correlator-x", run="c1", seq=seq,
                             t0=now, t1=now, events=[{
                                 "type": "path_loss", "summary": "s", "hosts": ["web-1", "db-1"],
                                 "details": {"from": "web-1", "to": "db-1", "new_lost": seq,
                                             "new_unknown": 1, "delivered": 100 * seq}}]))
        want_paths = {"lost": 6, "unknown": 3, "delivered": 300}
    asyncio.run(publish(nats_url, batches))
    code, out, err = run_cli(capsys, "query", "--bus", nats_url, "--since", "10m", "--json")
    assert code == 0, err
    doc = json.loads(out)
    got_drops = {(row["host"], r): n for row in doc["drops"] for r, n in row["reasons"].items()}
    assert got_drops == want_drops
    assert {r["host"]: r["lost"] for r in doc["capture_loss"]} == want_lost
    assert {(r["host"], r["peer"]): r["retrans_segs"] for r in doc["peers"]} == want_retrans
    (path,) = doc["paths"]
    assert {k: path[k] for k in want_paths} == want_paths
    assert doc["read"]["events"]["drop"] == sum(len(b.events) for b in batches if b.kind == "drop")
    assert doc["not_held"] == [] and "netevents query: read" in err
    code, out, _ = run_cli(capsys, "query", "--bus", nats_url, "--since", "10m", "--host", "web-1",
                           "--reason", "NO_SOCKET")
    assert code == 0 and f"NO_SOCKET {want_drops.get(('web-1', 'NO_SOCKET'), 0)}" in out \
        and "db-1" not in out.split("peers by")[0]
    assert asyncio.run(consumer_counts(nats_url))["NETEVENTS_EVENTS"] == 0


def test_query_names_what_the_stream_no_longer_holds(nats_url, capsys):
    asyncio.run(publish(nats_url, [drop_batch("web-1", s, DROPS[:1]) for s in (1, 2, 3)]))

    async def purge():
        async with connect(nats_url) as bus:
            await bus.js.purge_stream("NETEVENTS_EVENTS", keep=1)
    asyncio.run(purge())
    code, out, err = run_cli(capsys, "query", "--bus", nats_url, "--since", "1h")
    assert code == 0
    assert "NETEVENTS_EVENTS no longer holds" in err and "NOT HELD" in out and "2 older" in out


# -- extract -------------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark")
def test_extract_opens_in_tshark_with_frames_and_drop_counts(nats_url, capsys, tmp_path):
    batches = []
    for host in ("web-1", "db-1"):
        batches.append(gap_batch(host, "r1", 1, [(9, 4), (25, 6)]))
        batches += [frame_batch(host, "r1", i + 1, i * 10, 10) for i in range(4)]
    asyncio.run(publish(nats_url, batches))
    out = tmp_path / "web.pcapng"
    code, text, err = run_cli(capsys, "extract", "--bus", nats_url, "--since", "5m", "--host",
                              "web-*", "--out", str(out))
    assert code == 0, err
    rep = verify(out)
    assert rep.ok, rep.text()
    assert rep.facts["tshark_frames"] == 40 and rep.facts["tshark_dropcount"] == 10
    # one flow: frames with source port 1024+k for k in 8..12 and 30, 31 (gaps before 10 and 26)
    ports = [str(1024 + k) for k in (8, 9, 10, 11, 12, 30, 31)]
    flow = tmp_path / "flow.pcapng"
    argv = ["extract", "--bus", nats_url, "--since", "5m", "--host", "web-1", "--out", str(flow)]
    for p in ports:
        argv += ["--port", p]
    code, text, err = run_cli(capsys, *argv)
    assert code == 0, err
    rep = verify(flow)
    assert rep.ok, rep.text()
    p = subprocess.run(["tshark", "-r", str(flow), "-T", "fields", "-e", "udp.srcport",
                        "-e", "frame.drop_count"], capture_output=True, text=True, check=True)
    rows = [ln.split("\t") for ln in p.stdout.splitlines()]
    assert [r[0] for r in rows] == ports
    assert [r[1] for r in rows] == ["", "", "4", "", "", "6", ""]
    side = json.loads(flow.with_name(flow.name + ".json").read_text())
    assert side["unseen_frames"] == 0 and side["extract"]["filtered_frames"] == 33
    assert asyncio.run(consumer_counts(nats_url)) == {"NETEVENTS_EVENTS": 0, "NETEVENTS_STATS": 0,
                                                      "NETEVENTS_FRAMES": 0}


# -- retention -----------------------------------------------------------------------------------

def test_streams_retention_set_and_shown(nats_url, capsys):
    asyncio.run(publish(nats_url, [drop_batch("web-1", 1, DROPS[:1])]))
    code, out, err = run_cli(capsys, "streams", "--bus", nats_url, "--max-age", "events=14d",
                             "--max-bytes", "frames=64M", "--max-age", "stats=unlimited", "--show",
                             "--json")
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out.splitlines()[-1])}
    assert rows["events"]["max_age_s"] == 14 * 86400 and rows["stats"]["max_age_s"] == 0
    assert rows["frames"]["max_bytes"] == 64 << 20 and rows["events"]["messages"] == 1
    code, out, _ = run_cli(capsys, "streams", "--bus", nats_url, "--show")
    assert "NETEVENTS_EVENTS (events): max age 14d, max bytes unlimited" in out
    assert "NETEVENTS_FRAMES (frames): max age 1h, max bytes 67108864 bytes" in out
    assert "holds 1 messages" in out
    code, _out, err = run_cli(capsys, "streams", "--bus", nats_url, "--max-age", "logs=1d")
    assert code == 2 and "STREAM one of events, stats, frames" in err


def test_correlate_a_past_window_prints_its_incidents_without_republishing(history, capsys):
    url, until = history   # NETFILTER_DROP at nf_hook_slow+0x8e on web-1 and db-1: a storm
    code, out, err = run_cli(capsys, "correlate", "--bus", url, "--since", "5m", "--until",
                             _iso(until), "--token", "corr-test")
    assert code == 0, err
    assert "[drop_storm]" in out and "NETFILTER_DROP" in out

    async def incidents():
        async with connect(url) as bus:
            return (await bus.js.stream_info("NETEVENTS_EVENTS", subjects_filter="netevents.v1.incident.>")).state.subjects
    assert not asyncio.run(incidents())
    assert asyncio.run(consumer_counts(url))["NETEVENTS_EVENTS"] == 0

"""A hostile corpus on a real nats-server while every shipped consumer runs.

Malformed envelopes, well-formed batches with hostile contents (what the issue found accepted),
size and nesting bombs, sequence poisoning of the legitimate run, extension types, unknown kinds
and versions -- interleaved with legitimate batches of every kind from host ``good``. ``tail``
(both forms), the fleet view (``top``), ``metrics``, ``correlate`` and ``archive`` run the whole
time: none exits or fails, every reject is counted by its reason, and every legitimate batch
arrives (each consumer's own tally shows all of them).
"""

from __future__ import annotations

import asyncio
import io
import random
from collections import Counter

import msgpack

from netevents import connect
from netevents import events as ev
from netevents.codec import MAX_PAYLOAD, Batch, encode_batch
from netevents.consumers.archive.service import run_archive
from netevents.consumers.correlate.service import INPUT_KINDS, run_correlate
from netevents.consumers.metrics import run_metrics
from netevents.consumers.tail import tail
from netevents.consumers.view import FleetView, feed_view
from tests.framegen import frame_batch, gap_batch

SITE, HOST, RUN = "local", "good", "g1"
ROUNDS = 40


def subject(kind: str, host: str = HOST) -> str:
    return f"netevents.v1.{kind}.{SITE}.{host}"


def doc(kind: str, events, seq: int = 1, **over) -> dict:
    return {"v": 1, "kind": kind, "site": SITE, "host": HOST, "run": "evil", "seq": seq,
            "t0": 1, "t1": 2, **over, "events": events}


def pk(d) -> bytes:
    return msgpack.packb(d, use_bin_type=True)


def corpus(rng: random.Random) -> list[tuple[str, str, bytes]]:
    """(expected reject reason, subject, data), published every round."""
    head = pk(doc("drop", []))[:-1]
    drop = {"count": 1, "source": "counter"}
    out = [
        ("malformed", subject("drop"), rng.randbytes(200)),
        ("malformed", subject("drop"), pk(doc("drop", [drop]))[:-5]),
        ("malformed", subject("drop"), pk([1, 2, 3])),
        ("malformed", subject("drop"), head + b"\x91" * 50_000),
        ("version", subject("drop"), pk(doc("drop", [drop], v=2))),
        ("version", subject("drop"), pk(doc("drop", [drop], v=1.0))),
        ("schema", subject("drop"), pk(doc("control", [drop]))),
        ("schema", subject("drop"), pk(doc("drop", [{**drop, "source": "evil"}]))),
        ("schema", subject("drop"), pk(doc("drop", [{**drop, "count": -1}]))),
        ("schema", subject("drop"), pk(doc("drop", [drop], mode=5))),
        ("schema", subject("drop"), pk(doc("drop", [{**drop, "x": msgpack.Timestamp(1, 0)}]))),
        ("schema", subject("drop"), pk(doc("drop", [{**drop, "x": msgpack.ExtType(9, b"z")}]))),
        ("schema", subject("drop"), pk(doc("drop", [{**drop, "flow": {"src": [{}]}}]))),
        ("schema", subject("ipstat"), pk(doc("ipstat", [{"peer": "p", "flags": [1]}]))),
        ("schema", subject("netstat"), pk(doc("netstat", [{"group": "g", "deltas": {"x": "s"}}]))),
        ("schema", subject("status"), pk(doc("status", [{"version": "1", "sources": {"a": [1]}}]))),
        ("schema", subject("frame"), pk(doc("frame", {"ts": [1, 2], "len": [1]}))),
        ("subject", subject("drop", "other-host"), pk(doc("drop", [drop]))),
    ]
    return out


def bombs() -> list[tuple[str, str, bytes]]:
    """Size and nesting bombs near the largest message the bus carries, published once."""
    head = pk(doc("drop", []))[:-1]
    n = 7_000_000
    return [
        ("schema", subject("drop"), head + b"\xdd" + n.to_bytes(4, "big") + b"\x80" * n),
        ("schema", subject("drop"), b"\x8a" + pk(doc("drop", []))[1:] + b"\xa1x\xdd"
         + n.to_bytes(4, "big") + b"\x80" * n),
        ("oversize", subject("drop"), pk(doc("drop", [{"count": 1, "source": "counter",
                                                       "payload": b"x" * (MAX_PAYLOAD - 2000)}]))),
    ]


def expected(items, kinds) -> Counter:
    """Rejects a subscription to ``kinds`` counts: the corpus ROUNDS times, the bombs once,
    one poisoned seq per round."""
    out: Counter = Counter()
    for reason, subj, _d in items:
        if subj.split(".")[2] in kinds:
            out[reason] += ROUNDS
    for reason, subj, _d in bombs():
        if subj.split(".")[2] in kinds:
            out[reason] += 1
    if "drop" in kinds:
        out["sequence"] += ROUNDS
    return out


def legit(kind: str, seq: int) -> Batch:
    if kind == "frame":
        b = frame_batch(HOST, RUN, seq, (seq - 1) * 4, 4)
    elif kind == "gap":
        b = gap_batch(HOST, RUN, seq, [((seq - 1) * 4, 1)])
    else:
        events = {"drop": [ev.DropEvent(count=seq, source="counter", reason="QDISC_DROP")],
                  "netstat": [ev.NetstatEvent(group="Tcp", deltas={"RetransSegs": seq})],
                  "ipstat": [ev.IpstatEvent(peer="10.0.0.9", retrans_segs=seq, flags=["retrans"])],
                  "status": [ev.StatusEvent(version="t", published={"drop": seq})]}[kind]
        b = Batch(kind=kind, site=SITE, host=HOST, run=RUN, seq=seq, t0=seq, t1=seq + 1,
                  events=events)
    assert (b.site, b.host, b.run) == (SITE, HOST, RUN)
    return b


KINDS = ("drop", "netstat", "ipstat", "status", "gap", "frame")


def test_hostile_corpus_with_every_consumer_running(nats_url, tmp_path):
    rng = random.Random(14)
    items = corpus(rng)
    legit_events = {k: ROUNDS * (4 if k == "frame" else 1) for k in KINDS}

    async def main():
        stop = asyncio.Event()
        outs = {"plain": io.StringIO(), "json": io.StringIO()}
        errs = {"plain": io.StringIO(), "json": io.StringIO()}
        n_tail = sum(legit_events.values())
        view = FleetView()
        bound = []
        ready = {"view": asyncio.Event(), "correlate": asyncio.Event()}
        tasks = {
            "tail": asyncio.create_task(tail(nats_url, list(KINDS), [HOST], as_json=False,
                                             count=n_tail, timeout=120, out=outs["plain"],
                                             err=errs["plain"])),
            "tail --json": asyncio.create_task(tail(nats_url, list(KINDS), [HOST], as_json=True,
                                                    count=n_tail, timeout=120, out=outs["json"],
                                                    err=errs["json"])),
            "top": asyncio.create_task(feed_view_with_bus(nats_url, view, stop, ready["view"])),
            "metrics": asyncio.create_task(run_metrics(nats_url, "127.0.0.1:0", stop=stop,
                                                       started=bound.append)),
            "correlate": asyncio.create_task(run_correlate(nats_url, stop=stop, site=SITE,
                                                           ready=ready["correlate"])),
            "archive": asyncio.create_task(run_archive(tmp_path / "archive", nats_url, stop=stop,
                                                       progress_every=3600)),
        }
        await asyncio.wait_for(ready["view"].wait(), 20)
        await asyncio.wait_for(ready["correlate"].wait(), 20)
        await asyncio.sleep(1.5)  # the tails' and the archive's subscriptions are made
        async with connect(nats_url) as bus:
            for r in range(1, ROUNDS + 1):
                for kind in KINDS:
                    await bus.publish(legit(kind, r))
                for _reason, subj, data in items + (bombs() if r == 1 else []):
                    await bus.publish_raw(subj, data)
                poison = legit("drop", 2**62)
                await bus.publish_raw(subject("drop"), encode_batch(poison))
                await bus.flush()
        results = {}
        for name in ("tail", "tail --json"):
            results[name] = await asyncio.wait_for(tasks[name], 120)
        for _ in range(200):  # the rest have taken everything in (or the bound passes)
            if all(view.events[k] >= n for k, n in legit_events.items()):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(2)
        stop.set()
        for name in ("top", "metrics", "correlate", "archive"):
            results[name] = await asyncio.wait_for(tasks[name], 60)
        return results, view, outs, errs

    results, view, outs, errs = asyncio.run(main())
    # the tails: every legitimate event printed, exit 0, rejects counted by reason
    assert results["tail"] == 0 and results["tail --json"] == 0, errs
    for form in ("plain", "json"):
        assert len(outs[form].getvalue().splitlines()) == sum(legit_events.values())
    # top: every legitimate event, not one of the hostile ones, each reject by its reason
    sub, top_view = results["top"]
    assert dict(sub.rejected) == dict(expected(items, ev.KINDS))
    assert {k: top_view.events[k] for k in KINDS} == legit_events
    assert top_view.feed_errors == 0 and sub.missed == 0
    assert top_view.counters[(HOST, "Tcp", "RetransSegs")] == sum(range(1, ROUNDS + 1))
    # metrics: its own view saw them all
    metrics_view = results["metrics"]
    assert {k: metrics_view.events[k] for k in KINDS} == legit_events
    # correlate: every batch of its inputs fed, none it failed on, every reject counted
    corr = results["correlate"]
    assert corr.counts["bad_batches"] == 0
    assert corr.counts["rejected"] == sum(expected(items, INPUT_KINDS).values())
    # archive: every legitimate frame and drop written
    arch = results["archive"]
    assert arch["frames"] == legit_events["frame"], arch


async def feed_view_with_bus(url, view, stop, ready):
    async with connect(url) as bus:
        sub = await feed_view(bus, view, stop, ready=ready)
    return sub, view

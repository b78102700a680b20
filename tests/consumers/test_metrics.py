"""`netevents metrics`: scraped over loopback while real batches go over a real nats-server."""

from __future__ import annotations

import asyncio
import time
import urllib.request

import pytest

from netevents.bus import connect
from netevents.codec import Batch
from netevents.errors import ConfigError

pytest.importorskip("prometheus_client", reason="needs prometheus_client (extra 'metrics')")

from netevents.consumers.metrics import parse_listen, run_metrics  # noqa: E402

NS = 1_000_000_000


def _batch(kind: str, host: str, seq: int, events, **fields) -> Batch:
    now = time.time_ns()
    return Batch(kind=kind, site="local", host=host, run=f"r-{host}-{kind}", seq=seq, t0=now - NS,
                 t1=now, events=events, fields=fields)


def test_metrics_scraped_over_loopback(nats_url):
    async def main():
        stop = asyncio.Event()
        bound: list = []
        task = asyncio.create_task(run_metrics(nats_url, "127.0.0.1:0", stop=stop,
                                               started=bound.append, refresh=0.2))
        while not bound:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # subscribed
        async with connect(nats_url) as bus:
            await bus.publish(_batch("drop", "web-1", 1, [
                {"count": 7, "source": "counter", "reason": "UDP_RCVBUF_ERRORS", "location": "Udp:RcvbufErrors"}]))
            await bus.publish(_batch("drop", "web-1", 3, [  # seq 2 never sent: one missed batch
                {"count": 2, "source": "counter", "reason": "UDP_RCVBUF_ERRORS", "location": "Udp:RcvbufErrors"}]))
            await bus.publish(_batch("gap", "web-2", 1, [{"iface": "eth0", "lost": 11, "cause": "ring_full"}]))
            await bus.publish(_batch("status", "web-1", 1, [{"version": "t", "lost": {"queue.drop": 4},
                                                             "addresses": {"root": ["10.5.0.1"]}}]))
            await bus.publish(_batch("status", "web-2", 1, [{"version": "t",
                                                             "addresses": {"root": ["10.5.0.2"]}}]))
            await bus.publish(_batch("ipstat", "web-1", 1, [
                {"peer": "10.5.0.2", "retrans_segs": 31, "timeouts": 2}]))
            await bus.publish(_batch("drop", "web-2", 1, [
                {"count": 12, "source": "ebpf", "reason": "NETFILTER_DROP", "location": "nft_do_chain+0x4a0",
                 "flow": {"src": "10.5.0.1", "dst": "10.5.0.2"}}]))
            await bus.publish(_batch("incident", "correlator-x", 1, [
                {"type": "path_loss", "summary": "s", "hosts": ["web-1", "web-2"],
                 "details": {"from": "web-1", "to": "web-2", "delivered": 90, "lost": 10, "unknown": 3}}]))
            await bus.nc.publish("netevents.v1.drop.local.web-1", b"\xc1not msgpack")
            await bus.flush()
        await asyncio.sleep(1.0)
        url = f"http://{bound[0][0]}:{bound[0][1]}/metrics"
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
        stop.set()
        await task
        return text

    text = asyncio.run(main())
    lines = set(text.splitlines())
    assert 'netevents_drops_total{host="web-1",location="Udp:RcvbufErrors",reason="UDP_RCVBUF_ERRORS"} 9.0' in lines
    assert 'netevents_capture_gap_frames_total{host="web-2"} 11.0' in lines
    assert 'netevents_agent_lost_total{host="web-1",place="queue.drop"} 4.0' in lines
    assert 'netevents_consumer_missed_batches_total{host="web-1",kind="drop"} 1.0' in lines
    assert 'netevents_incidents_total{type="path_loss"} 1.0' in lines
    assert 'netevents_path_frames{from="web-1",outcome="lost",to="web-2"} 10.0' in lines
    assert 'netevents_path_frames{from="web-1",outcome="unknown",to="web-2"} 3.0' in lines
    assert 'netevents_consumer_rejected_messages_total{reason="malformed"} 1.0' in lines
    # who is hurting whom: web-1's retransmits toward web-2, web-2's drops on their flows
    assert 'netevents_peer_retransmits_total{host="web-1",peer="10.5.0.2"} 31.0' in lines
    assert 'netevents_peer_timeouts_total{host="web-1",peer="10.5.0.2"} 2.0' in lines
    assert ('netevents_peer_drops_total{host="web-1",location="nft_do_chain+0x4a0",peer="10.5.0.2",'
            'peer_host="web-2",reason="NETFILTER_DROP"} 12.0') in lines
    (window,) = [float(x.rsplit(" ", 1)[1]) for x in lines
                 if x.startswith('netevents_peer_window_seconds{host="web-1",peer="10.5.0.2"}')]
    assert 1.0 <= window < 3.0  # the ipstat window and the drops, published a moment apart


def test_listen_address_is_checked():
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen("[::1]:0") == ("::1", 0)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_listen("9464x")

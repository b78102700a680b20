"""deploy/grafana/netevents.json against a real Prometheus (Debian's package, on loopback)
scraping a real `netevents metrics`: every query of the dashboard is valid PromQL and returns
series."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from netevents.bus import connect
from netevents.codec import Batch
from tests.conftest import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "netevents.json"
PROMETHEUS = shutil.which("prometheus")
NS = 1_000_000_000

pytest.importorskip("prometheus_client", reason="needs prometheus_client (extra 'metrics')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def _wait(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} never answered")


def _batch(kind: str, host: str, seq: int, events) -> Batch:
    now = time.time_ns()
    return Batch(kind=kind, site="local", host=host, run=f"r-{host}-{kind}", seq=seq,
                 t0=now - NS, t1=now, events=events)


FLEET = [
    _batch("drop", "web-1", 1, [{"count": 7, "source": "counter", "reason": "UDP_RCVBUF_ERRORS",
                                 "location": "Udp:RcvbufErrors"}]),
    _batch("drop", "web-1", 3, [{"count": 2, "source": "ebpf", "reason": "NETFILTER_DROP",
                                 "location": "nf_hook_slow+0x9a"}]),     # seq 2 missed
    _batch("gap", "web-2", 1, [{"iface": "eth0", "lost": 11, "cause": "ring_full"}]),
    _batch("ipstat", "web-1", 1, [{"peer": "10.0.0.2", "level": "default", "retrans_segs": 5,
                                   "resets": 1, "resets_in": 2}]),
    _batch("status", "web-1", 1, [{"version": "t", "lost": {"queue.drop": 4}}]),
    _batch("incident", "correlator-x", 1, [
        {"type": "path_loss", "summary": "s", "hosts": ["web-1", "web-2"],
         "details": {"from": "web-1", "to": "web-2", "delivered": 90, "lost": 10, "unknown": 3}}]),
]


@pytest.mark.skipif(PROMETHEUS is None, reason="needs Debian's prometheus package")
def test_every_dashboard_query_is_valid_promql_and_returns_series(nats_url, tmp_path):
    exporter_port, prom_port = _free_port(), _free_port()
    exporter = subprocess.Popen([sys.executable, "-m", "netevents.app", "metrics", "--bus", nats_url,
                                 "--listen", f"127.0.0.1:{exporter_port}"], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: netevents\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{exporter_port}']\n")
    prom = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{prom_port}/api/v1"
    try:
        _wait(f"http://127.0.0.1:{exporter_port}/metrics")

        async def publish() -> None:
            async with connect(nats_url) as bus:
                for b in FLEET:
                    await bus.publish(b)
                await bus.nc.publish("netevents.v1.drop.local.web-1", b"\xc1not msgpack")
                await bus.flush()

        asyncio.run(publish())
        _wait(f"http://127.0.0.1:{prom_port}/-/ready")
        exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
        assert len(exprs) >= 10
        empty: dict[str, str] = {}
        deadline = time.monotonic() + 40   # rate()/increase() need two scrapes of each series
        while time.monotonic() < deadline:
            empty = {}
            for expr in exprs:
                doc = _get(f"{api}/query?" + urllib.parse.urlencode({"query": expr}))
                assert doc["status"] == "success", (expr, doc)      # valid PromQL
                if not doc["data"]["result"]:
                    empty[expr] = "no series"
            if not empty:
                break
            time.sleep(1)
        assert not empty, empty
    finally:
        for p in (prom, exporter):
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

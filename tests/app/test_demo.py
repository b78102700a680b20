"""The demo fleet as the integration test: >= 3 namespace hosts, one agent each, a real
nats-server, real faults (tbf tail drops and a 5 % random nftables bridge drop on the hub's link
to host 2, an nftables drop on host 3, a full UDP receive buffer on host 1, host 3's capture
stopped during a paced burst). One run (~35 s) serves every test here."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


STRANGER_NOISE = ("import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                  "end = time.time() + 60\n"
                  "while time.time() < end:\n    s.sendto(b'x', ('127.0.0.1', 9)); time.sleep(0.01)\n")


@pytest.fixture(scope="module")
def demo():
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "tc", "nft")):
        pytest.skip("needs root, iproute2 (ip, tc) and nftables to build namespace hosts")
    if not Path("/sys/kernel/tracing/events/skb/kfree_skb").exists():
        pytest.skip("needs tracefs with the skb:kfree_skb tracepoint")
    before = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    # A namespace that is not the demo's, dropping packets all along (UDP to a closed port on
    # its loopback): the demo must not name it among its hosts.
    stranger = f"ne-stranger-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", stranger], check=True)
    noise = None
    try:
        subprocess.run(["ip", "-n", stranger, "link", "set", "lo", "up"], check=True)
        noise = subprocess.Popen(["ip", "netns", "exec", stranger, sys.executable, "-c", STRANGER_NOISE])
        proc = subprocess.run([sys.executable, "-m", "netevents.app", "demo", "--duration", "22",
                               "--json", "--loss", "5", "--keep-logs"],
                              cwd=ROOT, capture_output=True, text=True, timeout=150)
    finally:
        if noise is not None:
            noise.kill()
            noise.wait()
        subprocess.run(["ip", "netns", "del", stranger], check=False)
    after = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    incidents = [ln["incident"] for ln in lines if "incident" in ln]
    summary = next(ln["summary"] for ln in lines if "summary" in ln)
    kept = re.search(r"demo: logs and configs kept in (\S+)", proc.stderr)
    logs = sorted(p.name for p in Path(kept.group(1)).glob("agent-*.log")) if kept else []
    if kept:
        shutil.rmtree(kept.group(1), ignore_errors=True)
    return {"incidents": incidents, "summary": summary, "stderr": proc.stderr, "stranger": stranger,
            "kept_logs": logs,
            "leftover": [n for n in after.split() if n.startswith("ne-") and n not in before
                         and any(n.endswith(h[-5:]) for h in summary["hosts"])]}


def _pair(summary, a, b):
    return next((r for r in summary["paths"] if r["from"] == a and r["to"] == b), None)


def test_loss_on_one_link_is_an_incident_naming_the_right_pair(demo):
    h1, h2, h3 = demo["summary"]["hosts"][:3]
    paths = [i for i in demo["incidents"] if i["type"] == "path_loss"]
    assert any(i["hosts"] == [h1, h2] and i["details"]["lost"] > 0 for i in paths), \
        [i["summary"] for i in paths]
    # the links to hosts 1 and 3 are not lossy: frames to them are delivered (or unknown)
    for a, b in ((h2, h1), (h1, h3), (h2, h3), (h3, h1)):
        row = _pair(demo["summary"], a, b)
        assert row is not None and row["delivered"] > 100, (a, b, row)
        # h3 gets the burst: a few frames toward it may really be dropped before its
        # tap (veth backlog), the rest of what h3 missed is unknown (see the gap test)
        bound = 0.03 if b == h3 else 0.01
        assert row["lost"] <= row["delivered"] * bound, (a, b, row)
    # the tbf's tail drops in the hub are the coinciding reason (machine-wide from the
    # tracepoint; "path (hub)" from the eBPF source, which names the hub's namespace)
    inc = [i for i in paths if i["hosts"] == [h1, h2]][-1]
    assert any("QDISC_DROP" in label for label in inc["details"]["reasons"]), inc["details"]["reasons"]
    assert {"frame", "gap"} <= set(inc["inputs"])
    assert set(inc["missing_input"]) == {f"{h}/{k}" for h in (h1, h2) for k in ("frame", "gap")}
    assert inc["details"]["ts_src"], "timestamp sources stated"


def test_loss_hidden_by_a_capture_gap_is_unknown_not_lost(demo):
    h1, _h2, h3 = demo["summary"]["hosts"][:3]
    assert any("SIGSTOP" in e for e in demo["summary"]["faults"]["capture_gap"]), demo["summary"]["faults"]
    row = _pair(demo["summary"], h1, h3)
    # the 5000-datagram burst went out while h3's capture was stopped: its ring overflowed, and
    # what h3's capture missed in the gap is unknown ...
    assert row["unknown"] > 500, row
    # ... not lost: only the few the burst really lost before h3's tap (veth backlog) are
    assert row["lost"] <= max(0.03 * row["delivered"], row["unknown"] / 20), row


def test_random_loss_on_the_link_is_measured_and_named_on_the_path(demo):
    h1, h2, h3 = demo["summary"]["hosts"][:3]
    assert "5% random" in demo["summary"]["faults"]["lossy_link"]
    row = _pair(demo["summary"], h3, h2)  # h3 sends h2 only paced UDP: the random drop dominates
    judged = row["delivered"] + row["lost"]
    assert judged > 300 and 0.02 <= row["lost"] / judged <= 0.25, row
    if demo["summary"]["kernel_wide_source"] != "ebpf":
        pytest.skip("naming the hub's namespace needs the eBPF drop source (netns); measured only")
    hub = demo["summary"]["hub"]
    drops = [d for d in demo["summary"]["drops"]
             if d["entity"] == f"netns:{hub}" and d["reason"] == "NETFILTER_DROP"]
    assert drops and drops[0]["count"] > 10, demo["summary"]["drops"][:10]
    reasons = [i["details"]["reasons"] for i in demo["incidents"]
               if i["type"] == "path_loss" and i["hosts"] in ([h1, h2], [h3, h2])]
    assert any(f"NETFILTER_DROP (path ({hub}))" in r for r in reasons), reasons[-2:]
    # the demo samples every dropped packet: losses are named by the drop of that very packet
    last = [i for i in demo["incidents"] if i["type"] == "path_loss" and i["hosts"] == [h3, h2]][-1]
    assert last["details"]["reasons_by_packet"] >= last["details"]["lost"] // 2, last["details"]


def test_full_udp_receive_buffer_is_attributed_to_its_host(demo):
    h1 = demo["summary"]["hosts"][0]
    rows = [d for d in demo["summary"]["drops"]
            if d["entity"] == h1 and d["reason"] == "UDP_RCVBUF_ERRORS"]
    assert rows and rows[0]["count"] > 10, demo["summary"]["drops"][:10]
    assert "own namespace" in rows[0]["how"]


def test_firewall_drop_is_attributed_to_its_host_with_netfilter_drop(demo):
    h3 = demo["summary"]["hosts"][2]
    drops = demo["summary"]["drops"]
    if demo["summary"]["kernel_wide_source"] != "ebpf":
        # The tracepoint cannot tell the namespace: the drop must be reported machine-wide,
        # never given to a host on a guess.
        nf = [d for d in drops if d["reason"] == "NETFILTER_DROP"]
        assert nf and all(d["entity"].startswith("machine:") for d in nf), nf
        pytest.skip("attribution to the namespace host needs the eBPF drop source (netns); "
                    "the tracepoint's NETFILTER_DROP was correctly reported machine-wide")
    nf = [d for d in drops if d["entity"] == h3 and d["reason"] == "NETFILTER_DROP"]
    assert nf and nf[0]["count"] > 10, drops[:10]


def test_everything_removed(demo):
    assert demo["leftover"] == []


def test_the_demo_names_only_its_own_hosts(demo):
    summary = demo["summary"]
    mine = set(summary["hosts"]) | {f"netns:{summary['hub']}"}
    entities = {d["entity"] for d in summary["drops"]}
    entities |= {h for i in demo["incidents"] for h in i["hosts"]}
    strangers = {e for e in entities if e not in mine and not e.startswith("machine:")}
    assert not strangers, strangers
    if summary["kernel_wide_source"] == "ebpf":  # it names namespaces: the stranger's were seen
        assert summary["foreign_namespace_drops"].get(demo["stranger"], 0) > 0, summary


def test_keep_logs_keeps_the_work_directory_and_says_where(demo):
    assert demo["kept_logs"] == sorted(f"agent-{h}.log" for h in demo["summary"]["hosts"])

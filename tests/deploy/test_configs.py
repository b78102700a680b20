"""Every shipped deployment file is accepted by the tool that reads it.

NATS configs by `nats-server -t`, systemd units by `systemd-analyze verify`, Kubernetes
manifests as YAML with the fields the agent relies on, the sample agent config by the agent's own
loader. TLS: a server with deploy/nats/tls.conf (verify: true) admits a client that presents
its certificate (--tls-ca/--tls-cert/--tls-key) and refuses one that does not.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from netevents.agent.config import load_file
from netevents import connect
from netevents.auth import Fleet, host_token
from netevents.bus import Credentials, find_nats_server
from netevents.errors import BusError

from .servers import DEPLOY, NATS_CONFS, NatsProcess, PortMap, rewrite_conf

SERVER_CONFS = ["single.conf", "cluster-1.conf", "cluster-2.conf", "cluster-3.conf", "leaf.conf"]


def nats_test(conf: Path) -> subprocess.CompletedProcess:
    return subprocess.run([find_nats_server(), "-t", "-c", str(conf)], capture_output=True,
                          text=True, timeout=30)


@pytest.mark.parametrize("name", SERVER_CONFS)
def test_shipped_nats_config_parses(name):
    out = nats_test(NATS_CONFS / name)
    assert out.returncode == 0 and "is valid" in out.stderr + out.stdout, out.stderr


@pytest.mark.parametrize("name", SERVER_CONFS)
def test_nats_config_parses_with_a_generated_fleet(tmp_path, name):
    fleet = Fleet(tmp_path / "fleet")
    fleet.add("agent", "web-1", "nats://127.0.0.1:4222", site="local", host="web-1")
    fleet.add("consumer", "archive", "nats://127.0.0.1:4222")
    fleet.add("correlator", "c", "nats://127.0.0.1:4222", site="local", host="c1")
    conf = rewrite_conf(NATS_CONFS / name, tmp_path / "srv", PortMap(), tmp_path / "fleet" / "auth.conf")
    out = nats_test(conf)
    assert out.returncode == 0, out.stderr


def test_a_broken_config_is_refused_by_the_same_check(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text((NATS_CONFS / "single.conf").read_text().replace("jetstream {", "jetstream {{"))
    shutil.copy(NATS_CONFS / "auth.conf", tmp_path / "auth.conf")
    assert nats_test(bad).returncode != 0


def _systemd_units() -> list[Path]:
    return sorted((DEPLOY / "systemd").glob("*.service"))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
@pytest.mark.parametrize("unit", _systemd_units(), ids=lambda p: p.name)
def test_systemd_unit_verifies(tmp_path, unit):
    # verify checks that ExecStart's binary exists: point it at the ones installed here.
    netevents = shutil.which("netevents") or "/bin/true"
    text = unit.read_text().replace("/opt/netevents/bin/netevents", netevents) \
                           .replace("/opt/netevents/bin/nats-server", find_nats_server())
    copy = tmp_path / unit.name
    copy.write_text(text)
    out = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert unit.name not in out.stderr, out.stderr  # no warning about our unit


def test_agent_unit_grants_exactly_the_capabilities_the_sources_use():
    text = (DEPLOY / "systemd" / "netevents-agent.service").read_text()
    caps = re.search(r"^CapabilityBoundingSet=(.*)$", text, re.M).group(1).split()
    assert sorted(caps) == ["CAP_BPF", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_PERFMON",
                            "CAP_SYSLOG", "CAP_SYS_ADMIN"]
    for consumer in ("server", "archive", "correlate"):
        text = (DEPLOY / "systemd" / f"netevents-{consumer}.service").read_text()
        assert re.search(r"^CapabilityBoundingSet=$", text, re.M), consumer


def test_kubernetes_manifests_and_the_host_token_derivation():
    yaml = pytest.importorskip("yaml")
    docs = {}
    for f in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for d in yaml.safe_load_all(f.read_text()):
            if d:
                docs[(d["kind"], d["metadata"]["name"])] = d
    ds = docs[("DaemonSet", "netevents-agent")]["spec"]["template"]["spec"]
    assert ds["hostNetwork"] is True
    agent = ds["containers"][0]
    assert sorted(agent["securityContext"]["capabilities"]["add"]) == [
        "BPF", "NET_ADMIN", "NET_RAW", "PERFMON", "SYSLOG", "SYS_ADMIN"]
    assert agent["securityContext"]["readOnlyRootFilesystem"] is True
    # Every pod runs the image deploy/Containerfile builds (its header names the tag).
    tag = re.search(r"-t (\S+) \.", (DEPLOY / "Containerfile").read_text()).group(1)
    images = {c["image"] for d in docs.values() if d["kind"] in ("DaemonSet", "Deployment")
              for c in d["spec"]["template"]["spec"]["containers"]}
    assert images == {tag}
    assert agent["securityContext"]["capabilities"]["drop"] == ["ALL"]
    config = docs[("ConfigMap", "netevents-agent")]["data"]["agent.toml"]
    # The DaemonSet's shell turns the node name into the --host token exactly as host_token().
    script = agent["command"][2]
    derive = script.splitlines()[0]
    for node in ("web-1", "ip-10-0-0-1.ec2.internal", "node_7.rack:3"):
        out = subprocess.run(["sh", "-c", derive + '\nprintf %s "$HOST"'], env={"NODE_NAME": node,
                             "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, check=True)
        assert out.stdout == host_token(node)
    assert "--host \"$HOST\"" in script and "agent.$NETEVENTS_SITE.$HOST.env" in script
    assert "[netstat]" in config
    for name in ("netevents-archive", "netevents-correlate"):
        pod = docs[("Deployment", name)]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_sample_agent_config_loads(tmp_path):
    cfg = load_file(DEPLOY / "agent.toml").validate()
    assert "netstat" in cfg.sources
    (tmp_path / "a.toml").write_text('[agent]\ncreds = "/etc/netevents/agent.creds"\n')
    assert load_file(tmp_path / "a.toml").creds == "/etc/netevents/agent.creds"


# ---------------------------------------------------------------------------------------------
# TLS with client certificates

def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_pki(d: Path) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout",
                 f"{name}.key", "-out", f"{name}.csr", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make test certificates")
def test_tls_conf_admits_a_client_certificate_and_refuses_a_client_without(tmp_path):
    pki = tmp_path / "pki"
    pki.mkdir()
    _make_pki(pki)
    fleet = Fleet(tmp_path / "fleet")
    env = fleet.add("consumer", "tls", "nats://127.0.0.1:4222")[1]
    srv = tmp_path / "srv"
    conf = rewrite_conf(NATS_CONFS / "single.conf", srv, PortMap(), tmp_path / "fleet" / "auth.conf")
    conf.write_text(conf.read_text().replace('# include "tls.conf"', 'include "tls.conf"'))
    (srv / "tls.conf").write_text((NATS_CONFS / "tls.conf").read_text().replace("/etc/netevents/tls", str(pki)))
    server = NatsProcess(conf).start()
    try:
        line = next(ln for ln in env.read_text().splitlines() if ln.startswith("NETEVENTS_BUS="))
        url = line.split("=", 1)[1].replace("nats://", "tls://").replace("127.0.0.1:4222", f"127.0.0.1:{server.port}")

        async def main():
            good = Credentials(tls_ca=str(pki / "ca.crt"), tls_cert=str(pki / "client.crt"),
                               tls_key=str(pki / "client.key"))
            async with connect(url, reconnect=False, credentials=good) as bus:
                await bus.flush()
            with pytest.raises(BusError):
                async with connect(url, reconnect=False, connect_timeout=3,
                                   credentials=Credentials(tls_ca=str(pki / "ca.crt"))):
                    pass

        asyncio.run(main())
        # The command line takes the same files.
        out = subprocess.run([sys.executable, "-m", "netevents.app", "tail", "--bus", url,
                              "--timeout", "0.5", "--tls-ca", str(pki / "ca.crt"), "--tls-cert",
                              str(pki / "client.crt"), "--tls-key", str(pki / "client.key")],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
    finally:
        server.stop()


def _route_login(port: int, user: str | None, password: str | None) -> str:
    """Speak the route protocol to a node's cluster port as another server would."""
    import json
    import socket
    import time

    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.recv(65536)  # the server's INFO
        connect = {"verbose": False, "pedantic": False, "name": "intruder", "tls_required": False,
                   "cluster": "netevents"}
        if user:
            connect.update(user=user, **{"pass": password})
        s.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
        got, deadline = b"", time.monotonic() + 3
        while time.monotonic() < deadline and b"Authorization" not in got and b"PONG" not in got:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, OSError):
                break
            if not chunk:
                break
            got += chunk
        return got.decode(errors="replace")


def test_cluster_routes_refuse_a_server_without_the_route_password(tmp_path):
    fleet = Fleet(tmp_path / "fleet")
    fleet.add("admin", "ops", "nats://127.0.0.1:4222")
    fleet.set_routes(["127.0.0.1:6222", "127.0.0.1:6223", "127.0.0.1:6224"])
    ports = PortMap()
    node = NatsProcess(rewrite_conf(NATS_CONFS / "cluster-1.conf", tmp_path / "c", ports,
                                    tmp_path / "fleet" / "auth.conf")).start()
    try:
        route_port = ports["6222"]
        for user, password in ((None, None), ("route", "guess"), ("admin.ops", "x")):
            assert "Authorization Violation" in _route_login(route_port, user, password), user
        ok = _route_login(route_port, "route", fleet.routes["password"])
        assert "PONG" in ok and "Authorization Violation" not in ok, ok
    finally:
        node.stop()
    assert "routes.conf" in (NATS_CONFS / "cluster-1.conf").read_text()

"""Shared fixtures: a real nats-server on a free loopback port, and network-namespace test hosts.

Tests are plain functions that call ``asyncio.run`` (or ``trio.run``); no event-loop plugin.

What is tested is the installed ``netevents``: an editable install (developers) or, in CI, the
wheel installed into a fresh environment (``.venv-installed``, made by
scripts/install-wheel.sh; or any environment with ``NETEVENTS_TESTS=installed``). The checkout is put at the *end* of ``sys.path`` only so the
test helpers (``tests.conftest``, ``tests.framegen``) import; the installed package comes
first. In installed mode a ``netevents`` imported from the checkout is an error (it would test
the source tree, not the wheel), and ``PYTHONSAFEPATH`` keeps the tests' own subprocesses
(``python -m netevents.app`` with the checkout as working directory) from importing it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))
INSTALLED = (Path(sys.prefix).name == ".venv-installed"
             or os.environ.get("NETEVENTS_TESTS") == "installed")
"""Running against the wheel scripts/install-wheel.sh installed (its ``dist/`` holds the
wheel and the sdist it was built from)."""

import netevents  # noqa: E402
from netevents.bus import EmbeddedServer  # noqa: E402

if INSTALLED:
    if Path(netevents.__file__).resolve().parent == ROOT / "netevents":
        raise pytest.UsageError(
            f"testing the installed wheel, but netevents was imported from the checkout "
            f"({netevents.__file__}): run python with -P (or PYTHONSAFEPATH=1), as the "
            "README's test command does")
    os.environ["PYTHONSAFEPATH"] = "1"


@pytest.fixture(autouse=True, scope="session")
def _spool_in_a_temporary_directory(tmp_path_factory):
    """Agents started by tests (also as subprocesses) spool below a temporary directory, not in
    /var/lib/netevents."""
    old = os.environ.get("NETEVENTS_SPOOL")
    os.environ["NETEVENTS_SPOOL"] = str(tmp_path_factory.mktemp("spool"))
    yield
    if old is None:
        os.environ.pop("NETEVENTS_SPOOL", None)
    else:
        os.environ["NETEVENTS_SPOOL"] = old


@pytest.fixture
def nats_server(tmp_path):
    """A real nats-server with JetStream on 127.0.0.1:<free port>; stopped by pid afterwards."""
    server = EmbeddedServer(tmp_path / "nats-store", port=0)
    server.start_blocking()
    try:
        yield server
    finally:
        server.stop_blocking()


@pytest.fixture
def nats_url(nats_server) -> str:
    return nats_server.url


def is_root() -> bool:
    return os.geteuid() == 0


needs_root = pytest.mark.skipif(not is_root(), reason="needs root (network namespaces, tracefs)")
needs_ip = pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2's ip command")


class NetnsHost:
    """A network namespace joined to another by a veth pair; removed on close."""

    def __init__(self, name: str) -> None:
        self.name = name

    def run(self, *cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd], check=check,
                              capture_output=True, text=True, **kw)


@pytest.fixture
def netns_pair():
    """Two namespace hosts ``a`` (10.209.X.1) and ``b`` (10.209.X.2) joined by veth; always removed.

    Yields ``(a, b, prefix)``; interface names are ``veth-a`` in a and ``veth-b`` in b.
    """
    if not is_root() or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create network namespaces")
    tag = uuid.uuid4().hex[:6]
    a, b = NetnsHost(f"ne-a-{tag}"), NetnsHost(f"ne-b-{tag}")
    octet = int(tag[:2], 16) % 200 + 20
    prefix = f"10.209.{octet}"
    made: list[str] = []
    try:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "add", ns.name], check=True)
            made.append(ns.name)
        subprocess.run(["ip", "link", "add", f"va{tag}", "netns", a.name, "type", "veth",
                        "peer", "name", f"vb{tag}", "netns", b.name], check=True)
        a.run("ip", "link", "set", f"va{tag}", "name", "veth-a")
        b.run("ip", "link", "set", f"vb{tag}", "name", "veth-b")
        for ns, ifname, addr in ((a, "veth-a", f"{prefix}.1/24"), (b, "veth-b", f"{prefix}.2/24")):
            ns.run("ip", "addr", "add", addr, "dev", ifname)
            ns.run("ip", "link", "set", ifname, "up")
            ns.run("ip", "link", "set", "lo", "up")
        yield a, b, prefix
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], check=False)


INTEGRATION_FIXTURES = {"nats_server", "nats_url", "netns_pair"}
"""A test that uses a real nats-server or namespace hosts is an integration test: the marker
comes from the fixture, so no file can forget it (``pytest -m "not integration"`` runs the
rest in seconds)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)

"""What users install: the wheel's and the sdist's contents, and an agent from the installed
package that attaches the eBPF source and the C walker with no compiler on PATH.

The archive checks need the files scripts/install-wheel.sh builds into ``dist/`` (or
``NETEVENTS_WHEEL``, ``NETEVENTS_SDIST``); they skip with that reason on an editable install. The agent test runs
on either install (it is what a developer's editable install must do too).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from netevents.bus import connect
from tests.conftest import INSTALLED, ROOT


def _built(env: str, pattern: str) -> str | None:
    """The file scripts/install-wheel.sh built (in installed mode), or the one named by $env."""
    if os.environ.get(env):
        return os.environ[env]
    found = sorted((ROOT / "dist").glob(pattern)) if INSTALLED else []
    return str(found[-1]) if found else None


WHEEL = _built("NETEVENTS_WHEEL", "netevents-*.whl")
SDIST = _built("NETEVENTS_SDIST", "netevents-*.tar.gz")
needs_wheel = pytest.mark.skipif(not WHEEL, reason="no wheel built: scripts/install-wheel.sh "
                                 "builds one, and the tests run against it from .venv-installed")
needs_sdist = pytest.mark.skipif(not SDIST, reason="no sdist built: scripts/install-wheel.sh "
                                 "builds one")

SCHEMAS = sorted(p.name for p in (ROOT / "schemas" / "v1").glob("*.json"))
SOURCES = ("netstat", "drops", "ipstats", "capture")


@needs_wheel
def test_the_wheel_carries_the_ebpf_object_the_walker_schemas_and_sample_configs():
    names = set(zipfile.ZipFile(WHEEL).namelist())
    ebpf = "netevents/agent/drops/ebpf/"
    for f in ("kfree_skb.bpf.o", "kfree_skb.bpf.json", "kfree_skb.bpf.c"):
        assert ebpf + f in names
    with zipfile.ZipFile(WHEEL) as z:
        assert z.read(ebpf + "kfree_skb.bpf.o") == (ROOT / ebpf / "kfree_skb.bpf.o").read_bytes()
        for s in SCHEMAS:
            assert z.read(f"netevents/schemas/v1/{s}") == (ROOT / "schemas/v1" / s).read_bytes()
    assert "netevents/agent/capture/walker.c" in names
    assert [n for n in names if n.startswith("netevents/agent/capture/_cwalker.")
            and n.endswith(".so")], "the C walker extension was not built into the wheel"
    assert "netevents/_cvalid.c" in names
    assert [n for n in names if n.startswith("netevents/_cvalid.") and n.endswith(".so")], \
        "the C validator extension was not built into the wheel"
    assert "netevents/bus/_cnats.c" in names
    assert [n for n in names if n.startswith("netevents/bus/_cnats.") and n.endswith(".so")], \
        "the C NATS reader extension was not built into the wheel"
    assert [n for n in names if n.startswith("netevents/consumers/correlate/_cfinger.")
            and n.endswith(".so")], "the C fingerprint extension was not built into the wheel"
    assert len(SCHEMAS) >= 7
    for src in SOURCES:
        assert f"netevents/agent/{src}/sample.toml" in names
    assert "netevents/agent/drops/ebpf/sample.toml" in names
    assert not [n for n in names if n.startswith("tests/")]


@needs_sdist
def test_the_sdist_builds_the_wheel_and_carries_the_tests_and_deployments():
    with tarfile.open(SDIST) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    for f in ("setup.py", "pyproject.toml", "schemas/v1/drop.json", "docs/design.md",
              "deploy/systemd/netevents-agent.service", "deploy/Containerfile",
              "tests/conftest.py", "tests/agent/drops/testdata/net_dm/dwdump-sample.pcap",
              "netevents/agent/capture/walker.c", "netevents/_cvalid.c", "netevents/bus/_cnats.c",
              "netevents/consumers/correlate/_cfinger.c",
              "netevents/agent/drops/ebpf/kfree_skb.bpf.o"):
        assert f in names, f


@pytest.mark.skipif(not INSTALLED, reason="only against the installed wheel (.venv-installed)")
def test_tests_and_their_subprocesses_import_the_installed_package():
    import netevents

    source = ROOT / "netevents"
    assert Path(netevents.__file__).resolve().parent != source
    # A subprocess started from the checkout (as many tests do) gets the installed one too.
    p = subprocess.run([sys.executable, "-c", "import netevents; print(netevents.__file__)"],
                       cwd=ROOT, capture_output=True, text=True, check=True)
    assert Path(p.stdout.strip()).resolve().parent != source, p.stdout
    assert "site-packages" in p.stdout


def _ebpf_missing() -> list[str]:
    from netevents.agent.drops.ebpf import libbpf

    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    if not Path("/sys/kernel/btf/vmlinux").exists():
        missing.append("kernel BTF")
    try:
        libbpf.load_library()
    except OSError:
        missing.append("libbpf.so.1 (Debian package libbpf1)")
    return missing


def agent_sources(nats_url: str, tmp_path: Path, wrapper: list[str] = ()) -> tuple[dict, str]:
    """Run the installed ``netevents agent`` (eBPF drops, capture on lo) with no compiler on
    PATH, behind ``wrapper`` (e.g. setpriv); its status ``sources`` and its stderr."""
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty)}   # no clang, cc, gcc, bpftool
    conf = tmp_path / "agent.toml"
    conf.write_text(f'[agent]\nhost = "wheel"\nstatus_interval = 0.5\n'
                    f'spool_dir = "{tmp_path / "spool"}"\n\n[drops]\nsource = "ebpf"\n\n'
                    '[capture]\niface = "lo"\nhwtstamp = false\nwalker = "auto"\n')
    script = Path(sys.executable).with_name("netevents")  # the installed entry point
    assert script.exists()

    async def main() -> tuple[dict, str]:
        async with connect(nats_url) as bus:
            sub = bus.subscribe(["status"], hosts=["wheel"])
            await sub.start()
            agent = await asyncio.create_subprocess_exec(
                *wrapper, str(script), "agent", "--bus", nats_url, "--config", str(conf),
                "--duration", "5", cwd=tmp_path, env=env, stderr=asyncio.subprocess.PIPE)
            sources: dict = {}
            try:
                async with asyncio.timeout(30):
                    async for batch in sub:
                        sources = batch.events[0]["sources"]
                        settled = {"drops.ebpf", "capture.c_walker"} <= set(sources) and \
                            sources["drops.ebpf"]["state"] != "starting"  # still loading
                        if settled or batch.events[0].get("final"):
                            break
            finally:
                _, err = await agent.communicate()
            return sources, err.decode()

    return asyncio.run(main())


needs_ebpf = pytest.mark.skipif(bool(_ebpf_missing()), reason=f"needs {', '.join(_ebpf_missing())}")


@needs_ebpf
def test_agent_attaches_ebpf_and_the_c_walker_with_no_compiler_on_path(nats_url, tmp_path):
    sources, err = agent_sources(nats_url, tmp_path)
    assert "ebpf: kfree_skb_btf attached" in err, err[-3000:]
    assert sources["drops.ebpf"] == {"state": "running"}, sources
    assert sources["capture.c_walker"] == {"state": "running"}, sources
    assert "not found" not in err and "unavailable" not in err, err[-3000:]


def test_a_wheel_built_without_a_compiler_runs_the_python_walker_and_says_why(tmp_path):
    # CC=/bin/false: what a build host without gcc gives (the extension is optional). Built
    # from a clean copy: a checkout's build/ or in-place .so of an earlier build would be
    # packaged as they are, compiler or not.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", ".venv*", "*.egg-info", "__pycache__", ".hypothesis", "*.so"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                            str(tmp_path / "dist"), str(src)], capture_output=True, text=True,
                           env={**os.environ, "CC": "/bin/false"}, timeout=600)
    if build.returncode != 0:
        pytest.skip(f"cannot build a wheel here (pip wheel: {build.stderr.strip()[-300:]})")
    [wheel] = (tmp_path / "dist").glob("netevents-*.whl")
    with zipfile.ZipFile(wheel) as z:
        assert not [n for n in z.namelist() if "_cwalker" in n and n.endswith(".so")]
        assert not [n for n in z.namelist() if "_cvalid" in n and n.endswith(".so")]
        assert not [n for n in z.namelist() if "_cnats" in n and n.endswith(".so")]
        assert not [n for n in z.namelist() if "_cfinger" in n and n.endswith(".so")]
        assert "netevents/agent/drops/ebpf/kfree_skb.bpf.o" in z.namelist()
        z.extractall(tmp_path / "site")
    code = ("import netevents; from netevents.agent.capture import cwalk; "
            "w, why, fallback = cwalk.open_walker(); print(netevents.__file__); print(why)\n"
            # without the C validator the codec decodes eagerly, as it did before it
            "import msgpack; from netevents import lazy; from netevents.codec import decode_batch\n"
            "b = decode_batch(msgpack.packb({'v': 1, 'kind': 'frame', 'site': 's', 'host': 'h', "
            "'run': 'r', 'seq': 1, 't0': 1, 't1': 2, 'events': {'ts': [1, 2]}}))\n"
            "print(lazy.AVAILABLE, type(b.events).__name__, len(b))\n"
            # without the C reader a connection's messages are read by the same scan in Python
            "from netevents.bus import inbound; print(inbound.scan is inbound.scan_py)\n"
            # and frame fingerprints in Python
            "import importlib; f = importlib.import_module('netevents.consumers.correlate.fingerprint')\n"
            "print(f._cfingerprints)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    where, why, codec, py_reader, cfinger = p.stdout.strip().splitlines()
    assert where.startswith(str(tmp_path / "site"))
    assert codec == "False dict 2"
    assert py_reader == "True" and cfinger == "None"
    assert why == ("C block walker unavailable (not built when netevents was installed (no C "
                   "compiler then: Debian package gcc; reinstall netevents to build it)); "
                   "using the pure-Python walker")


def test_the_readme_test_command_is_what_ci_runs():
    import re

    readme = (ROOT / "README.md").read_text()
    command = re.search(r"## Test it.*?```sh\n(.*?)\n```", readme, re.S).group(1).strip()
    ci = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines()
          if ln and not ln.startswith(("#", "set ", "cd "))]
    assert ci == [command]
    assert "install-wheel.sh" in command and "-m pytest" in command


def test_no_file_refers_outside_the_repository():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if files.returncode != 0:
        pytest.skip("not a git checkout (an unpacked sdist): nothing to list")
    outside = (".." + "/shared", "/wo" + "rk/")   # spelled apart so this file passes
    offenders = []
    for name in files.stdout.splitlines():
        path = ROOT / name
        if not path.is_file() or path.suffix in (".o", ".pcap", ".bin"):
            continue
        text = path.read_text(errors="replace")
        if any(o in text for o in outside):
            offenders.append(name)
    assert offenders == []

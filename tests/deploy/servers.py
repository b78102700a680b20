"""nats-server processes from the shipped configs in deploy/nats/, for the deploy tests.

A config is copied into a temporary directory with its ports moved to free loopback ports (the
same old port -> the same new port across the files of one cluster), its store_dir moved into
the temporary directory and the generated auth.conf next to it. Processes are started and
stopped by their own pid.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from netevents.bus import find_nats_server, stop_process

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NATS_CONFS = DEPLOY / "nats"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PortMap(dict):
    """Old port -> a free loopback port, stable within one test."""

    def __missing__(self, port: str) -> int:
        self[port] = new = free_port()
        return new


def rewrite_conf(src: Path, dest_dir: Path, ports: PortMap, auth_conf: Path | None) -> Path:
    """Copy ``src`` into ``dest_dir`` on loopback with free ports and a private store."""
    text = src.read_text()
    text = re.sub(r"(?:0\.0\.0\.0|127\.0\.0\.1):(\d+)", lambda m: f"127.0.0.1:{ports[m.group(1)]}", text)
    store = dest_dir / f"store-{src.stem}"
    text = re.sub(r'store_dir: "[^"]*"', f'store_dir: "{store}"', text)
    dest_dir.mkdir(parents=True, exist_ok=True)
    if auth_conf is not None:
        (dest_dir / "auth.conf").write_text(auth_conf.read_text())
    for inc in re.findall(r'^\s*include "([^"/]+)"', text, re.M):
        # other includes (routes.conf): the fleet's generated one next to auth.conf, else the
        # shipped sample; on the same free ports
        if inc == "auth.conf" or (dest_dir / inc).exists() and inc != "routes.conf":
            continue
        generated = auth_conf.parent / inc if auth_conf is not None else None
        source = generated if generated is not None and generated.exists() else NATS_CONFS / inc
        if source.exists():
            (dest_dir / inc).write_text(re.sub(r"(?:0\.0\.0\.0|127\.0\.0\.1):(\d+)",
                                               lambda m: f"127.0.0.1:{ports[m.group(1)]}",
                                               source.read_text()))
    dest = dest_dir / src.name
    dest.write_text(text)
    return dest


def client_port(conf: Path) -> int:
    return int(re.search(r'^listen: "127\.0\.0\.1:(\d+)"', conf.read_text(), re.M).group(1))


class NatsProcess:
    """One nats-server started from a config file; ``stop``/``kill`` by pid."""

    def __init__(self, conf: Path) -> None:
        self.conf = conf
        self.port = client_port(conf)
        self.log = conf.with_suffix(".log")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> NatsProcess:
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen([find_nats_server(), "-c", str(self.conf)], stdout=logf,
                                         stderr=logf, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server {self.conf} exited: {self.log.read_text()[-800:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"nats-server {self.conf} did not listen within {timeout}s")

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def env_value(env_file: Path, name: str) -> str:
    """One ``NAME=value`` of a credentials file that `netevents auth` wrote."""
    line = next(ln for ln in env_file.read_text().splitlines() if ln.startswith(f"{name}="))
    return line.split("=", 1)[1]


def creds_url(env_file: Path, port: int) -> str:
    """The NETEVENTS_BUS of a generated credentials file, pointed at the test server."""
    return env_value(env_file, "NETEVENTS_BUS").replace("127.0.0.1:4222", f"127.0.0.1:{port}")

"""The live views in a real terminal (tmux): what a person sees in `netevents up` and `top`."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import uuid

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Terminal:
    """A detached tmux session of 160x40 running one command."""

    def __init__(self, cmd: list[str]) -> None:
        self.name = f"ne-test-{uuid.uuid4().hex[:8]}"
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", "160", "-y", "40",
                        "-c", str(ROOT), " ".join(cmd)], check=True)

    def screen(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name], text=True,
                              capture_output=True).stdout

    def wait_for(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.3)
        raise AssertionError(f"{text!r} never appeared; the screen:\n{screen}")

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def alive(self) -> bool:
        return subprocess.run(["tmux", "has-session", "-t", self.name],
                              capture_output=True).returncode == 0

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def test_up_hosts_view_keeps_its_columns_and_names_states(tmp_path):
    port = _free_port()
    term = Terminal([sys.executable, "-m", "netevents.app", "up", "--port", str(port),
                     "--store", str(tmp_path / "store"), "--spool", str(tmp_path / "spool"),
                     "--netstat", "--host", "tty-host"])
    try:
        screen = term.wait_for("netstat:ok")
        lines = screen.splitlines()
        head = next(x for x in lines if x.startswith("host "))
        row = next(x for x in lines if x.startswith("tty-host "))
        for col in ("run", "sources", "capture gaps", "own losses"):
            assert row[head.index(col) - 2:head.index(col)] == "  ", (head, row)
        assert "runn" not in row and "unav" not in row
        term.keys("q")
        deadline = time.monotonic() + 20
        while term.alive() and time.monotonic() < deadline:
            time.sleep(0.3)
        assert not term.alive(), "q did not end netevents up"
    finally:
        term.close()

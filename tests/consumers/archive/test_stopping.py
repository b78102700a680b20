"""`netevents archive` stops when asked, in every state: a busy stream, nothing matching its host
filter, the server gone. Each time it exits 0 within a few seconds, the file is sealed (complete
sidecar, readable PcapNG) and the durable's position is intact (a second run archives the rest,
no frame twice)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from netevents.pcapng import EnhancedPacket, read_pcapng
from tests.consumers.archive.test_bus import (
    archived_frames,
    publish,
    sidecars,
    start_archiver,
    wait_for,
)
from tests.framegen import frame_batch

pytestmark = pytest.mark.integration

BOUND = 6.0
"""Seconds from the request to stop to the process gone (the issue says: a few)."""


def batches(host: str, n: int, per: int = 40, run: str = "r1"):
    return [frame_batch(host, run, i + 1, i * per, per) for i in range(n)]


def stop_within(proc: subprocess.Popen, sig: int | None = signal.SIGTERM) -> float:
    t0 = time.monotonic()
    if sig is not None:
        proc.send_signal(sig)
    try:
        _out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the archiver did not stop within 30 s") from None
    took = time.monotonic() - t0
    assert proc.returncode == 0, err
    return took


def sealed(out: Path) -> list:
    docs = sidecars(out)
    assert docs and all(d["complete"] for d in docs), docs
    packets = []
    for p in sorted(out.glob("*.pcapng")):
        packets += read_pcapng(p.read_bytes()).of(EnhancedPacket)
    return packets


def test_stops_on_sigterm_while_the_stream_is_busy(nats_url, tmp_path):
    publish(nats_url, batches("busy-1", 1500))
    more = threading.Thread(target=publish, args=(nats_url, batches("busy-1", 1500, run="r2")))
    more.start()
    out = tmp_path / "a"
    proc = start_archiver(nats_url, out, "--durable", "t-stop-busy")
    try:
        assert wait_for(lambda: archived_frames(out) > 0, 30, proc)
        took = stop_within(proc)
    finally:
        more.join()
        if proc.poll() is None:
            proc.kill()
    assert took < BOUND, took
    first = sealed(out)
    # the durable resumes exactly after what was written: every frame once in the two runs
    out2 = tmp_path / "b"
    proc = start_archiver(nats_url, out2, "--durable", "t-stop-busy")
    try:
        assert wait_for(lambda: sidecars(out2) and len(first) + archived_frames(out2) >= 3000 * 40,
                        90, proc)
        stop_within(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    second = sealed(out2)
    ids = [p.packetid for p in first + second]
    assert len(ids) == len(set(ids)) == 3000 * 40
    assert 0 < len(first) < 3000 * 40  # it was stopped mid-stream


def test_duration_ends_it_with_nothing_matching_the_host_filter(nats_url, tmp_path):
    publish(nats_url, batches("other-1", 400))
    out = tmp_path / "a"
    proc = start_archiver(nats_url, out, "--durable", "t-stop-none", "--host", "nomatch-1",
                          "--host", "nomatch-2", "--duration", "2")
    t0 = time.monotonic()
    stop_within(proc, None)
    assert time.monotonic() - t0 < 2 + BOUND + 3  # start-up (imports, connect) included
    assert sealed(out) == []


def test_sigint_ends_it_when_the_server_is_gone(nats_server, nats_url, tmp_path):
    publish(nats_url, batches("gone-1", 50))
    out = tmp_path / "a"
    proc = start_archiver(nats_url, out, "--durable", "t-stop-gone")
    try:
        assert wait_for(lambda: archived_frames(out) >= 50 * 40, 30, proc)
        nats_server.stop_blocking()
        time.sleep(1.0)  # the client notices and starts reconnecting
        took = stop_within(proc, signal.SIGINT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert took < BOUND, took
    assert len(sealed(out)) == 50 * 40


class _SwallowingPull:
    """A pull subscription as nats-py behaves at its worst: a cancellation that races a
    message is lost (``asyncio.wait_for`` in Python 3.11) and the fetch returns the message;
    once the connection is closed, a cancellation comes out as ConnectionClosedError."""

    def __init__(self, data: bytes, subject: str) -> None:
        self.msg = type("Msg", (), {"data": data, "subject": subject,
                                    "ack": self._noop, "nak": self._noop})()
        self.fetches = 0

    async def _noop(self) -> None:
        return None

    async def fetch(self, n: int, timeout: float) -> list:
        import nats.errors

        self.fetches += 1
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            if self.fetches % 2:
                return [self.msg] * n               # the lost cancellation
            raise nats.errors.ConnectionClosedError from None
        return [self.msg] * n

    async def unsubscribe(self) -> None:
        return None


def test_subscription_close_is_bounded_when_a_fetch_swallows_its_cancellation():
    """The cause of the hang: close() cancelled the pull task once and awaited it; a lost
    cancellation left the task fetching (or blocked putting into the full queue) for good."""
    from netevents import codec
    from netevents.bus.subscription import Subscription
    from netevents.subjects import event_subject

    b = frame_batch("h1", "r1", 1, 0, 2)
    data, subject = codec.encode_batch(b), event_subject("frame", b.site, b.host)

    async def main() -> float:
        sub = Subscription(None, ["frame"], None, None, durable="x", queue_size=4)
        pull = _SwallowingPull(data, subject)
        sub._started = True
        sub._tasks.append(asyncio.create_task(sub._pull(pull)))
        await asyncio.sleep(0.1)                    # the queue is full now
        t0 = time.monotonic()
        async with asyncio.timeout(10):
            await sub.close()
        return time.monotonic() - t0

    assert asyncio.run(main()) < 3.0

"""Traffic of one demo host (run inside its namespace by `netevents demo`; stops on SIGTERM).

``python -m netevents.app.demo_traffic '{"udp_peers": [...], ...}'``:

    udp_peers   addresses sent a numbered UDP datagram (port 5000) ``rate`` times a second
    tcp_to      address a TCP stream is written to (port 5001), paced
    fw_to       address sent a UDP datagram to port 7777 (firewalled there) ten times a second
    rcvbuf_to   address sent UDP datagrams to port 9999, whose socket never reads
    sink        listen on UDP 5000 and TCP 5001 and read everything
    rcvbuf_sink open UDP 9999 with the smallest receive buffer and never read it
    burst_to    on SIGUSR1, send ``burst`` datagrams there, ~5000 a second
"""

from __future__ import annotations

import json
import selectors
import signal
import socket
import sys
import time


def main(argv: list[str]) -> int:
    cfg = json.loads(argv[0])
    stop = False
    burst_pending = 0

    def on_term(*_a: object) -> None:
        nonlocal stop
        stop = True

    def on_usr1(*_a: object) -> None:
        nonlocal burst_pending
        burst_pending += 1

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGUSR1, on_usr1)
    sel = selectors.DefaultSelector()
    if cfg.get("sink"):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("0.0.0.0", 5000))
        u.setblocking(False)
        sel.register(u, selectors.EVENT_READ, "udp")
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind(("0.0.0.0", 5001))
        t.listen(8)
        t.setblocking(False)
        sel.register(t, selectors.EVENT_READ, "listen")
    if cfg.get("rcvbuf_sink"):
        r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the kernel rounds up to its minimum
        r.bind(("0.0.0.0", 9999))
        keep = r  # noqa: F841 -- never read: its buffer fills and the kernel drops
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp: socket.socket | None = None
    rate = float(cfg.get("rate", 100))
    period = 1.0 / rate
    n = 0
    next_send = time.monotonic()
    next_tcp_try = time.monotonic() + 1.0
    chunk = b"d" * 8192
    while not stop:
        now = time.monotonic()
        if now >= next_send:
            n += 1
            for peer in cfg.get("udp_peers", []):
                out.sendto(f"demo {n} to {peer} ".encode().ljust(64, b"."), (peer, 5000))
            if cfg.get("fw_to") and n % max(1, int(rate / 10)) == 0:
                out.sendto(f"firewalled {n}".encode().ljust(64, b"."), (cfg["fw_to"], 7777))
            if cfg.get("rcvbuf_to"):
                out.sendto(b"r" * 1000, (cfg["rcvbuf_to"], 9999))
            next_send += period
            if next_send < now:
                next_send = now + period
            if tcp is not None:
                try:
                    tcp.send(chunk)
                except BlockingIOError:
                    pass
                except OSError:
                    tcp.close()
                    tcp = None
        if tcp is None and cfg.get("tcp_to") and now >= next_tcp_try:
            next_tcp_try = now + 1.0
            try:
                tcp = socket.create_connection((cfg["tcp_to"], 5001), timeout=1.0)
                tcp.setblocking(False)
            except OSError:
                tcp = None
        while burst_pending and cfg.get("burst_to"):
            burst_pending -= 1
            # Paced (~5000/s): a burst at full speed would overflow the receiver's backlog
            # (CPU_BACKLOG, a real loss) instead of only its capture ring.
            for i in range(int(cfg.get("burst", 4000))):
                try:
                    out.sendto(f"burst {i} ".encode().ljust(64, b"b"), (cfg["burst_to"], 5000))
                except BlockingIOError:
                    pass
                if i % 50 == 49:
                    time.sleep(0.01)
        for key, _ev in sel.select(timeout=min(period, 0.01)):
            if key.data == "udp":
                for _ in range(256):
                    try:
                        key.fileobj.recv(2048)
                    except BlockingIOError:
                        break
            elif key.data == "listen":
                conn, _addr = key.fileobj.accept()
                conn.setblocking(False)
                sel.register(conn, selectors.EVENT_READ, "conn")
            else:
                try:
                    data = key.fileobj.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(key.fileobj)
                    key.fileobj.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

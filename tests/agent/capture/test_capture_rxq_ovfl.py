"""SO_RXQ_OVFL on a real (non-ring) UDP socket: per-datagram cumulative sk_drops -> gaps."""

from __future__ import annotations

import socket
import struct
import time

from netevents.agent.capture.gaps import RxqOvflCounter
from netevents.agent.capture.ring import SO_RXQ_OVFL


def test_rxq_ovfl_counter_accounts_for_every_datagram_the_socket_dropped():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel doubles it
        rx.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        dest = rx.getsockname()
        counter = RxqOvflCounter("lo")
        sent = received = 0
        seqs = []

        def drain() -> None:
            nonlocal received
            while True:
                try:
                    data, anc, _flags, _addr = rx.recvmsg(2048, socket.CMSG_SPACE(4))
                except BlockingIOError:
                    return
                cum = None
                for level, typ, value in anc:
                    if level == socket.SOL_SOCKET and typ == SO_RXQ_OVFL:
                        cum = struct.unpack("=I", value[:4])[0]
                gap = counter.on_datagram(cum, time.time_ns())
                if gap is not None:
                    # the gap sits exactly where the sender's sequence numbers jump
                    seq = int.from_bytes(data[:4], "big")
                    assert gap.lost == seq - (seqs[-1] if seqs else -1) - 1
                seqs.append(int.from_bytes(data[:4], "big"))
                received += 1

        for _round in range(5):
            for _ in range(200):
                tx.sendto(sent.to_bytes(4, "big") + b"x" * 600, dest)
                sent += 1
            drain()
        tx.sendto(sent.to_bytes(4, "big"), dest)  # carries the final cumulative count
        sent += 1
        time.sleep(0.01)
        drain()
        assert received < sent, "the receive buffer never overflowed; the test proves nothing"
        assert counter.drops == sent - received
    finally:
        rx.close()
        tx.close()

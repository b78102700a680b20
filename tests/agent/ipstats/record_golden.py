"""Record real sock_diag answers of this machine's kernel as golden test data (run as root).

    python tests/agent/ipstats/record_golden.py

Builds two namespaces joined by veth, with an nftables rule in the receiver dropping 1 in 8
data segments (so the counters include retransmits), opens an IPv4 and an IPv6 connection and
a loopback one, then writes into ``testdata/``:

    dump.bin       the raw datagrams of one IPv4 + IPv6 dump (netlink messages back to back)
    ss.txt         ``ss -tinH`` of the same namespace right after: the independent oracle
    sockets.json   what the socket API says about those sockets (addresses, ports, inodes)
    destroy.bin    the raw destroy-multicast datagrams received when they were closed
    kernel.txt     ``uname -r`` of the recording machine
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

from netevents.agent.ipstats.sockdiag import DestroyListener, DiagSocket  # noqa: E402
from netevents.agent.kernel.netns import in_netns  # noqa: E402

OUT = Path(__file__).resolve().parent / "testdata"
A, B = "ipst-rec-a", "ipst-rec-b"
RULE = """table inet ipst_rec {
  chain input {
    type filter hook input priority 0; policy accept;
    tcp dport 7001 meta length > 200 numgen random mod 8 == 0 drop
  }
}
"""


def sh(*cmd: str, **kw) -> str:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw).stdout


def drain(conn: socket.socket) -> None:
    with conn:
        while conn.recv(1 << 16):
            pass


def main() -> None:
    OUT.mkdir(exist_ok=True)
    try:
        sh("ip", "netns", "add", A)
        sh("ip", "netns", "add", B)
        sh("ip", "link", "add", "iprec-a", "netns", A, "type", "veth", "peer", "name", "iprec-b", "netns", B)
        for ns, dev, v4, v6 in ((A, "iprec-a", "10.78.0.1/24", "fd78::1/64"),
                                (B, "iprec-b", "10.78.0.2/24", "fd78::2/64")):
            sh("ip", "-n", ns, "addr", "add", v4, "dev", dev)
            sh("ip", "-n", ns, "addr", "add", v6, "dev", dev, "nodad")
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", B, "nft", "-f", "-", input=RULE)

        listeners = []
        for fam, addr in ((socket.AF_INET, "10.78.0.2"), (socket.AF_INET6, "fd78::2")):
            ls = in_netns(B, lambda fam=fam: socket.socket(fam, socket.SOCK_STREAM))
            ls.bind((addr, 7001))
            ls.listen()
            listeners.append(ls)
        lo_listener = in_netns(A, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        lo_listener.bind(("127.0.0.1", 7002))
        lo_listener.listen()

        destroy = DestroyListener(A)
        destroy.recorder = []
        clients = []
        for fam, addr in ((socket.AF_INET, "10.78.0.2"), (socket.AF_INET6, "fd78::2")):
            c = in_netns(A, lambda fam=fam: socket.socket(fam, socket.SOCK_STREAM))
            c.connect((addr, 7001))
            clients.append(c)
        for ls in listeners:
            conn, _ = ls.accept()
            threading.Thread(target=drain, args=(conn,), daemon=True).start()
        lo = in_netns(A, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        lo.connect(("127.0.0.1", 7002))
        lo_peer, _ = lo_listener.accept()
        for c, n in zip(clients, (2_000_000, 1_000_000), strict=True):
            c.sendall(b"x" * n)
        lo.sendall(b"y" * 12345)
        lo_peer.recv(1 << 16)
        time.sleep(1.0)  # let retransmits finish so the numbers are at rest for ss and the dump

        diag = DiagSocket(A)
        diag.recorder = []
        socks = diag.dump()
        ss = sh("ip", "netns", "exec", A, "ss", "-tinH")
        (OUT / "dump.bin").write_bytes(b"".join(diag.recorder))
        (OUT / "ss.txt").write_text(ss)
        facts = []
        for s in (*clients, lo, lo_peer):
            local, peer = s.getsockname(), s.getpeername()
            facts.append({"family": s.family, "local": local[0], "sport": local[1], "peer": peer[0],
                          "dport": peer[1], "inode": os.fstat(s.fileno()).st_ino})
        (OUT / "sockets.json").write_text(json.dumps(facts, indent=1) + "\n")
        (OUT / "kernel.txt").write_text(os.uname().release + "\n")

        for s in (*clients, lo, lo_peer):
            s.close()
        deadline = time.monotonic() + 5
        got: list = []
        while time.monotonic() < deadline and len(got) < 4:
            destroy.read(got)
            time.sleep(0.05)
        (OUT / "destroy.bin").write_bytes(b"".join(destroy.recorder))
        print(f"dumped {len(socks)} sockets, {len(got)} destroy messages -> {OUT}")
        for ls in (*listeners, lo_listener):
            ls.close()
    finally:
        subprocess.run(["ip", "netns", "del", A], check=False)
        subprocess.run(["ip", "netns", "del", B], check=False)


if __name__ == "__main__":
    main()

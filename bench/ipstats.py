"""Benchmark: sample N TCP sockets with tcp_info — netevents' raw sock_diag vs `ss -tin` vs
pyroute2's DiagSocket, side by side in one run, on the same sockets.

    python bench/ipstats.py [--counts 10000 100000] [--repeat 3]      (root)

A holder process creates N/2 connected loopback pairs (N sockets) inside a private network
namespace and keeps them open. Each sampler then runs in its own fresh process inside that
namespace, so its peak RSS (``wait4`` rusage) is its own:

    netevents   netevents.agent.ipstats.sockdiag.DiagSocket().dump(): IPv4 + IPv6, tcp_info parsed
                into tuples; and the collector's whole sample, the dump streamed into
                PeerAccountant.window_samples (a second window: the first is the baseline)
    ss -tin     iproute2's ss, output to a pipe that is read and discarded
    pyroute2    DiagSocket().get_sock_stats(AF_INET and AF_INET6, INET_DIAG_INFO)

Time is the sampler's own measurement of the dump (best of --repeat), peak memory is the
process's maxrss; "over base" subtracts the same interpreter's RSS before sampling. If the
machine cannot hold N sockets (RLIMIT_NOFILE, memory), a smaller N is used and said so.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLONE_NEWNET = 0x40000000

HOLDER = r"""
import os, resource, socket, sys
n_pairs, first_port = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
ports = [first_port + i for i in range(8)]
listeners = []
for p in ports:
    ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", p)); ls.listen(4096); ls.setblocking(False); listeners.append(ls)
held = []
made = 0
batch = 2000
while made < n_pairs:
    k = min(batch, n_pairs - made)
    clients = []
    for i in range(k):
        c = socket.socket(); c.setblocking(False)
        c.connect_ex(("127.0.0.1", ports[(made + i) % len(ports)]))
        clients.append(c)
    got = 0
    while got < k:
        for ls in listeners:
            while True:
                try:
                    a, _ = ls.accept()
                except BlockingIOError:
                    break
                held.append(a); got += 1
    held.extend(clients)
    made += k
# a little traffic on every 10th pair so tcp_info has counters
for i in range(0, len(held) - 1, 20):
    try:
        held[i].send(b"x" * 100)
    except OSError:
        pass
print("ready", len(held), flush=True)
sys.stdin.read()
"""

SAMPLER = r"""
import resource, sys, time, socket
kind, repeat = sys.argv[1], int(sys.argv[2])
sys.path.insert(0, ROOT)
if kind.startswith("netevents"):
    from netevents.agent.ipstats.sockdiag import DiagSocket
    from netevents.agent.ipstats.aggregate import PeerAccountant
elif kind == "pyroute2":
    from pyroute2 import DiagSocket as P2
    from netevents.agent.ipstats.sockdiag import DUMP_STATES  # the same states as ours: no listeners
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
best = float("inf")
n = 0
for _ in range(repeat):
    if kind == "netevents":
        d = DiagSocket()
        t = time.perf_counter(); socks = d.dump(); dt = time.perf_counter() - t
        n = len(socks); d.close(); del socks
    elif kind == "netevents+window":
        # as the collector samples: the dump streamed into the accountant (baseline first)
        d = DiagSocket(); acc = PeerAccountant("diagnostics")
        acc.window_samples(d.sample_chunks())
        t = time.perf_counter(); w = acc.window_samples(d.sample_chunks()); dt = time.perf_counter() - t
        n = w.sockets; d.close(); del w, acc
    else:
        t = time.perf_counter()
        with P2() as ds:
            ds.bind()
            res = ds.get_sock_stats(family=socket.AF_INET, states=DUMP_STATES, extensions=2) + \
                  ds.get_sock_stats(family=socket.AF_INET6, states=DUMP_STATES, extensions=2)
        dt = time.perf_counter() - t
        n = len(res); del res
    best = min(best, dt)
print(n, best, base)
"""


def setns_preexec(path: str):
    libc = ctypes.CDLL(None, use_errno=True)

    def enter() -> None:
        fd = os.open(path, os.O_RDONLY)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns failed")
        os.close(fd)
    return enter


def run_measured(cmd: list[str], netns: str, capture: bool = True) -> tuple[str, float, int]:
    """Run cmd inside netns; returns (stdout, wall seconds, peak RSS in KiB from wait4)."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=setns_preexec(netns), cwd=ROOT)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _pid, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {err.decode()[-500:]}")
    return out.decode(), wall, ru.ru_maxrss


def bench_count(n_sockets: int, repeat: int) -> list[tuple]:
    ns = f"ipst-bench-{uuid.uuid4().hex[:6]}"
    path = f"/run/netns/{ns}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    holders: list[subprocess.Popen] = []
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                        "net.ipv4.ip_local_port_range=20000 65535"], check=True)
        # Several holders: a process may hold only RLIMIT_NOFILE descriptors (and without
        # CAP_SYS_RESOURCE, as in some containers, the hard limit cannot be raised).
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        per_holder = max(1000, (min(hard, 1 << 20) - 500) // 2)
        pairs, t, held = n_sockets // 2, time.perf_counter(), 0
        for h, start in enumerate(range(0, pairs, per_holder)):
            k = min(per_holder, pairs - start)
            holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(k), str(7100 + 8 * h)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                      preexec_fn=setns_preexec(path))
            holders.append(holder)
            line = holder.stdout.readline().split()
            if not line or line[0] != "ready":
                raise RuntimeError("a socket holder failed")
            held += int(line[1])
        print(f"  {held} sockets held in {ns} by {len(holders)} processes "
              f"(made in {time.perf_counter() - t:.1f} s)", flush=True)
        rows = []
        sampler = SAMPLER.replace("ROOT", repr(str(ROOT)))
        for kind in ("netevents", "netevents+window", "pyroute2"):
            out, _wall, rss = run_measured([sys.executable, "-c", sampler, kind, str(repeat)], path)
            n, best, base = out.split()
            rows.append((kind, int(n), float(best), rss / 1024, (rss - int(base)) / 1024))
        best, peak, n = float("inf"), 0, 0
        for _ in range(repeat):
            out, wall, rss = run_measured(["ss", "-tinH"], path)
            best, peak = min(best, wall), max(peak, rss)
            n = sum(1 for ln in out.splitlines() if ln and not ln[0].isspace())
        rows.append(("ss -tin", n, best, peak / 1024, None))
        return rows
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)


def fits(n_sockets: int) -> str | None:
    """Why the machine cannot hold n sockets, or None."""
    file_max = int(Path("/proc/sys/fs/file-max").read_text())
    if n_sockets + 10_000 > file_max:
        return f"fs.file-max is {file_max}"
    meminfo = dict(ln.split(":", 1) for ln in Path("/proc/meminfo").read_text().splitlines())
    avail_kb = int(meminfo["MemAvailable"].split()[0])
    need_kb = n_sockets * 12  # kernel socket + Python objects of the holder, generously
    if need_kb > avail_kb * 0.6:
        return f"{n_sockets} sockets need ~{need_kb // 1024} MiB, {avail_kb // 1024} MiB available"
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/ipstats.py needs root (network namespace)", file=sys.stderr)
        return 2
    print(f"kernel {os.uname().release}, python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    for n in args.counts:
        why = fits(n)
        while why and n > 1000:
            smaller = n // 2
            print(f"NOTE: cannot hold {n} sockets here ({why}); using {smaller} instead")
            n, why = smaller, fits(smaller)
        print(f"\n== {n} sockets ({n // 2} loopback pairs), best of {args.repeat}")
        rows = bench_count(n, args.repeat)
        print(f"  {'sampler':<18} {'seen':>7} {'time s':>8} {'peak RSS MiB':>13} {'over base':>10}")
        for kind, seen, t, rss, over in rows:
            print(f"  {kind:<18} {seen:>7} {t:>8.3f} {rss:>13.1f} {'-' if over is None else f'{over:.1f}':>10}")
        ours = next(r for r in rows if r[0] == "netevents")
        whole = next(r for r in rows if r[0] == "netevents+window")
        ss = next(r for r in rows if r[0] == "ss -tin")
        print(f"  ratio netevents+window / ss -tin: time x{whole[2] / ss[2]:.2f} (target <= 0.5); "
              f"netevents+window over the interpreter: {whole[4]:.1f} MiB (target <= 50)")
        for kind, _seen, t, rss, _over in rows:
            if kind != "netevents":
                print(f"  ratio {kind} / netevents: time x{t / ours[2]:.1f}, peak RSS x{rss / ours[3]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

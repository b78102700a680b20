#!/usr/bin/env bash
# Debian packages and kernel mounts netevents and its tests use. Run as root; idempotent.
#   iproute2   ip / tc: test hosts are network namespaces joined by veth
#   nftables   nft: real drops from a drop rule inside a test namespace
#   tshark     tshark / capinfos: archives are checked with the real Wireshark tools
#   tcpdump    BPF filter compilation (tcpdump -ddd) and the capture benchmark's anchor
#   tcpreplay  replays traffic into a veth for bench/capture.py
#   gcc, libc6-dev  build the C capture walker when the wheel is built, and the drop-storm
#              sender (tests/agent/drops/tools/flood.c)
#   libbpf1    loads the eBPF drop source (the only one of these the agent needs at run time)
#   clang, bpftool, libbpf-dev   rebuild the committed eBPF object from its source, which
#              tests/agent/drops/ebpf/test_ebpf_object.py compares with the committed one
#   prometheus scrapes `netevents metrics` in the Grafana dashboard's test (deploy/grafana)
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
  echo "setup-host.sh: run as root (it installs Debian packages and mounts tracefs)" >&2
  exit 2
fi
need=()
for pkg in iproute2 nftables tshark tcpdump tcpreplay gcc libc6-dev clang bpftool libbpf1 libbpf-dev prometheus; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need[@]}"
  # The tests start their own Prometheus on a loopback port; no resident service is wanted.
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi
# The skb:kfree_skb tracepoint is read through tracefs (a private instance per agent). The
# agent mounts it itself when it is root; mounted here for the tests that read tracefs directly.
if [ -d /sys/kernel/tracing ] && ! mountpoint -q /sys/kernel/tracing; then
  mount -t tracefs nodev /sys/kernel/tracing || echo "setup-host.sh: could not mount tracefs; tracepoint tests will skip" >&2
fi
echo "setup-host.sh: host ready"

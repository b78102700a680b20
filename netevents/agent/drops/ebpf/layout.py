"""The BPF program's shared structs, as seen from user space (mirror of kfree_skb.bpf.c).

Change both files together. Layouts are little-endian host order (x86-64, arm64); field
comments name the C member.
"""

from __future__ import annotations

import struct

PAYLOAD_MAX = 128
NETNS_MAX = 8

# struct ne_key: location u64, netns u32, reason u32, ifindex u32, proto u16, l4 u8, family u8,
# src[16], dst[16], sport u16, dport u16, pad u32  (64 bytes)
KEY = struct.Struct("<QIIIHBB16s16sHHI")
# struct ne_val: count, first_ts, last_ts (CLOCK_BOOTTIME ns)
VAL = struct.Struct("<QQQ")
# struct ne_record: key, ts u64, orig_len u32 (from the network header), tcp_seq u32, ip_id u16, caplen u16, pad u32,
# payload[128]
RECORD_HEAD = struct.Struct("<64sQIIHHI")
RECORD_SIZE = RECORD_HEAD.size + PAYLOAD_MAX
# struct ne_ctl: active u32, sample_every u32
CTL = struct.Struct("<II")
# struct ne_prefix: family u8, len u8, pad[2], addr[16]
PREFIX = struct.Struct("<BB2x16s")
# struct ne_filter: flags u32, n_netns u32, reasons u64[4], netns u32[8], src/dst/host prefix,
# sport u16, dport u16, port u16, l4 u8, pad u8
FILTER = struct.Struct(f"<II4Q{NETNS_MAX}I20s20s20sHHHBx4x")

# Filter flags (F_* in kfree_skb.bpf.c).
F_REASON = 1 << 0
F_NETNS = 1 << 1
F_SRC = 1 << 2
F_DST = 1 << 3
F_HOST = 1 << 4
F_SPORT = 1 << 5
F_DPORT = 1 << 6
F_PORT = 1 << 7
F_L4 = 1 << 8

# Indices of the per-CPU `losses` array.
LOSS_MAP_FULL = 0
LOSS_RINGBUF_FULL = 1

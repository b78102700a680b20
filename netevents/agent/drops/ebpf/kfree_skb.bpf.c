// SPDX-License-Identifier: GPL-2.0
/* netevents: skb:kfree_skb with flow and network namespace, aggregated in the kernel.
 *
 * Per drop: reason, location, netns inode, ifindex, ethertype and the L3/L4 keys of the packet
 * (addresses, l4 protocol, ports; plus IPv4 ID and TCP seq for per-packet records). Drops that
 * pass the filter (struct ne_filter, written by user space into the `filter` array) are counted
 * in one of two per-CPU hashes (`agg0`/`agg1`, chosen by ctl.active: user space flips it, waits
 * for running programs to finish, then reads and clears the other one, so no increment races a
 * delete). One drop in ctl.sample_every of those also goes to the ring buffer as a record.
 * Own losses: hash insert failures (`map_full`) and ring reservation failures (`ringbuf_full`)
 * are counted in the per-CPU array `losses`.
 *
 * Two programs share one body: tp_btf/kfree_skb (BTF-typed arguments: skb fields are plain
 * loads) and raw_tp/kfree_skb (the fallback where tp_btf cannot attach: fields through CO-RE
 * relocated bpf_probe_read_kernel). Packet bytes are read with one bpf_probe_read_kernel of
 * the first 48 bytes from the network header (IPv4 without options or IPv6, plus the ports
 * and TCP sequence); IPv4 options take a second read for the ports.
 *
 * The layout of struct ne_key, ne_val, ne_record, ne_filter and ne_ctl is mirrored in
 * netevents/agent/ebpf/layout.py: change both together.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

#define ETH_P_IP 0x0800     /* include/uapi/linux/if_ether.h */
#define ETH_P_IPV6 0x86DD
#define IPPROTO_TCP_ 6      /* include/uapi/linux/in.h */
#define IPPROTO_UDP_ 17
#define IP_OFFSET_MASK 0x1FFF  /* include/net/ip.h: fragment offset bits of frag_off */
#define PAYLOAD_MAX 128
#define NETNS_MAX 8

struct ne_key {
	__u64 location;
	__u32 netns;
	__u32 reason;
	__u32 ifindex;
	__u16 proto;       /* ethertype, host order */
	__u8 l4;
	__u8 family;       /* 4, 6 or 0 (no L3 keys) */
	__u8 src[16];      /* IPv4 in the first 4 bytes */
	__u8 dst[16];
	__u16 sport;       /* host order */
	__u16 dport;
	__u32 pad;
};

struct ne_val {
	__u64 count;
	__u64 first_ts;    /* CLOCK_BOOTTIME ns */
	__u64 last_ts;
};

struct ne_record {
	struct ne_key key;
	__u64 ts;
	__u32 orig_len;    /* packet length from the network header */
	__u32 tcp_seq;     /* host order */
	__u16 ip_id;       /* host order */
	__u16 caplen;      /* bytes of payload[] valid, from the network header */
	__u32 pad;
	__u8 payload[PAYLOAD_MAX];
};

/* Filter flags: each set flag is one AND-ed condition. */
#define F_REASON (1 << 0)
#define F_NETNS (1 << 1)
#define F_SRC (1 << 2)
#define F_DST (1 << 3)
#define F_HOST (1 << 4)
#define F_SPORT (1 << 5)
#define F_DPORT (1 << 6)
#define F_PORT (1 << 7)
#define F_L4 (1 << 8)

struct ne_prefix {
	__u8 family;
	__u8 len;          /* prefix length in bits */
	__u8 pad[2];
	__u8 addr[16];
};

struct ne_filter {
	__u32 flags;
	__u32 n_netns;
	__u64 reasons[4];  /* bit r set: reason r passes (reasons >= 256 pass when bit 255 is set) */
	__u32 netns[NETNS_MAX];
	struct ne_prefix src, dst, host;
	__u16 sport, dport, port;
	__u8 l4;
	__u8 pad;
};

struct ne_ctl {
	__u32 active;        /* which aggregation hash the programs write: 0 or 1 */
	__u32 sample_every;  /* 0: no records; N: every Nth passing drop (per CPU) */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct ne_key);
	__type(value, struct ne_val);
} agg0 SEC(".maps"), agg1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);  /* user space resizes before load */
} records SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ne_filter);
} filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ne_ctl);
} ctl SEC(".maps");

/* losses[0]: map_full, losses[1]: ringbuf_full, losses[2]: sample counter (per CPU) */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} losses SEC(".maps");

static __always_inline void bump(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&losses, &idx);
	if (v)
		*v += 1;
}

static __always_inline int prefix_match(const struct ne_prefix *p, const __u8 *addr, __u8 family)
{
	if (p->family != family)
		return 0;
	__u32 bits = p->len;
	for (int i = 0; i < 16; i++) {
		if (bits == 0)
			return 1;
		__u8 mask = bits >= 8 ? 0xff : (__u8)(0xff << (8 - bits));
		if ((addr[i] ^ p->addr[i]) & mask)
			return 0;
		bits = bits >= 8 ? bits - 8 : 0;
	}
	return 1;
}

static __always_inline int passes(const struct ne_filter *f, const struct ne_key *k)
{
	__u32 fl = f->flags;
	if (fl & F_REASON) {
		__u32 r = k->reason > 255 ? 255 : k->reason;
		if (!((f->reasons[(r >> 6) & 3] >> (r & 63)) & 1))
			return 0;
	}
	if (fl & F_NETNS) {
		int hit = 0;
		for (int i = 0; i < NETNS_MAX; i++)
			if (i < f->n_netns && f->netns[i] == k->netns)
				hit = 1;
		if (!hit)
			return 0;
	}
	if ((fl & F_L4) && k->l4 != f->l4)
		return 0;
	if ((fl & F_SRC) && !prefix_match(&f->src, k->src, k->family))
		return 0;
	if ((fl & F_DST) && !prefix_match(&f->dst, k->dst, k->family))
		return 0;
	if ((fl & F_HOST) && !prefix_match(&f->host, k->src, k->family) &&
	    !prefix_match(&f->host, k->dst, k->family))
		return 0;
	if ((fl & F_SPORT) && k->sport != f->sport)
		return 0;
	if ((fl & F_DPORT) && k->dport != f->dport)
		return 0;
	if ((fl & F_PORT) && k->sport != f->port && k->dport != f->port)
		return 0;
	return 1;
}

/* Timestamps cost ~100 ns each here (bpf_ktime_get_boot_ns), as much as the hash: a row takes
 * one for each of its first 64 drops and then one every 64th, so last_ts is exact at low
 * rates and within the last 64 drops of the window in a storm. */
#define TS_EVERY 64

static __always_inline int count_in(void *agg, struct ne_key *key)
{
	struct ne_val *v = bpf_map_lookup_elem(agg, key);
	if (!v) {
		__u64 now = bpf_ktime_get_boot_ns();
		struct ne_val init = {.count = 1, .first_ts = now, .last_ts = now};
		if (bpf_map_update_elem(agg, key, &init, BPF_NOEXIST) == 0)
			return 1;
		/* EEXIST: this CPU raced itself (an interrupt); anything else: the map is full. */
		v = bpf_map_lookup_elem(agg, key);
		if (!v)
			return 0;
	}
	__u64 n = ++v->count;
	if (n < TS_EVERY || (n & (TS_EVERY - 1)) == 0)
		v->last_ts = bpf_ktime_get_boot_ns();
	return 1;
}

/* What the two programs read from the skb, each its own way (see the programs below). */
struct skb_facts {
	unsigned char *head;
	__u32 tail;        /* an offset from head on 64-bit kernels (NET_SKBUFF_DATA_USES_OFFSET) */
	__u32 len;         /* bytes from skb->data, which may be past the network header */
	__u32 data_off;    /* skb->data - skb->head */
	__u32 ifindex;
	__u32 netns;
	__u16 proto;       /* host order */
	__u16 nh;          /* network_header offset, 0xffff when unset */
};

/* IPv4 (no options) or IPv6 header plus the first 8 bytes of TCP/UDP: read in one go. */
#define HDR_READ 48

static __always_inline int handle(const struct skb_facts *s, void *location, __u32 reason)
{
	struct ne_key key = {};
	__u16 ip_id = 0;
	__u32 tcp_seq = 0;
	__u32 zero = 0;
	unsigned char *head = s->head;
	__u16 nh = s->nh;
	__u32 tail = s->tail;

	key.location = (__u64)location;
	key.reason = reason;
	key.proto = s->proto;
	key.ifindex = s->ifindex;
	key.netns = s->netns;

	if (head && nh != (__u16)~0U && tail > nh) {
		unsigned char *l3 = head + nh;
		__u8 hdr[HDR_READ] = {};
		__u32 avail = tail - nh;
		/* One helper call for the common case; a short packet takes the bytes it has. */
		if (avail >= HDR_READ)
			bpf_probe_read_kernel(hdr, HDR_READ, l3);
		else if (avail >= 28)
			bpf_probe_read_kernel(hdr, 28, l3);
		else
			bpf_probe_read_kernel(hdr, 1, l3);
		__u8 vihl = hdr[0];
		__u32 l4off = 0;
		__u8 l4 = 0;
		int first_fragment = 1;
		if ((vihl >> 4) == 4 && (key.proto == ETH_P_IP || key.proto == 0) && avail >= 20) {
			struct iphdr *ip = (struct iphdr *)hdr;
			key.family = 4;
			__builtin_memcpy(key.src, &ip->saddr, 4);
			__builtin_memcpy(key.dst, &ip->daddr, 4);
			l4 = ip->protocol;
			ip_id = bpf_ntohs(ip->id);
			l4off = (vihl & 0x0f) * 4;
			first_fragment = (bpf_ntohs(ip->frag_off) & IP_OFFSET_MASK) == 0;
		} else if ((vihl >> 4) == 6 && (key.proto == ETH_P_IPV6 || key.proto == 0) &&
			   avail >= 40) {
			struct ipv6hdr *ip6 = (struct ipv6hdr *)hdr;
			key.family = 6;
			__builtin_memcpy(key.src, &ip6->saddr, 16);
			__builtin_memcpy(key.dst, &ip6->daddr, 16);
			l4 = ip6->nexthdr;  /* extension headers are not walked */
			l4off = 40;
		}
		key.l4 = l4;
		if (key.family && first_fragment && (l4 == IPPROTO_TCP_ || l4 == IPPROTO_UDP_) &&
		    l4off >= 20 && l4off <= 60 && avail >= l4off + 4) {
			__u8 ports[8] = {};
			if ((l4off == 20 || l4off == 40) && avail >= HDR_READ)
				__builtin_memcpy(ports, hdr + (l4off == 20 ? 20 : 40), 8);
			else
				bpf_probe_read_kernel(ports, avail >= l4off + 8 ? 8 : 4, l3 + l4off);
			key.sport = (ports[0] << 8) | ports[1];
			key.dport = (ports[2] << 8) | ports[3];
			if (l4 == IPPROTO_TCP_ && avail >= l4off + 8)
				tcp_seq = ((__u32)ports[4] << 24) | ((__u32)ports[5] << 16) |
					  ((__u32)ports[6] << 8) | ports[7];
		}
	}

	struct ne_filter *f = bpf_map_lookup_elem(&filter, &zero);
	if (f && f->flags && !passes(f, &key))
		return 0;
	struct ne_ctl *c = bpf_map_lookup_elem(&ctl, &zero);
	if (!c)
		return 0;

	/* Two call sites, one map each: the verifier wants a known map at every lookup. */
	int counted = c->active ? count_in(&agg1, &key) : count_in(&agg0, &key);
	if (!counted) {
		bump(0);  /* map_full: counted, and no record either (records are a subset) */
		return 0;
	}

	__u32 every = c->sample_every;
	if (!every)
		return 0;
	__u32 si = 2;
	__u64 *n = bpf_map_lookup_elem(&losses, &si);
	if (!n)
		return 0;
	*n += 1;
	if (every > 1 && (*n % every) != 0)
		return 0;

	struct ne_record *r = bpf_ringbuf_reserve(&records, sizeof(*r), 0);
	if (!r) {
		bump(1);  /* ringbuf_full */
		return 0;
	}
	r->key = key;
	r->ts = bpf_ktime_get_boot_ns();
	/* Length from the network header (what the payload starts with), not from skb->data. */
	__s64 from_nh = (__s64)s->len + s->data_off - nh;
	r->orig_len = nh != (__u16)~0U && from_nh > 0 ? (__u32)from_nh : s->len;
	r->tcp_seq = tcp_seq;
	r->ip_id = ip_id;
	r->pad = 0;
	__u64 cap = 0;  /* 64-bit, so the verifier sees the clamp below on the register it checks */
	if (head && nh != (__u16)~0U && tail > nh)
		cap = (__u64)tail - nh;
	if (cap > PAYLOAD_MAX)
		cap = PAYLOAD_MAX;
	r->caplen = cap;
	if (cap > 0 && bpf_probe_read_kernel(r->payload, cap, head + nh) != 0)
		r->caplen = 0;
	bpf_ringbuf_submit(r, 0);
	return 0;
}

/* tp_btf: the arguments are BTF-typed, so fields are plain loads (CO-RE relocated through
 * vmlinux.h's preserve_access_index; faults are caught by the verifier's PROBE_MEM handling). */
SEC("tp_btf/kfree_skb")
int BPF_PROG(kfree_skb_btf, struct sk_buff *skb, void *location, enum skb_drop_reason reason)
{
	struct skb_facts s = {};
	struct net_device *dev = skb->dev;

	s.head = skb->head;
	s.data_off = skb->data - skb->head;
	s.tail = skb->tail;
	s.len = skb->len;
	s.nh = skb->network_header;
	s.proto = bpf_ntohs(skb->protocol);
	if (dev) {
		s.ifindex = dev->ifindex;
		s.netns = dev->nd_net.net->ns.inum;
	} else {
		s.ifindex = skb->skb_iif;
		struct sock *sk = skb->sk;
		if (sk)
			s.netns = sk->__sk_common.skc_net.net->ns.inum;
	}
	return handle(&s, location, (__u32)reason);
}

/* raw_tp: untyped arguments, every field through bpf_probe_read_kernel (BPF_CORE_READ). */
SEC("raw_tp/kfree_skb")
int BPF_PROG(kfree_skb_raw, struct sk_buff *skb, void *location, enum skb_drop_reason reason)
{
	struct skb_facts s = {};
	struct net_device *dev = BPF_CORE_READ(skb, dev);

	s.head = BPF_CORE_READ(skb, head);
	s.data_off = BPF_CORE_READ(skb, data) - s.head;
	s.tail = BPF_CORE_READ(skb, tail);
	s.len = BPF_CORE_READ(skb, len);
	s.nh = BPF_CORE_READ(skb, network_header);
	s.proto = bpf_ntohs(BPF_CORE_READ(skb, protocol));
	if (dev) {
		s.ifindex = BPF_CORE_READ(dev, ifindex);
		s.netns = BPF_CORE_READ(dev, nd_net.net, ns.inum);
	} else {
		s.ifindex = BPF_CORE_READ(skb, skb_iif);
		struct sock *sk = BPF_CORE_READ(skb, sk);
		if (sk)
			s.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	}
	return handle(&s, location, (__u32)reason);
}

/* The TPACKET_V3 block walk in C: frames of a retired block -> msgpack-encoded frame columns.
 *
 * Built when the package is installed (setup.py: the optional extension _cwalker) and
 * loaded with ctypes; no Python headers. It does, byte for byte, what ring.walk_block +
 * summary.parse_l3l4 + summary.columns + msgpack.packb(use_bin_type=True) do, but writes each
 * column's msgpack body straight into a growing buffer, so a frame costs no Python objects at
 * all. tests/capture/test_capture_cwalk.py holds the two paths to the same bytes.
 *
 * Layouts: include/uapi/linux/if_packet.h (tpacket_block_desc, tpacket3_hdr, sockaddr_ll after
 * it at TPACKET_ALIGN(sizeof(struct tpacket3_hdr)) = 48); flow keys: see summary.parse_l3l4.
 * The ring is read with memcpy/byte loads: host byte order for the kernel's headers, network
 * byte order for the frame.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Column order: summary.COLUMNS without "queue" (the same for a whole batch: added in Python). */
enum { C_TS, C_TS_SRC, C_CAPLEN, C_LEN, C_DIR, C_RXHASH, C_VLAN, C_ETHERTYPE, C_SRC, C_DST,
       C_L4, C_SPORT, C_DPORT, C_IP_ID, C_TCP_SEQ, C_HEAD, NCOLS };

#define BLOCK_DESC_SIZE 48        /* struct.calcsize("=IIIIIIQIIII") */
#define HDR_LL_SIZE 59            /* struct.calcsize("=IIIIIIHHII22xB"): up to sll_pkttype */
#define TP_STATUS_VLAN_VALID (1u << 4)

struct col { uint8_t *p; size_t len, cap; };

struct nw_batch {
    struct col col[NCOLS];
    uint64_t rows;
    int oom;
};

/* What one block held: ring.BlockInfo's fields. */
struct nw_block {
    uint64_t seq, first_ts, last_ts;
    uint32_t num_pkts, status, walked;
};

static const uint8_t TS_SRC[8] = {0, 1, 0, 1, 2, 2, 2, 2};  /* tp_status >> 29 */

struct nw_batch *nw_batch_new(void) { return calloc(1, sizeof(struct nw_batch)); }

void nw_batch_free(struct nw_batch *b)
{
    if (!b)
        return;
    for (int i = 0; i < NCOLS; i++)
        free(b->col[i].p);
    free(b);
}

void nw_batch_reset(struct nw_batch *b)
{
    for (int i = 0; i < NCOLS; i++)
        b->col[i].len = 0;
    b->rows = 0;
    b->oom = 0;
}

uint64_t nw_batch_rows(const struct nw_batch *b) { return b->rows; }
int nw_batch_oom(const struct nw_batch *b) { return b->oom; }

const uint8_t *nw_batch_col(const struct nw_batch *b, int i, size_t *len)
{
    *len = b->col[i].len;
    return b->col[i].p;
}

static int grow(struct nw_batch *b, struct col *c, size_t need)
{
    size_t cap = c->cap ? c->cap : 1 << 16;
    while (cap < need)
        cap *= 2;
    uint8_t *p = realloc(c->p, cap);
    if (!p) {
        b->oom = 1;
        return -1;
    }
    c->p = p;
    c->cap = cap;
    return 0;
}

/* Room for `frames` more frames in every column but the heads (at most 24 bytes a value):
 * one check per block instead of one per value. */
static int reserve(struct nw_batch *b, size_t frames)
{
    for (int i = 0; i < NCOLS; i++) {
        struct col *c = &b->col[i];
        if (i != C_HEAD && c->len + 24 * frames > c->cap && grow(b, c, c->len + 24 * frames) < 0)
            return -1;
    }
    return 0;
}

#define BLOCK_RESERVE_MAX 65536   /* frames reserved for at once; a block claiming more: per frame */

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define BE32(v) __builtin_bswap32(v)
#define BE64(v) __builtin_bswap64(v)
#else
#define BE32(v) (v)
#define BE64(v) (v)
#endif

/* msgpack, as msgpack-python packs (smallest form; bytes as bin with use_bin_type=True). */
static inline void put_nil(struct col *c) { c->p[c->len++] = 0xc0; }

static inline void put_uint(struct col *c, uint64_t v)
{
    uint8_t *p = c->p + c->len;
    if (v < 0x80) {
        p[0] = (uint8_t)v;
        c->len += 1;
    } else if (v < 0x100) {
        p[0] = 0xcc; p[1] = (uint8_t)v;
        c->len += 2;
    } else if (v < 0x10000) {
        p[0] = 0xcd; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)v;
        c->len += 3;
    } else if (v < 0x100000000ull) {
        uint32_t be = BE32((uint32_t)v);
        p[0] = 0xce;
        memcpy(p + 1, &be, 4);
        c->len += 5;
    } else {
        uint64_t be = BE64(v);
        p[0] = 0xcf;
        memcpy(p + 1, &be, 8);
        c->len += 9;
    }
}

static inline void put_bin(struct col *c, const uint8_t *s, size_t n)
{
    uint8_t *p = c->p + c->len;
    if (n < 0x100) {
        p[0] = 0xc4; p[1] = (uint8_t)n;
        c->len += 2;
    } else if (n < 0x10000) {
        p[0] = 0xc5; p[1] = (uint8_t)(n >> 8); p[2] = (uint8_t)n;
        c->len += 3;
    } else {
        p[0] = 0xc6; p[1] = (uint8_t)(n >> 24); p[2] = (uint8_t)(n >> 16);
        p[3] = (uint8_t)(n >> 8); p[4] = (uint8_t)n;
        c->len += 5;
    }
    memcpy(c->p + c->len, s, n);
    c->len += n;
}

static inline uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t be16(const uint8_t *p) { return (uint32_t)p[0] << 8 | p[1]; }
static inline uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Flow keys of one head: summary.parse_l3l4, with -1 for None. */
struct keys {
    int64_t et, l4, sport, dport, ip_id, seq;
    const uint8_t *src, *dst;
    size_t alen;
};

static void parse_l3l4(const uint8_t *h, size_t n, struct keys *k)
{
    k->et = k->l4 = k->sport = k->dport = k->ip_id = k->seq = -1;
    k->src = k->dst = NULL;
    k->alen = 0;
    if (n < 14)
        return;
    uint32_t et = be16(h + 12);
    size_t off = 14, p;
    int64_t l4;
    while ((et == 0x8100 || et == 0x88A8) && n >= off + 4) {
        et = be16(h + off + 2);
        off += 4;
    }
    k->et = et;
    if (et == 0x0800) {
        if (n < off + 20)
            return;
        size_t ihl = (size_t)(h[off] & 0x0F) * 4;
        k->ip_id = be16(h + off + 4);
        uint32_t frag = (uint32_t)(h[off + 6] & 0x1F) << 8 | h[off + 7];
        l4 = h[off + 9];
        k->src = h + off + 12;
        k->dst = h + off + 16;
        k->alen = 4;
        if (frag || ihl < 20) {
            k->l4 = l4;
            return;
        }
        p = off + ihl;
    } else if (et == 0x86DD) {
        if (n < off + 40)
            return;
        l4 = h[off + 6];
        k->src = h + off + 8;
        k->dst = h + off + 24;
        k->alen = 16;
        p = off + 40;
        while (l4 == 0 || l4 == 43 || l4 == 60 || l4 == 44) {
            if (n < p + 8) {  /* parse_l3l4 reports no ip_id here, even after a fragment */
                k->l4 = l4;
                k->ip_id = -1;
                return;
            }
            int64_t nxt = h[p];
            if (l4 == 44) {
                k->ip_id = be32(h + p + 4);
                if (be16(h + p + 2) & 0xFFF8) {  /* not the first fragment */
                    k->l4 = nxt;
                    return;
                }
                p += 8;
            } else {
                p += ((size_t)h[p + 1] + 1) * 8;
            }
            l4 = nxt;
        }
    } else {
        return;
    }
    k->l4 = l4;
    if (!(l4 == 6 || l4 == 17 || l4 == 132 || l4 == 136) || n < p + 4)
        return;
    k->sport = be16(h + p);
    k->dport = be16(h + p + 2);
    if (l4 == 6 && n >= p + 8)
        k->seq = be32(h + p + 4);
}

static inline void put_opt(struct col *c, int64_t v)
{
    if (v < 0)
        put_nil(c);
    else
        put_uint(c, (uint64_t)v);
}

/* Walk the block at `off` of `buf` (`buflen` bytes), appending its frames to `b`.
 * Returns 0; -1 if the block descriptor itself lies outside the buffer (the caller lets the
 * Python walker raise what it raises); -2 if out of memory (the batch keeps the frames of the
 * earlier blocks, and of this one those before
 * the one that did not fit). A frame header or an IPv4 fast-path head that reaches outside the
 * buffer ends the walk, as struct.error does in ring.walk_block. */
int nw_walk_block(struct nw_batch *b, const uint8_t *buf, size_t buflen, size_t off,
                  struct nw_block *info)
{
    if (off > buflen || buflen - off < BLOCK_DESC_SIZE)
        return -1;
    const uint8_t *d = buf + off;
    info->status = rd32(d + 8);
    info->num_pkts = rd32(d + 12);
    uint32_t first_off = rd32(d + 16);
    memcpy(&info->seq, d + 24, 8);
    info->walked = 0;
    info->first_ts = info->last_ts = 0;
    size_t p = off + first_off;
    struct col *c = b->col;
    int per_frame = info->num_pkts > BLOCK_RESERVE_MAX;
    if (!per_frame && reserve(b, info->num_pkts) < 0)
        return -2;
    for (uint32_t i = 0; i < info->num_pkts; i++) {
        if (p > buflen || buflen - p < HDR_LL_SIZE)
            break;
        const uint8_t *f = buf + p;
        uint32_t nxt = rd32(f), sec = rd32(f + 4), nsec = rd32(f + 8), snap = rd32(f + 12);
        uint32_t wlen = rd32(f + 16), st = rd32(f + 20), rxh = rd32(f + 28), tci = rd32(f + 32);
        uint16_t mac = rd16(f + 24);
        uint8_t pkttype = f[58];
        /* head = buf[p + mac : p + mac + snap], clipped to the buffer as a slice is */
        size_t hs = p + mac, he = hs + snap;
        if (he > buflen)
            he = buflen;
        if (hs > he)
            hs = he;
        const uint8_t *h = buf + hs;
        size_t hn = he - hs;
        /* ring.walk_block's IPv4 fast path (snap >= 46) unpacks 14 + 28 bytes of the head; a
         * head clipped by the end of the buffer short of that raises struct.error there: the
         * walk ends. */
        if (hn >= 15 && h[12] == 0x08 && h[13] == 0x00 && h[14] == 0x45 && snap >= 46 && hn < 42)
            break;
        if ((per_frame && reserve(b, 1) < 0)
            || (c[C_HEAD].len + hn + 5 > c[C_HEAD].cap
                && grow(b, &c[C_HEAD], c[C_HEAD].len + hn + 5) < 0))
            return -2;
        uint64_t ts = (uint64_t)sec * 1000000000ull + nsec;
        struct keys k;
        parse_l3l4(h, hn, &k);
        put_uint(&c[C_TS], ts);
        put_uint(&c[C_TS_SRC], TS_SRC[st >> 29]);
        put_uint(&c[C_CAPLEN], snap);
        put_uint(&c[C_LEN], wlen);
        put_uint(&c[C_DIR], pkttype);
        put_uint(&c[C_RXHASH], rxh);
        put_opt(&c[C_VLAN], (st & TP_STATUS_VLAN_VALID) ? (int64_t)tci : -1);
        put_opt(&c[C_ETHERTYPE], k.et);
        if (k.src) {
            put_bin(&c[C_SRC], k.src, k.alen);
            put_bin(&c[C_DST], k.dst, k.alen);
        } else {
            put_nil(&c[C_SRC]);
            put_nil(&c[C_DST]);
        }
        put_opt(&c[C_L4], k.l4);
        put_opt(&c[C_SPORT], k.sport);
        put_opt(&c[C_DPORT], k.dport);
        put_opt(&c[C_IP_ID], k.ip_id);
        put_opt(&c[C_TCP_SEQ], k.seq);
        put_bin(&c[C_HEAD], h, hn);
        if (info->walked == 0)
            info->first_ts = ts;
        info->last_ts = ts;
        info->walked++;
        b->rows++;
        p += nxt;
    }
    return 0;
}

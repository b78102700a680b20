/* netevents._cvalid: validate a batch's msgpack events against the v1 contract without building
 * Python objects (the codec builds them lazily, on first access: netevents/lazy.py).
 *
 * The contract comes in as a type table generated in Python from the wire types of
 * netevents/events.py (netevents/cvalid_table.py): a flat list of nodes, each a set of accepted
 * msgpack types (integer, float, string, boolean, bin, nil, array, map, struct) with its bounds
 * (minimum, enum, item/value node, max items, struct fields and which are required).
 *
 * The validator answers one question: does msgspec's typed one-pass decoder (netevents.wire.
 * ONE_PASS) accept these events? "Yes" must be exactly right; "no" only sends the batch to the
 * careful path, which accepts or explains it. So anything unusual (an unknown key, a repeated
 * struct key, an extension type, free form) is a "no" here. Every read is bounds-checked, and
 * recursion is bounded by the table's own nesting (top-level skipping by SKIP_DEPTH).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* CPython 3.11's dict table and int digits, read directly by encode() (other versions go
 * through PyDict_Next and PyLong_AsLongLongAndOverflow). */
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000 && !defined(Py_LIMITED_API)
#define ENC_CPY311 1
#define Py_BUILD_CORE 1
#include "internal/pycore_dict.h"
#undef Py_BUILD_CORE
#endif

#define A_INT 1u
#define A_FLOAT 2u
#define A_STR 4u
#define A_BOOL 8u
#define A_BIN 16u
#define A_NIL 32u
#define A_ARRAY 64u
#define A_MAP 128u
#define A_STRUCT 256u
#define A_SCALARS (A_INT | A_FLOAT | A_STR | A_BOOL | A_BIN | A_NIL)

#define MAX_FIELDS 64    /* struct fields tracked in one 64-bit mask */
#define MAX_NODES 4096
#define SKIP_DEPTH 32    /* nesting skipped at the top level before saying no */

typedef struct {
    const char *name;
    Py_ssize_t len;
    int node;
    int next;               /* the field whose key followed this one last time (a guess), -1 */
    int key_len;            /* the name as msgpack writes it (fixstr) fits 16 bytes: their */
    uint64_t key[2], mask[2]; /* count, and as two words in memory order; 0: a longer name */
} Field;

typedef struct {
    unsigned accept;
    int has_min;
    int64_t min;
    int items;              /* node of an array's items or a map's values, -1 */
    uint64_t max_items;
    int nenum, enum_off;    /* enum strings: fields[enum_off .. enum_off+nenum) (node unused) */
    int nfields, field_off; /* struct fields: fields[field_off .. field_off+nfields) */
    uint64_t required;
    int first;              /* the field whose key came first last time (a guess) */
    uint8_t *fast;          /* [256] a scalar node's values by first byte: the length of one
                             * that is valid whatever follows (fixints in bounds, nil, bool,
                             * float, ints no minimum can refuse); 0: read it in full (scalar_) */
} Node;

typedef struct {
    PyObject_HEAD
    Node *nodes;
    Field *fields;
    uint8_t *fast;          /* the nodes' fast tables, 256 bytes each (kept apart: a Node stays
                             * small, and the nodes a row's fields visit share cache lines) */
    int nnodes, nfields_total;
    int columnar;           /* root is a struct of equal-length columns */
    PyObject *keep;         /* the Python strings the names point into */
} Table;

typedef struct {
    const uint8_t *p, *end;
} Cur;

/* ------------------------------------------------------------------------------------------ */
/* Reading */

static inline int need(const Cur *c, size_t n) { return (size_t)(c->end - c->p) >= n; }

static inline uint32_t be16(const uint8_t *p) { return ((uint32_t)p[0] << 8) | p[1]; }
static inline uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint64_t be64(const uint8_t *p) { return ((uint64_t)be32(p) << 32) | be32(p + 4); }

/* A string/bin payload length after its type byte (width 1, 2 or 4 bytes). */
static inline int read_len(Cur *c, int width, uint64_t *len) {
    if (!need(c, (size_t)width)) return 0;
    *len = width == 1 ? c->p[0] : width == 2 ? be16(c->p) : be32(c->p);
    c->p += width;
    return 1;
}

/* Strict UTF-8 (what CPython's decoder accepts: no overlongs, no surrogates, <= U+10FFFF). */
static int utf8_ok(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (!(w & 0x8080808080808080ull)) { i += 8; continue; }
        }
        uint8_t b = s[i];
        if (b < 0x80) { i++; continue; }
        if (b >= 0xC2 && b <= 0xDF) {
            if (i + 1 >= n || (s[i + 1] & 0xC0) != 0x80) return 0;
            i += 2;
        } else if (b >= 0xE0 && b <= 0xEF) {
            if (i + 2 >= n) return 0;
            uint8_t b1 = s[i + 1], b2 = s[i + 2];
            if ((b1 & 0xC0) != 0x80 || (b2 & 0xC0) != 0x80) return 0;
            if (b == 0xE0 && b1 < 0xA0) return 0;      /* overlong */
            if (b == 0xED && b1 >= 0xA0) return 0;     /* surrogate */
            i += 3;
        } else if (b >= 0xF0 && b <= 0xF4) {
            if (i + 3 >= n) return 0;
            uint8_t b1 = s[i + 1], b2 = s[i + 2], b3 = s[i + 3];
            if ((b1 & 0xC0) != 0x80 || (b2 & 0xC0) != 0x80 || (b3 & 0xC0) != 0x80) return 0;
            if (b == 0xF0 && b1 < 0x90) return 0;      /* overlong */
            if (b == 0xF4 && b1 >= 0x90) return 0;     /* over U+10FFFF */
            i += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

/* The string at the cursor (any width): its bytes, or 0 if it is not one. */
static inline int read_str(Cur *c, const uint8_t **s, uint64_t *n) {
    if (!need(c, 1)) return 0;
    uint8_t b = *c->p++;
    if ((b & 0xE0) == 0xA0) *n = b & 0x1F;
    else if (b == 0xD9) { if (!read_len(c, 1, n)) return 0; }
    else if (b == 0xDA) { if (!read_len(c, 2, n)) return 0; }
    else if (b == 0xDB) { if (!read_len(c, 4, n)) return 0; }
    else return 0;
    if (!need(c, *n)) return 0;
    *s = c->p;
    c->p += *n;
    return 1;
}

/* Container header: fills *n and returns A_ARRAY or A_MAP, or 0. */
static inline unsigned read_container(Cur *c, uint64_t *n) {
    if (!need(c, 1)) return 0;
    uint8_t b = *c->p;
    if ((b & 0xF0) == 0x90) { c->p++; *n = b & 0x0F; return A_ARRAY; }
    if ((b & 0xF0) == 0x80) { c->p++; *n = b & 0x0F; return A_MAP; }
    if (b == 0xDC || b == 0xDE) {
        if (!need(c, 3)) return 0;
        *n = be16(c->p + 1); c->p += 3;
        return b == 0xDC ? A_ARRAY : A_MAP;
    }
    if (b == 0xDD || b == 0xDF) {
        if (!need(c, 5)) return 0;
        *n = be32(c->p + 1); c->p += 5;
        return b == 0xDD ? A_ARRAY : A_MAP;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Validating */

static int value(const Table *t, Node *nd, Cur *c);

/* A string is a field's name or an enum's string (short: compared inline, 8 then 4 bytes at a
 * time, not by a call to memcmp). */
static inline int same(const Field *f, const uint8_t *s, uint64_t n) {
    if ((uint64_t)f->len != n) return 0;
    const uint8_t *name = (const uint8_t *)f->name;
    for (; n >= 8; n -= 8, name += 8, s += 8) {
        uint64_t x, y;
        memcpy(&x, name, 8);
        memcpy(&y, s, 8);
        if (x != y) return 0;
    }
    if (n >= 4) {
        uint32_t x, y;
        memcpy(&x, name, 4);
        memcpy(&y, s, 4);
        if (x != y) return 0;
        n -= 4, name += 4, s += 4;
    }
    for (; n; n--) if (*name++ != *s++) return 0;
    return 1;
}

/* One scalar of node nd (always inlined: the loop over a column of scalars is the hot path). */
static inline __attribute__((always_inline)) int scalar_(const Table *t, Node *nd, Cur *c) {
    if (!need(c, 1)) return 0;
    const uint8_t *p = c->p;
    uint8_t b = p[0];
    unsigned acc = nd->accept;
    if (b <= 0x7F) {                                   /* positive fixint */
        if (!(acc & A_INT) || (nd->has_min && (int64_t)b < nd->min)) return 0;
        c->p = p + 1;
        return 1;
    }
    if (b >= 0xE0) {                                   /* negative fixint */
        if (!(acc & A_INT) || (nd->has_min && (int64_t)(int8_t)b < nd->min)) return 0;
        c->p = p + 1;
        return 1;
    }
    switch (b) {
    case 0xCC: case 0xCD: case 0xCE: case 0xCF: {      /* uint 8..64: never below a minimum <= 0 */
        size_t w = (size_t)1 << (b - 0xCC);
        if (!(acc & A_INT) || !need(c, 1 + w)) return 0;
        if (nd->has_min && nd->min > 0) {
            uint64_t v = w == 1 ? p[1] : w == 2 ? be16(p + 1) : w == 4 ? be32(p + 1) : be64(p + 1);
            if (v < (uint64_t)nd->min) return 0;
        }
        c->p = p + 1 + w;
        return 1;
    }
    case 0xD0: case 0xD1: case 0xD2: case 0xD3: {      /* int 8..64 */
        size_t w = (size_t)1 << (b - 0xD0);
        if (!(acc & A_INT) || !need(c, 1 + w)) return 0;
        if (nd->has_min) {
            int64_t v = w == 1 ? (int8_t)p[1] : w == 2 ? (int16_t)be16(p + 1)
                      : w == 4 ? (int32_t)be32(p + 1) : (int64_t)be64(p + 1);
            if (v < nd->min) return 0;
        }
        c->p = p + 1 + w;
        return 1;
    }
    case 0xCA: case 0xCB: {
        size_t w = b == 0xCA ? 4 : 8;
        if (!(acc & A_FLOAT) || !need(c, 1 + w)) return 0;
        c->p = p + 1 + w;
        return 1;
    }
    case 0xC0:
        if (!(acc & A_NIL)) return 0;
        c->p = p + 1;
        return 1;
    case 0xC2: case 0xC3:
        if (!(acc & A_BOOL)) return 0;
        c->p = p + 1;
        return 1;
    case 0xC4: case 0xC5: case 0xC6: {
        uint64_t n;
        if (!(acc & A_BIN)) return 0;
        c->p = p + 1;
        if (!read_len(c, b == 0xC4 ? 1 : b == 0xC5 ? 2 : 4, &n) || !need(c, n)) return 0;
        c->p += n;
        return 1;
    }
    default:
        break;
    }
    if ((b & 0xE0) == 0xA0 || b == 0xD9 || b == 0xDA || b == 0xDB) {
        const uint8_t *s;
        uint64_t n;
        if (!(acc & A_STR) || !read_str(c, &s, &n)) return 0;
        if (nd->nenum) {                               /* an enum: one of its strings exactly */
            const Field *e = t->fields + nd->enum_off;
            for (int i = 0; i < nd->nenum; i++) if (same(e + i, s, n)) return 1;
            return 0;
        }
        return utf8_ok(s, n);
    }
    return 0;  /* an extension type, 0xC1, or a container where a scalar belongs */
}

static int scalar(const Table *t, Node *nd, Cur *c) { return scalar_(t, nd, c); }

/* The length of the value at the cursor when its first byte says all (a node's fast table,
 * all zero for a node that is not a scalar's) and it is all there; else 0 (read it in full). */
static inline size_t fast_len(const uint8_t *fast, const Cur *c) {
    if (c->p >= c->end) return 0;
    size_t w = fast[*c->p];
    return (size_t)(c->end - c->p) >= w ? w : 0;
}

/* n values of node nd (scalars in a loop of their own, or containers).
 *
 * A column of scalars is mostly values whose first byte says all (nd->fast), and mostly runs of
 * one form (a column of timestamps, of ports, of small flags): a run is taken with the next
 * value's place known in advance (the same length again), so its loads do not wait for one
 * another as the read of one value after the other does. */
static int values(const Table *t, Node *nd, Cur *c, uint64_t n) {
    if (nd->accept & ~A_SCALARS) {
        for (uint64_t i = 0; i < n; i++) if (!value(t, nd, c)) return 0;
        return 1;
    }
    Cur l = *c;  /* a local cursor stays in registers through the loop */
    const uint8_t *fast = nd->fast;
    for (uint64_t i = 0; i < n;) {
        size_t w = fast_len(fast, &l);
        if (w) {       /* (the run first: laid out as the branch taken, frames measured 1.2x) */
            uint8_t b = *l.p;
            const uint8_t *q = l.p + w;
            uint64_t k = 1, m = n - i;
            if (w == 1)    /* one-byte values: any of them, not only b again */
                for (; k < m && q < l.end && fast[*q] == 1; k++) q++;
            else
                for (; k < m && (size_t)(l.end - q) >= w && *q == b; k++) q += w;
            l.p = q;
            i += k;
            continue;
        }
        if (!scalar_(t, nd, &l)) return 0;
        i++;
    }
    c->p = l.p;
    return 1;
}

/* nd->fast: for each first byte, the length of a value that scalar_ would accept whatever its
 * other bytes are, else 0 (all 0 for a node that is not a scalar's). */
static void fast_lengths(Node *nd) {
    unsigned acc = nd->accept;
    uint8_t *w = nd->fast;  /* zeroed */
    if (acc & ~A_SCALARS) return;
    if (acc & A_INT) {
        for (int b = 0; b <= 0x7F; b++) if (!nd->has_min || b >= nd->min) w[b] = 1;
        for (int b = 0xE0; b <= 0xFF; b++) if (!nd->has_min || (int8_t)b >= nd->min) w[b] = 1;
        if (!nd->has_min || nd->min <= 0) w[0xCC] = 2, w[0xCD] = 3, w[0xCE] = 5, w[0xCF] = 9;
        if (!nd->has_min) w[0xD0] = 2, w[0xD1] = 3, w[0xD2] = 5, w[0xD3] = 9;
    }
    if (acc & A_FLOAT) w[0xCA] = 5, w[0xCB] = 9;
    if (acc & A_NIL) w[0xC0] = 1;
    if (acc & A_BOOL) w[0xC2] = 1, w[0xC3] = 1;
}


/* A struct (a map with only the node's field names, each at most once, the required ones present). */
static int record(const Table *t, Node *nd, Cur *c, uint64_t n, const uint8_t **cols,
                  uint64_t *rows_out) {
    uint64_t seen = 0;
    Field *f = t->fields + nd->field_off;
    int nf = nd->nfields, prev = -1;
    int64_t rows = -1;
    for (uint64_t i = 0; i < n; i++) {
        const uint8_t *s;
        uint64_t len;
        /* Rows of a batch have their keys in the same order: guess the one that came after
         * the previous key last time, and compare the key's bytes with the guess's as
         * msgpack writes it (two masked words); a wrong guess costs only the scan. */
        int j = prev < 0 ? nd->first : f[prev].next;
        if (j >= 0 && j < nf && f[j].key_len && need(c, 16)) {
            uint64_t x0, x1;
            memcpy(&x0, c->p, 8);
            memcpy(&x1, c->p + 8, 8);
            if (((x0 & f[j].mask[0]) == f[j].key[0]) & ((x1 & f[j].mask[1]) == f[j].key[1])) {
                c->p += f[j].key_len;
                goto known;
            }
        }
        if (!read_str(c, &s, &len)) return 0;
        if (j < 0 || j >= nf || !same(f + j, s, len)) {
            for (j = 0; j < nf && !same(f + j, s, len); j++) {}
            if (j == nf) return 0;                     /* a key v1 does not know */
            if (prev < 0) nd->first = j; else f[prev].next = j;
        }
    known:
        if ((seen >> j) & 1) return 0;                 /* a key repeated */
        seen |= (uint64_t)1 << j;
        prev = j;
        Node *fn = t->nodes + f[j].node;
        size_t w;
        if (cols) {                                    /* a column: a list of equal length */
            uint64_t m;
            const uint8_t *start = c->p;
            if (read_container(c, &m) != A_ARRAY || m > fn->max_items) return 0;
            if (rows >= 0 && (uint64_t)rows != m) return 0;
            rows = (int64_t)m;
            if (!values(t, t->nodes + fn->items, c, m)) return 0;
            cols[2 * j] = start;
            cols[2 * j + 1] = c->p;
        } else if ((w = fast_len(fn->fast, c))) {      /* a scalar its first byte says all of */
            c->p += w;
        } else if (!(fn->accept & ~A_SCALARS) ? !scalar_(t, fn, c) : !value(t, fn, c)) {
            return 0;
        }
    }
    if ((seen & nd->required) != nd->required) return 0;
    if (rows_out) *rows_out = rows < 0 ? 0 : (uint64_t)rows;
    return 1;
}

/* One value of node nd: a scalar, or an array / map / struct of it. */
static int value(const Table *t, Node *nd, Cur *c) {
    uint64_t n;
    if (!need(c, 1)) return 0;
    uint8_t b = *c->p;
    if (b == 0xC0 && (nd->accept & A_NIL)) { c->p++; return 1; }
    if (!(nd->accept & (A_ARRAY | A_MAP | A_STRUCT))) return scalar(t, nd, c);
    unsigned got = read_container(c, &n);
    if (got == A_ARRAY && (nd->accept & A_ARRAY)) {
        if (n > nd->max_items) return 0;
        return values(t, t->nodes + nd->items, c, n);
    }
    if (got == A_MAP && (nd->accept & A_MAP)) {
        if (n > nd->max_items) return 0;
        Node *vn = t->nodes + nd->items;
        for (uint64_t i = 0; i < n; i++) {
            const uint8_t *s;
            uint64_t len;
            if (!read_str(c, &s, &len) || !utf8_ok(s, len)) return 0;
            if (!value(t, vn, c)) return 0;
        }
        return 1;
    }
    if (got == A_MAP && (nd->accept & A_STRUCT)) return record(t, nd, c, n, NULL, NULL);
    return 0;
}

/* Skip one well-formed msgpack value (any type but extensions), at most SKIP_DEPTH deep. */
static int skip(Cur *c, int depth) {
    uint64_t n;
    if (depth > SKIP_DEPTH || !need(c, 1)) return 0;
    uint8_t b = *c->p;
    unsigned got = read_container(c, &n);
    if (got) {
        uint64_t items = got == A_MAP ? 2 * n : n;
        if (items > (uint64_t)(c->end - c->p)) return 0;   /* each item is at least one byte */
        for (uint64_t i = 0; i < items; i++) if (!skip(c, depth + 1)) return 0;
        return 1;
    }
    static Node any = {A_SCALARS, 0, 0, -1, 0, 0, 0, 0, 0, 0};
    if ((b & 0xE0) == 0xA0 || b == 0xD9 || b == 0xDA || b == 0xDB) {   /* a string, unchecked */
        const uint8_t *s;
        return read_str(c, &s, &n);
    }
    return scalar(NULL, &any, c);
}

/* ------------------------------------------------------------------------------------------ */
/* Encoding
 *
 * encode(obj): msgpack of a value made of exact dict (str keys), list, tuple, str, int, float,
 * bool, None and bytes, byte for byte what msgspec.msgpack.encode makes of it (shortest
 * headers, float64, uint forms for ints >= 0). Anything else (a subclass, another type, an int
 * or a container msgpack cannot hold, a str that is not UTF-8, nesting over ENC_DEPTH) is a
 * "no": None, and the caller asks msgspec, which encodes it or raises what it raises today.
 *
 * It never calls Python code (no __index__, no __str__, no protocol) and allocates nothing the
 * garbage collector tracks (so no collection, no finalizer), so nothing can change the value
 * while it is read: a list's items and a dict's entries are read as they are, without holding
 * references. */

#define ENC_DEPTH 32
#define ENC_SLACK 64   /* bytes made room for with each value (the largest header or scalar: 9) */

typedef struct {
    PyObject *bytes;       /* the output (refcount 1, resized as it grows, then to its length) */
    uint8_t *p, *end;      /* where the next byte goes, and the end of its room */
} Out;

static Py_ssize_t enc_hint = 256;  /* the room a call starts with: the last call's length */

/* Room for n more bytes (at least doubling). 0 with MemoryError set (bytes freed). */
static __attribute__((noinline)) int grow(Out *o, size_t n) {
    uint8_t *start = (uint8_t *)PyBytes_AS_STRING(o->bytes);
    size_t used = (size_t)(o->p - start), cap = (size_t)(o->end - start);
    if (n > (size_t)PY_SSIZE_T_MAX - used) { PyErr_NoMemory(); Py_CLEAR(o->bytes); return 0; }
    size_t want = used + n;
    if (cap <= (size_t)PY_SSIZE_T_MAX / 2 && want < 2 * cap) want = 2 * cap;
    if (_PyBytes_Resize(&o->bytes, (Py_ssize_t)want) < 0) return 0;  /* it freed the bytes */
    start = (uint8_t *)PyBytes_AS_STRING(o->bytes);
    o->p = start + used;
    o->end = start + want;
    return 1;
}

static inline int room(Out *o, size_t n) {
    return (size_t)(o->end - o->p) >= n || grow(o, n);
}

static inline void put16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline void put64(uint8_t *p, uint64_t v) { put32(p, (uint32_t)(v >> 32)); put32(p + 4, (uint32_t)v); }

/* A header with a length: fix (small + n, under fix_max), then 8-, 16-, 32-bit forms at b8
 * (b8 0: none, as for arrays and maps), b8 + 1, b8 + 2. Room for 5 bytes is made. */
static inline void header(Out *o, size_t n, uint8_t small, size_t fix_max, uint8_t b8, uint8_t b16,
                          uint8_t b32) {
    uint8_t *p = o->p;
    if (n < fix_max) { *p = (uint8_t)(small + n); o->p = p + 1; }
    else if (b8 && n < 256) { p[0] = b8; p[1] = (uint8_t)n; o->p = p + 2; }
    else if (n < 65536) { p[0] = b16; put16(p + 1, (uint32_t)n); o->p = p + 3; }
    else { p[0] = b32; put32(p + 1, (uint32_t)n); o->p = p + 5; }
}

/* Whether a str holds a surrogate (then it has no UTF-8). Looked for here, not left to
 * CPython's encoder, whose UnicodeEncodeError is an object the collector tracks: making one
 * may run a collection, and finalizers, in the middle of encode(). */
static __attribute__((noinline)) int has_surrogate(PyObject *s) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    int kind = PyUnicode_KIND(s);
    if (kind == PyUnicode_2BYTE_KIND) {
        const Py_UCS2 *u = PyUnicode_2BYTE_DATA(s);
        for (Py_ssize_t i = 0; i < n; i++) if ((u[i] & 0xF800) == 0xD800) return 1;
    } else if (kind == PyUnicode_4BYTE_KIND) {
        const Py_UCS4 *u = PyUnicode_4BYTE_DATA(s);
        for (Py_ssize_t i = 0; i < n; i++) if ((u[i] & 0xFFFFF800u) == 0xD800) return 1;
    }
    return 0;  /* one byte a character (Latin-1): none */
}

/* A str's UTF-8: compact ASCII read in place, others through CPython's cached UTF-8 (made
 * once, kept in the str, as msgspec has it made). 1, 0 (not UTF-8: a lone surrogate), -1
 * (MemoryError). */
static inline int utf8_of(PyObject *s, const char **data, Py_ssize_t *len) {
    if (PyUnicode_IS_COMPACT_ASCII(s)) {
        *data = (const char *)PyUnicode_DATA(s);
        *len = PyUnicode_GET_LENGTH(s);
        return 1;
    }
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(s) < 0) return -1;  /* (a legacy str: made ready, allocating only) */
#endif
    if (has_surrogate(s)) return 0;
    *data = PyUnicode_AsUTF8AndSize(s, len);
    return *data ? 1 : -1;                  /* now only a MemoryError */
}

/* n bytes (room made): short ones (keys, names) by two overlapping moves, not a call. */
static inline void copy(uint8_t *p, const char *s, size_t n) {
    if (n <= 16) {
        if (n >= 8) { memcpy(p, s, 8); memcpy(p + n - 8, s + n - 8, 8); }
        else if (n >= 4) { memcpy(p, s, 4); memcpy(p + n - 4, s + n - 4, 4); }
        else for (size_t i = 0; i < n; i++) p[i] = (uint8_t)s[i];
    } else if (n <= 32) {
        memcpy(p, s, 16); memcpy(p + n - 16, s + n - 16, 16);
    } else {
        memcpy(p, s, n);
    }
}

/* A str or bin: header then payload. */
static inline __attribute__((always_inline)) int put_raw(Out *o, const char *data,
                                                         Py_ssize_t len, int bin) {
    if ((uint64_t)len > 0xFFFFFFFFu) return 0;
    if (!room(o, (size_t)len + 5)) return -1;
    if (bin) header(o, (size_t)len, 0, 0, 0xC4, 0xC5, 0xC6);
    else header(o, (size_t)len, 0xA0, 32, 0xD9, 0xDA, 0xDB);
    copy(o->p, data, (size_t)len);
    o->p += len;
    return 1;
}

static inline __attribute__((always_inline)) int put_str(Out *o, PyObject *s) {
    const char *data;
    Py_ssize_t len;
    int got = utf8_of(s, &data, &len);
    return got == 1 ? put_raw(o, data, len, 0) : got;
}

/* An int >= 0 in its shortest form at p (room made): positive fixint, uint 8..64; where the
 * next byte goes. */
static inline uint8_t *uint_at(uint8_t *p, uint64_t x) {
    if (x < 128) { p[0] = (uint8_t)x; return p + 1; }
    if (x < 256) { p[0] = 0xCC; p[1] = (uint8_t)x; return p + 2; }
    if (x < 65536) { p[0] = 0xCD; put16(p + 1, (uint32_t)x); return p + 3; }
    if (x <= 0xFFFFFFFFu) { p[0] = 0xCE; put32(p + 1, (uint32_t)x); return p + 5; }
    p[0] = 0xCF; put64(p + 1, x); return p + 9;
}

/* An int < 0 in its shortest form at p (room made): negative fixint, int 8..64. */
static inline uint8_t *neg_at(uint8_t *p, int64_t x) {
    if (x >= -32) { p[0] = (uint8_t)(int8_t)x; return p + 1; }
    if (x >= -128) { p[0] = 0xD0; p[1] = (uint8_t)(int8_t)x; return p + 2; }
    if (x >= -32768) { p[0] = 0xD1; put16(p + 1, (uint32_t)(uint16_t)(int16_t)x); return p + 3; }
    if (x >= -2147483648ll) { p[0] = 0xD2; put32(p + 1, (uint32_t)(int32_t)x); return p + 5; }
    p[0] = 0xD3; put64(p + 1, (uint64_t)x); return p + 9;
}

#ifdef ENC_CPY311
/* An exact int at p (room for 9 bytes made), read from its digits: where the next byte goes,
 * or NULL for one msgpack cannot hold. Up to 3 digits of 30 bits, the top one under 16
 * (magnitudes below 2**64); the sign in ob_size, which counts the digits. */
static inline uint8_t *int_at(uint8_t *p, PyObject *v) {
    Py_ssize_t size = Py_SIZE(v);
    const digit *d = ((PyLongObject *)v)->ob_digit;
    Py_ssize_t nd = size < 0 ? -size : size;
    if (nd > 3 || (nd == 3 && d[2] >= 16))
        return NULL;  /* more digits, or a top digit of 16 or more: 2**64 or more in magnitude */
    uint64_t mag = nd == 0 ? 0 : d[0];
    if (nd >= 2) mag |= (uint64_t)d[1] << PyLong_SHIFT;
    if (nd == 3) mag |= (uint64_t)d[2] << (2 * PyLong_SHIFT);
    if (size >= 0) return uint_at(p, mag);
    if (mag > ((uint64_t)1 << 63)) return NULL;          /* below -2**63 */
    return neg_at(p, (int64_t)(0 - mag));               /* -2**63 included (wraps exactly) */
}
#endif

/* An exact int (room for 9 bytes made). */
static inline int put_int(Out *o, PyObject *v) {
#ifdef ENC_CPY311
    uint8_t *p = int_at(o->p, v);
    if (!p) return 0;
    o->p = p;
    return 1;
#else
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow) {  /* (sized first: an OverflowError, like any exception, may collect) */
        if (overflow < 0 || _PyLong_NumBits(v) > 64) return 0;   /* below -2**63, over 2**64-1 */
        unsigned long long u = PyLong_AsUnsignedLongLong(v);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) return -1;
        o->p = uint_at(o->p, u);
        return 1;
    }
    o->p = x >= 0 ? uint_at(o->p, (uint64_t)x) : neg_at(o->p, x);
    return 1;
#endif
}

static int put_items(Out *o, PyObject **items, Py_ssize_t n, int depth);
static int put_map(Out *o, PyObject *d, int depth);

/* One value: 1 (written), 0 (not one encode() takes: the caller says None), -1 (MemoryError).
 * Inlined in the loops over items and entries; containers are calls. */
static inline __attribute__((always_inline)) int put_value_(Out *o, PyObject *v, int depth) {
    PyTypeObject *t = Py_TYPE(v);
    if (t == &PyUnicode_Type) return put_str(o, v);
    if (!room(o, ENC_SLACK)) return -1;                /* for any scalar or header below */
    if (t == &PyLong_Type) return put_int(o, v);
    if (v == Py_None) { *o->p++ = 0xC0; return 1; }
    if (t == &PyFloat_Type) {
        uint64_t bits;
        double x = PyFloat_AS_DOUBLE(v);
        memcpy(&bits, &x, 8);
        o->p[0] = 0xCB;
        put64(o->p + 1, bits);
        o->p += 9;
        return 1;
    }
    if (v == Py_True) { *o->p++ = 0xC3; return 1; }
    if (v == Py_False) { *o->p++ = 0xC2; return 1; }
    if (t == &PyBytes_Type) return put_raw(o, PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v), 1);
    if (depth >= ENC_DEPTH) return 0;
    if (t == &PyDict_Type) return put_map(o, v, depth + 1);
    if (t == &PyList_Type) return put_items(o, PySequence_Fast_ITEMS(v), PyList_GET_SIZE(v), depth + 1);
    if (t == &PyTuple_Type) return put_items(o, PySequence_Fast_ITEMS(v), PyTuple_GET_SIZE(v), depth + 1);
    return 0;
}

static int put_value(Out *o, PyObject *v, int depth) { return put_value_(o, v, depth); }

/* n items of an array (a list's or a tuple's). */
static int put_items(Out *o, PyObject **items, Py_ssize_t n, int depth) {
    if ((uint64_t)n > 0xFFFFFFFFu) return 0;
    if (!room(o, ENC_SLACK)) return -1;
    header(o, (size_t)n, 0x90, 16, 0, 0xDC, 0xDD);
    for (Py_ssize_t i = 0; i < n; i++) {
        int got = put_value_(o, items[i], depth);
        if (got != 1) return got;
    }
    return 1;
}

/* One entry of a map: its key (a str exactly), then its value. */
static inline __attribute__((always_inline)) int put_entry(Out *o, PyObject *k, PyObject *v,
                                                           int depth) {
    if (Py_TYPE(k) != &PyUnicode_Type) return 0;
    int got = put_str(o, k);
    return got == 1 ? put_value_(o, v, depth) : got;
}

static int put_map(Out *o, PyObject *d, int depth) {
    Py_ssize_t n = PyDict_GET_SIZE(d);
    if ((uint64_t)n > 0xFFFFFFFFu) return 0;
    if (!room(o, ENC_SLACK)) return -1;
    header(o, (size_t)n, 0x80, 16, 0, 0xDE, 0xDF);
#ifdef ENC_CPY311
    /* A combined table (every dict but an instance's __dict__): its entries in order, the
     * deleted ones (value NULL) skipped, as PyDict_Next does. */
    PyDictObject *mp = (PyDictObject *)d;
    if (mp->ma_values == NULL) {
        PyDictKeysObject *dk = mp->ma_keys;
        Py_ssize_t ne = dk->dk_nentries;
        /* The same loop over either entry type (a str-keys-only table, or a general one). */
#define PUT_ENTRIES(type, entries)                                                     \
        do {                                                                           \
            type *ep = entries(dk);                                                    \
            for (Py_ssize_t i = 0; i < ne; i++) {                                      \
                if (ep[i].me_value == NULL) continue;                                  \
                int got = put_entry(o, ep[i].me_key, ep[i].me_value, depth);           \
                if (got != 1) return got;                                              \
            }                                                                          \
            return 1;                                                                  \
        } while (0)
        if (dk->dk_kind == DICT_KEYS_UNICODE) PUT_ENTRIES(PyDictUnicodeEntry, DK_UNICODE_ENTRIES);
        if (dk->dk_kind == DICT_KEYS_GENERAL) PUT_ENTRIES(PyDictKeyEntry, DK_ENTRIES);
#undef PUT_ENTRIES
    }
#endif
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(d, &pos, &k, &v)) {
        int got = put_entry(o, k, v, depth);
        if (got != 1) return got;
    }
    return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* Python */

/* f's key_len, key and mask (see Field). */
static void key_words(Field *f) {
    uint8_t key[16] = {0}, mask[16] = {0};
    f->key_len = 0;
    if (f->len > 15) return;
    key[0] = (uint8_t)(0xA0 | f->len);
    memcpy(key + 1, f->name, (size_t)f->len);
    memset(mask, 0xFF, (size_t)f->len + 1);
    memcpy(f->key, key, 16);
    memcpy(f->mask, mask, 16);
    f->key_len = (int)f->len + 1;
}

static void Table_dealloc(Table *self) {
    PyMem_Free(self->nodes);
    PyMem_Free(self->fields);
    PyMem_Free(self->fast);
    Py_XDECREF(self->keep);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Table(nodes, columnar): nodes is a list of tuples
 * (accept, minimum or None, items, max_items, enum: tuple[bytes], fields: tuple[(bytes, node, required)])
 * and node 0 is the events value. */
static PyObject *Table_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *spec;
    int columnar;
    if (!PyArg_ParseTuple(args, "O!p", &PyList_Type, &spec, &columnar)) return NULL;
    Py_ssize_t nn = PyList_GET_SIZE(spec);
    if (nn < 1 || nn > MAX_NODES) return PyErr_Format(PyExc_ValueError, "1..%d nodes", MAX_NODES);
    Table *self = (Table *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    self->columnar = columnar;
    self->keep = PyList_New(0);
    self->nodes = PyMem_Calloc((size_t)nn, sizeof(Node));
    self->fast = PyMem_Calloc((size_t)nn, 256);
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < nn; i++) {
        PyObject *item = PyList_GET_ITEM(spec, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 6) goto bad;
        PyObject *e = PyTuple_GET_ITEM(item, 4), *f = PyTuple_GET_ITEM(item, 5);
        if (!PyTuple_Check(e) || !PyTuple_Check(f)) goto bad;
        total += PyTuple_GET_SIZE(e) + PyTuple_GET_SIZE(f);
    }
    self->fields = PyMem_Calloc((size_t)total + 1, sizeof(Field));
    if (!self->keep || !self->nodes || !self->fields || !self->fast) { PyErr_NoMemory(); goto fail; }
    int off = 0;
    for (Py_ssize_t i = 0; i < nn; i++) {
        PyObject *item = PyList_GET_ITEM(spec, i);
        Node *nd = self->nodes + i;
        PyObject *minimum = PyTuple_GET_ITEM(item, 1);
        nd->accept = (unsigned)PyLong_AsUnsignedLong(PyTuple_GET_ITEM(item, 0));
        nd->has_min = minimum != Py_None;
        nd->min = nd->has_min ? PyLong_AsLongLong(minimum) : 0;
        nd->items = (int)PyLong_AsLong(PyTuple_GET_ITEM(item, 2));
        nd->max_items = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(item, 3));
        if (PyErr_Occurred()) goto fail;
        nd->fast = self->fast + 256 * i;
        fast_lengths(nd);
        if ((nd->accept & (A_ARRAY | A_MAP)) && (nd->items < 0 || nd->items >= nn)) goto bad;
        for (int part = 0; part < 2; part++) {
            PyObject *seq = PyTuple_GET_ITEM(item, 4 + part);
            Py_ssize_t m = PyTuple_GET_SIZE(seq);
            if (part == 0) { nd->nenum = (int)m; nd->enum_off = off; }
            else {
                if (m > MAX_FIELDS) goto bad;
                nd->nfields = (int)m; nd->field_off = off;
            }
            for (Py_ssize_t j = 0; j < m; j++, off++) {
                PyObject *x = PyTuple_GET_ITEM(seq, j), *name = x;
                if (part == 1) {
                    if (!PyTuple_Check(x) || PyTuple_GET_SIZE(x) != 3) goto bad;
                    name = PyTuple_GET_ITEM(x, 0);
                    self->fields[off].node = (int)PyLong_AsLong(PyTuple_GET_ITEM(x, 1));
                    if (PyErr_Occurred()) goto fail;
                    if (self->fields[off].node < 0 || self->fields[off].node >= nn) goto bad;
                    if (PyObject_IsTrue(PyTuple_GET_ITEM(x, 2)))
                        nd->required |= (uint64_t)1 << j;
                }
                if (!PyBytes_Check(name) || PyList_Append(self->keep, name) < 0) goto bad;
                self->fields[off].name = PyBytes_AS_STRING(name);
                self->fields[off].len = PyBytes_GET_SIZE(name);
                key_words(self->fields + off);
            }
        }
    }
    self->nnodes = (int)nn;
    self->nfields_total = off;
    if (columnar) {  /* node 0 a struct whose every field is an array (a column) */
        Node *root = self->nodes;
        if (!(root->accept & A_STRUCT)) goto bad;
        for (int j = 0; j < root->nfields; j++) {
            Node *col = self->nodes + self->fields[root->field_off + j].node;
            if (!(col->accept & A_ARRAY)) goto bad;
        }
    }
    return (PyObject *)self;
bad:
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "malformed type table");
fail:
    Py_DECREF(self);
    return NULL;
}

/* The events value at the cursor (moved past it) against table t: None (not sure: take the
 * careful path), or for a list kind the number of rows, or for a columnar kind (rows, ((start,
 * end) or None per field of node 0)), offsets from base. */
static PyObject *validate_at(Table *t, Cur *cur, const uint8_t *base) {
    Cur c = *cur;
    Node *root = t->nodes;
    const uint8_t *cols[2 * MAX_FIELDS];
    uint64_t n = 0, rows = 0;
    int ok;
    if (t->columnar) {
        memset(cols, 0, sizeof cols);
        ok = read_container(&c, &n) == A_MAP && record(t, root, &c, n, cols, &rows);
    } else {
        const uint8_t *p = c.p;
        ok = read_container(&c, &n) == A_ARRAY;
        c.p = p;
        ok = ok && value(t, root, &c);
    }
    if (!ok) Py_RETURN_NONE;
    cur->p = c.p;
    if (!t->columnar) return PyLong_FromUnsignedLongLong(n);
    int nf = root->nfields;
    PyObject *spans = PyTuple_New(nf);
    if (!spans) return NULL;
    for (int j = 0; j < nf; j++) {
        PyObject *span = cols[2 * j] == NULL ? Py_NewRef(Py_None) : Py_BuildValue(
            "nn", (Py_ssize_t)(cols[2 * j] - base), (Py_ssize_t)(cols[2 * j + 1] - base));
        if (!span) { Py_DECREF(spans); return NULL; }
        PyTuple_SET_ITEM(spans, j, span);
    }
    return Py_BuildValue("KN", (unsigned long long)rows, spans);
}

/* validate(buf, start, end): validate_at of buf[start:end), all of it. */
static PyObject *Table_validate(Table *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t start, end;
    if (!PyArg_ParseTuple(args, "y*nn", &view, &start, &end)) return NULL;
    PyObject *out;
    if (start < 0 || end > view.len || start > end) {
        out = PyErr_Format(PyExc_ValueError, "events span out of range");
    } else {
        Cur c = {(const uint8_t *)view.buf + start, (const uint8_t *)view.buf + end};
        out = validate_at(self, &c, view.buf);
        if (out && out != Py_None && c.p != c.end) Py_SETREF(out, Py_NewRef(Py_None));
    }
    PyBuffer_Release(&view);
    return out;
}

static PyMethodDef Table_methods[] = {
    {"validate", (PyCFunction)Table_validate, METH_VARARGS,
     "validate(buf, start, end): None, rows (list kinds) or (rows, column spans) (columnar)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "netevents._cvalid.Table",
    .tp_basicsize = sizeof(Table),
    .tp_dealloc = (destructor)Table_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A kind's events type, compiled for validate().",
    .tp_methods = Table_methods,
    .tp_new = Table_new,
};

/* check(buf, kinds, tables) -> (i, start, end, validated) or None.
 *
 * One pass over a batch: buf must be exactly one msgpack map with string keys, its "kind" (a
 * string, before "events": how netevents encodes) kinds[i], its "events" (once) valid by
 * tables[i] (validated is what validate_span returns); the other values are only skipped (the
 * codec decodes the envelope with msgspec, events spliced out). None if any of this fails. */
static PyObject *check(PyObject *Py_UNUSED(mod), PyObject *args) {
    Py_buffer view;
    PyObject *kinds, *tables, *out = NULL, *found = NULL;
    if (!PyArg_ParseTuple(args, "y*O!O!", &view, &PyTuple_Type, &kinds, &PyTuple_Type, &tables))
        return NULL;
    Py_ssize_t nk = PyTuple_GET_SIZE(kinds);
    if (PyTuple_GET_SIZE(tables) != nk) {
        PyBuffer_Release(&view);
        return PyErr_Format(PyExc_ValueError, "as many tables as kinds");
    }
    for (Py_ssize_t i = 0; i < nk; i++) {
        if (!PyBytes_Check(PyTuple_GET_ITEM(kinds, i)) ||
            !PyObject_TypeCheck(PyTuple_GET_ITEM(tables, i), &TableType)) {
            PyBuffer_Release(&view);
            return PyErr_Format(PyExc_TypeError, "kinds are bytes, tables Table");
        }
    }
    const uint8_t *base = view.buf;
    Cur c = {base, base + view.len};
    const uint8_t *ev_start = NULL, *ev_end = NULL;
    Py_ssize_t which = -1;
    int have_kind = 0;
    uint64_t n;
    int ok = read_container(&c, &n) == A_MAP;
    for (uint64_t i = 0; ok && i < n; i++) {
        const uint8_t *s;
        uint64_t len;
        if (!(ok = read_str(&c, &s, &len))) break;
        if (len == 4 && memcmp(s, "kind", 4) == 0) {
            const uint8_t *k;
            uint64_t klen;
            if (have_kind || !read_str(&c, &k, &klen)) { ok = 0; break; }
            have_kind = 1;
            for (Py_ssize_t j = 0; j < nk; j++) {
                PyObject *name = PyTuple_GET_ITEM(kinds, j);
                if ((uint64_t)PyBytes_GET_SIZE(name) == klen &&
                    memcmp(PyBytes_AS_STRING(name), k, klen) == 0) which = j;
            }
        } else if (len == 6 && memcmp(s, "events", 6) == 0) {
            if (ev_start || which < 0) { ok = 0; break; }  /* twice, or before a known kind */
            ev_start = c.p;
            found = validate_at((Table *)PyTuple_GET_ITEM(tables, which), &c, base);
            if (!found) goto done;
            if (!(ok = found != Py_None)) break;
            ev_end = c.p;
        } else {
            ok = skip(&c, 0);
        }
    }
    if (ok && ev_end && c.p == c.end) {
        out = Py_BuildValue("nnnO", which, (Py_ssize_t)(ev_start - base),
                            (Py_ssize_t)(ev_end - base), found);
    } else {
        out = Py_NewRef(Py_None);
    }
done:
    Py_XDECREF(found);
    PyBuffer_Release(&view);
    return out;
}

/* encode(obj) -> bytes or None: the Encoding section's. */
static PyObject *encode(PyObject *Py_UNUSED(mod), PyObject *obj) {
    Out o;
    o.bytes = PyBytes_FromStringAndSize(NULL, enc_hint);
    if (!o.bytes) return NULL;
    uint8_t *start = (uint8_t *)PyBytes_AS_STRING(o.bytes);
    o.p = start;
    o.end = start + enc_hint;
    int got = put_value(&o, obj, 0);
    if (got != 1) {
        Py_XDECREF(o.bytes);  /* NULL if a resize failed */
        if (got == 0) Py_RETURN_NONE;
        return NULL;
    }
    Py_ssize_t len = o.p - (uint8_t *)PyBytes_AS_STRING(o.bytes);
    /* The next call starts with room for this one's length and a quarter (batches of a kind
     * repeat their size), within 256 bytes .. 4 MiB. */
    enc_hint = len < (1 << 22) ? len + len / 4 + 256 : (1 << 22);
    if (_PyBytes_Resize(&o.bytes, len) < 0) return NULL;
    return o.bytes;
}

/* pick(values, picks, unset, same_length) -> dict or None: {name: values[i] for (i, name) in
 * picks if values[i] is not unset} (the codec's one-pass batch: its fields, and a columnar
 * kind's columns); with same_length, None when the values picked differ in length. */
static PyObject *pick(PyObject *Py_UNUSED(mod), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyTuple_Check(args[0]) || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "pick(values: tuple, picks: tuple, unset, same_length)");
        return NULL;
    }
    PyObject *values = args[0], *picks = args[1], *unset = args[2];
    int same = PyObject_IsTrue(args[3]);
    if (same < 0) return NULL;
    Py_ssize_t nv = PyTuple_GET_SIZE(values), np = PyTuple_GET_SIZE(picks), length = -1;
    PyObject *out = PyDict_New();
    if (!out) return NULL;
    for (Py_ssize_t k = 0; k < np; k++) {
        PyObject *p = PyTuple_GET_ITEM(picks, k);
        if (!PyTuple_Check(p) || PyTuple_GET_SIZE(p) != 2) goto bad;
        Py_ssize_t i = PyLong_AsSsize_t(PyTuple_GET_ITEM(p, 0));
        if (i == -1 && PyErr_Occurred()) goto fail;
        if (i < 0 || i >= nv) goto bad;
        PyObject *v = PyTuple_GET_ITEM(values, i);
        if (v == unset) continue;
        if (same) {
            Py_ssize_t n = PyList_CheckExact(v) ? PyList_GET_SIZE(v) : PyObject_Size(v);
            if (n < 0) goto fail;
            if (length >= 0 && n != length) {
                Py_DECREF(out);
                Py_RETURN_NONE;
            }
            length = n;
        }
        if (PyDict_SetItem(out, PyTuple_GET_ITEM(p, 1), v) < 0) goto fail;
    }
    return out;
bad:
    PyErr_SetString(PyExc_TypeError, "pick(): picks must be (index into values, name) pairs");
fail:
    Py_DECREF(out);
    return NULL;
}

static PyMethodDef methods[] = {
    {"pick", (PyCFunction)(void (*)(void))pick, METH_FASTCALL,
     "pick(values, picks, unset, same_length): {name: values[i] for (i, name) in picks if "
     "values[i] is not unset}; with same_length, None when their lengths differ"},
    {"encode", encode, METH_O,
     "encode(obj): msgspec.msgpack.encode(obj)'s bytes for exact dict/list/tuple/str/int/float/"
     "bool/None/bytes values, else None"},
    {"check", check, METH_VARARGS,
     "check(buf, kinds, tables): (i, start, end, validated) of a batch of kinds[i], or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "netevents._cvalid",
    "Validation of v1 batch events in C, without building Python objects.", -1, methods,
};

PyMODINIT_FUNC PyInit__cvalid(void) {
    if (PyType_Ready(&TableType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    /* The table format and check()'s answer, bumped with either (and in netevents/lazy.py):
     * lazy.py uses only a build it knows, so a checkout whose _cvalid.c changed but was not
     * rebuilt decodes eagerly instead of misreading the old .so. */
    if (PyModule_AddIntConstant(m, "ABI", 3) < 0 ||
        PyModule_AddObjectRef(m, "Table", (PyObject *)&TableType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

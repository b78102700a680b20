/* netevents.consumers.correlate._cfinger: the fingerprints of a frame batch's columns in one call.
 *
 * The same keys as fingerprint.py's Python (the reference): for each frame, Python's hash of
 * the bytes
 *
 *     len(src) src len(dst) dst  <l4 sport dport ip_id tcp_seq: int64 little-endian>
 *     <a byte: bit 0..3 set where sport, dport, ip_id, tcp_seq is None>  payload
 *
 * where payload is at most PAYLOAD_HASHED bytes of L4 payload found as _l4_payload finds it,
 * and None for a frame without src, dst or l4. Hashed with _Py_HashBytes, the function
 * hash(bytes) uses, so a key made here equals the one Python makes of the same frame (keyed per
 * process: keys are only compared within one correlator).
 *
 *   fingerprints(src, dst, l4, sport, dport, ip_id, tcp_seq, head) -> list of int/None, or None
 *
 * None (the whole batch to the Python path) for anything but lists of equal length holding
 * bytes or None (addresses, heads) and ints in int64 or None: what the codec's frame columns
 * hold; anything else is rare and Python's to judge.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define PAYLOAD_HASHED 32
#define MAX_ADDR 255
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17

/* -1 for a value the Python path must judge; 0 ok (*none set for None) */
static int int_of(PyObject *o, long long *v, int *none) {
    if (o == Py_None) {
        *none = 1;
        *v = 0;
        return 0;
    }
    if (!PyLong_Check(o))
        return -1;
    int overflow = 0;
    *v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow || (*v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return -1;
    }
    *none = 0;
    return 0;
}

static void put_i64(unsigned char *p, long long v) {
    uint64_t u = (uint64_t)v;
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(u >> (8 * i));
}

/* The L4 payload's offset in head, as fingerprint._l4_payload finds it; -1: none. */
static Py_ssize_t payload_offset(const unsigned char *h, Py_ssize_t n, long long l4) {
    if (n < 14)
        return -1;
    unsigned et = ((unsigned)h[12] << 8) | h[13];
    Py_ssize_t off = 14;
    while ((et == ETH_P_8021Q || et == ETH_P_8021AD) && n >= off + 4) {
        et = ((unsigned)h[off + 2] << 8) | h[off + 3];
        off += 4;
    }
    if (et == ETH_P_IP && n >= off + 20)
        off += (h[off] & 0x0F) * 4;
    else if (et == ETH_P_IPV6 && n >= off + 40)
        off += 40;
    else
        return -1;
    if (l4 == IPPROTO_TCP && n >= off + 13)
        off += (h[off + 12] >> 4) * 4;
    else if (l4 == IPPROTO_UDP)
        off += 8;
    else
        off += 4;
    return off;
}

static PyObject *fingerprints(PyObject *self, PyObject *args) {
    PyObject *cols[8];
    if (!PyArg_UnpackTuple(args, "fingerprints", 8, 8, &cols[0], &cols[1], &cols[2], &cols[3],
                           &cols[4], &cols[5], &cols[6], &cols[7]))
        return NULL;
    for (int c = 0; c < 8; c++)
        if (!PyList_CheckExact(cols[c]))
            Py_RETURN_NONE;
    Py_ssize_t n = PyList_GET_SIZE(cols[0]);
    for (int c = 1; c < 8; c++)
        if (PyList_GET_SIZE(cols[c]) != n)
            Py_RETURN_NONE;
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    unsigned char buf[2 + 2 * MAX_ADDR + 5 * 8 + 1 + PAYLOAD_HASHED];
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *src = PyList_GET_ITEM(cols[0], i), *dst = PyList_GET_ITEM(cols[1], i);
        PyObject *l4o = PyList_GET_ITEM(cols[2], i), *head = PyList_GET_ITEM(cols[7], i);
        if ((src != Py_None && !PyBytes_CheckExact(src)) || (dst != Py_None && !PyBytes_CheckExact(dst))
                || (head != Py_None && !PyBytes_CheckExact(head)))
            goto python;
        long long v[5];
        int none[5], flags = 0;
        if (int_of(l4o, &v[0], &none[0]) < 0)
            goto python;
        for (int c = 1; c < 5; c++) {
            if (int_of(PyList_GET_ITEM(cols[2 + c], i), &v[c], &none[c]) < 0)
                goto python;
            flags |= none[c] << (c - 1);
        }
        if (src == Py_None || dst == Py_None || PyBytes_GET_SIZE(src) == 0
                || PyBytes_GET_SIZE(dst) == 0 || none[0]) {
            Py_INCREF(Py_None);
            PyList_SET_ITEM(out, i, Py_None);
            continue;
        }
        Py_ssize_t ls = PyBytes_GET_SIZE(src), ld = PyBytes_GET_SIZE(dst);
        if (ls > MAX_ADDR || ld > MAX_ADDR)
            goto python;
        unsigned char *p = buf;
        *p++ = (unsigned char)ls;
        memcpy(p, PyBytes_AS_STRING(src), ls);
        p += ls;
        *p++ = (unsigned char)ld;
        memcpy(p, PyBytes_AS_STRING(dst), ld);
        p += ld;
        for (int c = 0; c < 5; c++, p += 8)
            put_i64(p, v[c]);
        *p++ = (unsigned char)flags;
        if (head != Py_None) {
            const unsigned char *h = (const unsigned char *)PyBytes_AS_STRING(head);
            Py_ssize_t hn = PyBytes_GET_SIZE(head);
            Py_ssize_t off = payload_offset(h, hn, v[0]);
            if (off >= 0 && off < hn) {
                Py_ssize_t take = hn - off < PAYLOAD_HASHED ? hn - off : PAYLOAD_HASHED;
                memcpy(p, h + off, take);
                p += take;
            }
        }
        PyObject *key = PyLong_FromSsize_t(_Py_HashBytes(buf, p - buf));
        if (key == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, key);
    }
    return out;
python:
    Py_DECREF(out);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"fingerprints", fingerprints, METH_VARARGS,
     "fingerprints(src, dst, l4, sport, dport, ip_id, tcp_seq, head) -> the keys of a frame "
     "batch's columns (fingerprint.py), or None: the batch is the Python path's."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "netevents.consumers.correlate._cfinger",
    "Frame fingerprints of a batch's columns in one call (netevents/consumers/correlate/fingerprint.py).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__cfinger(void) { return PyModule_Create(&module); }

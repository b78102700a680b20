/* netevents.consumers.correlate._cfinger: the fingerprints of a frame batch's columns in one call,
 * and (bulk, at the end) the matching of a batch of departures or arrivals taken whole.
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

/* ---- bulk: a frame batch matched whole --------------------------------------------------
 *
 * paths.match_whole is the reference (its docstring says what is taken and what comes back);
 * anything else returns None having changed nothing, and the frame-by-frame loop of
 * PathLoss.frames takes it. departures and arrivals are OrderedDicts: read through the dict
 * API, changed only through the mapping protocol (which keeps their order). */

static int exact_int_list(PyObject *col, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (!PyLong_CheckExact(PyList_GET_ITEM(col, i)))
            return 0;
    return 1;
}

/* 1: every item of col equals col[0]; 0: not; -1: error */
static int all_equal(PyObject *col, Py_ssize_t n) {
    PyObject *first = PyList_GET_ITEM(col, 0);
    for (Py_ssize_t i = 1; i < n; i++) {
        int eq = PyObject_RichCompareBool(PyList_GET_ITEM(col, i), first, Py_EQ);
        if (eq <= 0)
            return eq;
    }
    return 1;
}

/* 1: every item of col is the exact int `want`; 0: not */
static int all_int_is(PyObject *col, Py_ssize_t n, long want) {
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = PyList_GET_ITEM(col, i);
        if (!PyLong_CheckExact(o))
            return 0;
        int overflow = 0;
        long v = PyLong_AsLongAndOverflow(o, &overflow);
        if (overflow || v != want)
            return 0;
    }
    return 1;
}

/* 1: no key of fps is in d; 0: one is; -1: error */
static int disjoint(PyObject *d, PyObject *fps, Py_ssize_t n) {
    if (PyDict_GET_SIZE(d) == 0)
        return 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        int in = PyDict_Contains(d, PyList_GET_ITEM(fps, i));
        if (in != 0)
            return in < 0 ? -1 : 0;
    }
    return 1;
}

/* A Departure (a tuple subclass of 6 fields, no more storage than a tuple's) */
static PyObject *departure(PyTypeObject *type, PyObject *f[6]) {
    PyObject *d = type->tp_alloc(type, 6);
    if (d == NULL)
        return NULL;
    for (int k = 0; k < 6; k++) {
        Py_INCREF(f[k]);
        PyTuple_SET_ITEM(d, k, f[k]);
    }
    return d;
}

static PyObject *depart(PyObject *departures, PyObject *arrivals, Py_ssize_t max_frames,
                        PyTypeObject *type, PyObject *host, PyObject *fps, PyObject *ts,
                        PyObject *tss, PyObject *l4, PyObject *src_t, PyObject *dst_t,
                        Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {  /* no TCP frame: it may be an offload super-packet */
        PyObject *o = PyList_GET_ITEM(l4, i);
        if (!PyLong_CheckExact(o))
            Py_RETURN_NONE;
        int overflow = 0;
        if (PyLong_AsLongAndOverflow(o, &overflow) == IPPROTO_TCP && !overflow)
            Py_RETURN_NONE;
    }
    if (PyDict_GET_SIZE(departures) + n > max_frames)
        Py_RETURN_NONE;
    int ok = disjoint(arrivals, fps, n);
    if (ok > 0)
        ok = disjoint(departures, fps, n);
    if (ok <= 0)
        return ok < 0 ? NULL : Py_NewRef(Py_None);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *f[6] = {host, PyList_GET_ITEM(ts, i), PyList_GET_ITEM(tss, i), dst_t, src_t,
                          Py_False};
        PyObject *d = departure(type, f);
        if (d == NULL)
            return NULL;
        int r = PyObject_SetItem(departures, PyList_GET_ITEM(fps, i), d);
        Py_DECREF(d);
        if (r < 0)
            return NULL;
    }
    Py_RETURN_TRUE;
}

static PyObject *arrive(PyObject *departures, PyObject *host, PyObject *fps, PyObject *ts,
                        PyObject *tss, Py_ssize_t n) {
    PyObject *deps = PyList_New(n), *delays = NULL, *sources = NULL, *out = NULL;
    if (deps == NULL)
        return NULL;
    PyObject *a = NULL, *first = NULL, *last = NULL;
    int uniform = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *dep = PyDict_GetItemWithError(departures, PyList_GET_ITEM(fps, i));
        if (dep == NULL) {
            if (PyErr_Occurred())
                goto done;
            out = Py_NewRef(Py_None);
            goto done;
        }
        if (!PyTuple_Check(dep) || PyTuple_GET_SIZE(dep) < 3
                || !PyLong_CheckExact(PyTuple_GET_ITEM(dep, 1))) {
            out = Py_NewRef(Py_None);
            goto done;
        }
        PyList_SET_ITEM(deps, i, Py_NewRef(dep));
        if (i == 0) {
            a = PyTuple_GET_ITEM(dep, 0);
            int same = PyObject_RichCompareBool(a, host, Py_EQ);
            if (same != 0) {  /* a frame seen leaving and arriving at one host: the loop's */
                out = same < 0 ? NULL : Py_NewRef(Py_None);
                goto done;
            }
            continue;
        }
        int eq = PyObject_RichCompareBool(PyTuple_GET_ITEM(dep, 0), a, Py_EQ);
        if (eq <= 0) {  /* more than one sender: the loop's */
            out = eq < 0 ? NULL : Py_NewRef(Py_None);
            goto done;
        }
    }
    /* taken: the delays, the span of the departure stamps, the pairs of stamp sources */
    delays = PyList_New(n);
    if (delays == NULL)
        goto done;
    PyObject *src_a0 = PyTuple_GET_ITEM(PyList_GET_ITEM(deps, 0), 2);
    PyObject *src_b0 = PyList_GET_ITEM(tss, 0);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *dep = PyList_GET_ITEM(deps, i), *sent = PyTuple_GET_ITEM(dep, 1);
        PyObject *d = PyNumber_Subtract(PyList_GET_ITEM(ts, i), sent);
        if (d == NULL)
            goto done;
        PyList_SET_ITEM(delays, i, d);
        if (first == NULL) {
            first = last = sent;
        } else {
            int lt = PyObject_RichCompareBool(sent, first, Py_LT);
            int gt = lt < 0 ? -1 : PyObject_RichCompareBool(sent, last, Py_GT);
            if (gt < 0)
                goto done;
            if (lt)
                first = sent;
            if (gt)
                last = sent;
        }
        if (uniform && i > 0) {
            int eq = PyObject_RichCompareBool(PyTuple_GET_ITEM(dep, 2), src_a0, Py_EQ);
            if (eq > 0)
                eq = PyObject_RichCompareBool(PyList_GET_ITEM(tss, i), src_b0, Py_EQ);
            if (eq < 0)
                goto done;
            uniform = eq;
        }
    }
    if (uniform) {
        sources = PyTuple_Pack(2, src_a0, src_b0);
    } else {
        sources = PyList_New(n);
        for (Py_ssize_t i = 0; sources != NULL && i < n; i++) {
            PyObject *pair = PyTuple_Pack(2, PyTuple_GET_ITEM(PyList_GET_ITEM(deps, i), 2),
                                          PyList_GET_ITEM(tss, i));
            if (pair == NULL)
                Py_CLEAR(sources);
            else
                PyList_SET_ITEM(sources, i, pair);
        }
    }
    if (sources == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++)
        if (PyObject_DelItem(departures, PyList_GET_ITEM(fps, i)) < 0)
            goto done;
    out = PyTuple_Pack(5, a, delays, first, last, sources);
done:
    Py_DECREF(deps);  /* holds a (and first, last) until the tuple holds them */
    Py_XDECREF(delays);
    Py_XDECREF(sources);
    return out;
}

static PyObject *bulk(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 14) {
        PyErr_SetString(PyExc_TypeError, "bulk() takes 14 arguments");
        return NULL;
    }
    PyObject *departures = args[0], *arrivals = args[1], *type = args[3], *host = args[4];
    Py_ssize_t max_frames = PyLong_AsSsize_t(args[2]);
    if (max_frames == -1 && PyErr_Occurred())
        return NULL;
    if (!PyDict_Check(departures) || !PyDict_Check(arrivals) || !PyType_Check(type)
            || !PyType_IsSubtype((PyTypeObject *)type, &PyTuple_Type)
            || ((PyTypeObject *)type)->tp_basicsize != PyTuple_Type.tp_basicsize
            || ((PyTypeObject *)type)->tp_itemsize != PyTuple_Type.tp_itemsize) {
        PyErr_SetString(PyExc_TypeError, "bulk(): departures and arrivals must be dicts, the "
                        "departure type a tuple subclass without storage of its own");
        return NULL;
    }
    PyObject *const *cols = args + 5;  /* fps ts ts_src dir src dst l4 */
    for (int c = 0; c < 7; c++)
        if (!PyList_CheckExact(cols[c]))
            Py_RETURN_NONE;
    PyObject *fps = cols[0], *ts = cols[1], *tss = cols[2], *dir = cols[3];
    Py_ssize_t n = PyList_GET_SIZE(fps);
    if (n == 0)
        Py_RETURN_NONE;
    for (int c = 1; c < 7; c++)
        if (PyList_GET_SIZE(cols[c]) != n)
            Py_RETURN_NONE;
    if (!exact_int_list(fps, n) || !exact_int_list(ts, n) || !exact_int_list(tss, n))
        Py_RETURN_NONE;  /* a frame without a key, or a stamp that is no int: the loop's */
    PyObject *unique = PySet_New(fps);
    if (unique == NULL)
        return NULL;
    Py_ssize_t distinct = PySet_GET_SIZE(unique);
    Py_DECREF(unique);
    if (distinct < n)
        Py_RETURN_NONE;
    int eq = all_equal(cols[4], n);
    if (eq > 0)
        eq = all_equal(cols[5], n);
    if (eq <= 0)
        return eq < 0 ? NULL : Py_NewRef(Py_None);
    if (all_int_is(dir, n, 4))
        return depart(departures, arrivals, max_frames, (PyTypeObject *)type, host, fps, ts,
                      tss, cols[6], args[12], args[13], n);
    if (all_int_is(dir, n, 0))
        return arrive(departures, host, fps, ts, tss, n);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"fingerprints", fingerprints, METH_VARARGS,
     "fingerprints(src, dst, l4, sport, dport, ip_id, tcp_seq, head) -> the keys of a frame "
     "batch's columns (fingerprint.py), or None: the batch is the Python path's."},
    {"bulk", (PyCFunction)(void (*)(void))bulk, METH_FASTCALL,
     "bulk(departures, arrivals, max_frames, Departure, host, fps, ts, ts_src, dir, src, dst, "
     "l4, src_text, dst_text) -> None, True or (sender, delays, first, last, sources): a frame "
     "batch matched whole, as paths.PathLoss._bulk does (None: nothing done)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "netevents.consumers.correlate._cfinger",
    "Frame fingerprints of a batch's columns, and a batch's frames matched whole, in one call "
    "each (netevents/consumers/correlate/fingerprint.py, paths.py).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__cfinger(void) { return PyModule_Create(&module); }

/* netevents.bus._cnats: the messages at the front of a NATS client's read buffer, in one call.
 *
 * nats-py's protocol parser (nats/protocol/parser.py) matches a regular expression per message,
 * copies the buffer's bytes twice and awaits a coroutine for each: at a fleet's rate of small
 * batches that was a tenth of a correlator's time and a sixth of a fleet view's. scan() reads
 * every complete MSG and HMSG at the front of the buffer (the protocol as the server writes it,
 * https://docs.nats.io/reference/reference-protocols/nats-protocol) and returns them as the
 * arguments nats-py's Client._process_msg takes; it stops at anything else (PING, INFO, -ERR, a
 * message not complete yet, a malformed line), which the caller hands to nats-py's own parser
 * (netevents/bus/inbound.py). Every read is bounds-checked; nothing is kept between calls.
 *
 *   scan(buf) -> (consumed, [(sid, subject, reply, payload, headers or None), ...], stop)
 *   stop: 0 the buffer ends (or a message is incomplete) at consumed; 1 another operation
 *         starts there; 2 a MSG/HMSG line there is malformed.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define MAX_CONTROL_LINE 4096   /* nats-py's MAX_CONTROL_LINE_SIZE, the server's default */
#define MAX_ARGS 6
#define MAX_DIGITS 18           /* sizes and sids well inside int64 */

static int is_space(unsigned char c) { return c == ' ' || c == '\t'; }

/* A run of decimal digits as a number, or -1. */
static long long number(const unsigned char *p, Py_ssize_t n) {
    if (n <= 0 || n > MAX_DIGITS)
        return -1;
    long long v = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

static PyObject *scan(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *buf = (const unsigned char *)view.buf;
    Py_ssize_t len = view.len, pos = 0;
    int stop = 0;
    PyObject *items = PyList_New(0);
    if (items == NULL)
        goto fail;
    while (pos < len) {
        const unsigned char *p = buf + pos;
        Py_ssize_t avail = len - pos, skip;
        int headers;
        if (avail >= 4 && memcmp(p, "MSG", 3) == 0 && is_space(p[3])) {
            headers = 0;
            skip = 3;
        } else if (avail >= 5 && memcmp(p, "HMSG", 4) == 0 && is_space(p[4])) {
            headers = 1;
            skip = 4;
        } else {
            if (avail < 5 && (memcmp(p, "HMSG", avail < 4 ? avail : 4) == 0
                              || memcmp(p, "MSG", avail < 3 ? avail : 3) == 0))
                break;          /* the start of a message op, cut by the read: wait */
            stop = 1;
            break;
        }
        Py_ssize_t limit = avail < MAX_CONTROL_LINE ? avail : MAX_CONTROL_LINE;
        const unsigned char *cr = NULL;
        for (Py_ssize_t i = skip; i + 1 < limit; i++) {
            if (p[i] == '\r' && p[i + 1] == '\n') {
                cr = p + i;
                break;
            }
        }
        if (cr == NULL) {
            if (avail >= MAX_CONTROL_LINE)
                stop = 2;       /* no line end within the longest control line */
            break;
        }
        /* the arguments, separated by spaces or tabs */
        const unsigned char *arg_p[MAX_ARGS];
        Py_ssize_t arg_n[MAX_ARGS];
        int nargs = 0;
        const unsigned char *q = p + skip;
        while (q < cr) {
            while (q < cr && is_space(*q))
                q++;
            if (q >= cr)
                break;
            const unsigned char *start = q;
            while (q < cr && !is_space(*q))
                q++;
            if (nargs == MAX_ARGS) {
                nargs = -1;
                break;
            }
            arg_p[nargs] = start;
            arg_n[nargs++] = q - start;
        }
        /* MSG subject sid [reply] size; HMSG subject sid [reply] header_size total_size */
        int base = 3 + headers;
        if (nargs != base && nargs != base + 1) {
            stop = 2;
            break;
        }
        int has_reply = nargs == base + 1;
        long long sid = number(arg_p[1], arg_n[1]);
        long long total = number(arg_p[nargs - 1], arg_n[nargs - 1]);
        long long hsize = headers ? number(arg_p[nargs - 2], arg_n[nargs - 2]) : 0;
        if (sid < 0 || total < 0 || hsize < 0 || hsize > total) {
            stop = 2;
            break;
        }
        Py_ssize_t body = (cr + 2) - buf;
        if ((long long)(len - body) < total + 2)
            break;              /* the payload has not all come: wait */
        PyObject *o_sid = PyLong_FromLongLong(sid);
        PyObject *o_subject = PyBytes_FromStringAndSize((const char *)arg_p[0], arg_n[0]);
        PyObject *o_reply = has_reply
            ? PyBytes_FromStringAndSize((const char *)arg_p[2], arg_n[2])
            : PyBytes_FromStringAndSize(NULL, 0);
        PyObject *o_payload = PyBytes_FromStringAndSize((const char *)buf + body + hsize,
                                                        (Py_ssize_t)(total - hsize));
        PyObject *o_headers;
        if (headers) {
            o_headers = PyBytes_FromStringAndSize((const char *)buf + body, (Py_ssize_t)hsize);
        } else {
            o_headers = Py_None;
            Py_INCREF(o_headers);
        }
        PyObject *item = NULL;
        if (o_sid && o_subject && o_reply && o_payload && o_headers)
            item = PyTuple_Pack(5, o_sid, o_subject, o_reply, o_payload, o_headers);
        Py_XDECREF(o_sid);
        Py_XDECREF(o_subject);
        Py_XDECREF(o_reply);
        Py_XDECREF(o_payload);
        Py_XDECREF(o_headers);
        if (item == NULL)
            goto fail;
        int err = PyList_Append(items, item);
        Py_DECREF(item);
        if (err < 0)
            goto fail;
        pos = body + (Py_ssize_t)total + 2;
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(nNi)", pos, items, stop);
fail:
    Py_XDECREF(items);
    PyBuffer_Release(&view);
    return NULL;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_O,
     "scan(buf) -> (consumed, [(sid, subject, reply, payload, headers)], stop): the complete "
     "MSG/HMSG messages at the front of buf; stop 0: end or incomplete, 1: another operation, "
     "2: a malformed message line."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "netevents.bus._cnats",
    "The complete NATS messages at the front of a read buffer (netevents/bus/inbound.py).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__cnats(void) { return PyModule_Create(&module); }

/* One span -> its OTLP protobuf bytes (a Span message framed as ScopeSpans.spans), in C.

   The compiled twin of gateway/otlp.py's SpanEncoder.span for the spans gateway/spans.py makes: the same
   bytes (tests/unit/test_otlp_native.py compares them), at a small fraction of the instructions. It only
   takes the usual case and answers None for anything else, which the Python encoder then encodes: a span
   whose attributes are not a plain dict, a trace state, events or links, an attribute value that is not a
   str, bool, int (64-bit), float, or a tuple/list of those, a name or key that is not a str.

   Wire format: opentelemetry-proto trace.proto (Span) and common.proto (KeyValue, AnyValue, ArrayValue). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* set by configure(): compared by identity, as the Python encoder does */
static PyObject *default_state;  /* opentelemetry.trace.span.DEFAULT_TRACE_STATE */
static PyObject *kinds[5];       /* SpanKind members in OTLP order (INTERNAL, SERVER, CLIENT, PRODUCER, CONSUMER) */
static PyObject *codes[3];       /* StatusCode UNSET, OK, ERROR */

static PyObject *s_context, *s_parent, *s_name, *s_kind, *s_start, *s_end, *s_attributes, *s_events, *s_links,
    *s_status, *s_status_code, *s_description;

#define FALLBACK 1 /* not a case handled here: return None */

typedef struct {
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
    char small[1024];
} Buf;

static int reserve(Buf *b, Py_ssize_t extra) {
    if (b->len + extra <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap * 2;
    while (cap < b->len + extra)
        cap *= 2;
    char *p;
    if (b->data == b->small) {
        p = PyMem_Malloc(cap);
        if (p != NULL)
            memcpy(p, b->data, b->len);
    } else {
        p = PyMem_Realloc(b->data, cap);
    }
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = p;
    b->cap = cap;
    return 0;
}

static int varint_len(uint64_t v) {
    int n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* callers reserve first: at most 10 bytes */
static void put_varint(Buf *b, uint64_t v) {
    while (v >= 0x80) {
        b->data[b->len++] = (char)((v & 0x7F) | 0x80);
        v >>= 7;
    }
    b->data[b->len++] = (char)v;
}

static void put_byte(Buf *b, unsigned char c) { b->data[b->len++] = (char)c; }

static void put_bytes(Buf *b, const char *p, Py_ssize_t n) {
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void put_le64(Buf *b, uint64_t v) {
    for (int i = 0; i < 8; i++)
        b->data[b->len++] = (char)((v >> (8 * i)) & 0xFF);
}

/* a tag, a length and the bytes */
static int put_field(Buf *b, unsigned char tag, const char *p, Py_ssize_t n) {
    if (reserve(b, 1 + 10 + n) < 0)
        return -1;
    put_byte(b, tag);
    put_varint(b, (uint64_t)n);
    put_bytes(b, p, n);
    return 0;
}

/* an int as `n` bytes, big-endian (trace and span ids), or FALLBACK */
static int be_bytes(PyObject *v, unsigned char *out, size_t n) {
    if (!PyLong_CheckExact(v))
        return FALLBACK;
#if PY_VERSION_HEX >= 0x030D0000
    if (_PyLong_AsByteArray((PyLongObject *)v, out, n, 0, 0, 1) < 0)
#else
    if (_PyLong_AsByteArray((PyLongObject *)v, out, n, 0, 0) < 0)
#endif
    {
        PyErr_Clear();
        return FALLBACK;
    }
    return 0;
}

/* a str's UTF-8 (cached in the str object), or NULL with no exception left set (the caller falls back) */
static const char *utf8_of(PyObject *text, Py_ssize_t *size) {
    const char *p = PyUnicode_AsUTF8AndSize(text, size);
    if (p == NULL)
        PyErr_Clear();
    return p;
}

/* ---- attribute values (AnyValue) */

typedef struct {
    int type; /* 1 str, 2 bool, 3 int, 4 float */
    const char *text;
    Py_ssize_t size; /* text length */
    uint64_t number; /* bool, int (two's complement) */
    double real;
} Scalar;

static int scalar_of(PyObject *v, Scalar *s) {
    if (PyUnicode_CheckExact(v)) {
        s->type = 1;
        s->text = utf8_of(v, &s->size);
        return s->text == NULL ? FALLBACK : 0;
    }
    if (PyBool_Check(v)) {
        s->type = 2;
        s->number = v == Py_True;
        return 0;
    }
    if (PyLong_CheckExact(v)) {
        int overflow = 0;
        long long n = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow || (n == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return FALLBACK;
        }
        s->type = 3;
        s->number = (uint64_t)n;
        return 0;
    }
    if (PyFloat_CheckExact(v)) {
        s->type = 4;
        s->real = PyFloat_AS_DOUBLE(v);
        return 0;
    }
    return FALLBACK;
}

static Py_ssize_t scalar_len(const Scalar *s) { /* the AnyValue message's length */
    switch (s->type) {
    case 1:
        return 1 + varint_len((uint64_t)s->size) + s->size;
    case 2:
        return 2;
    case 3:
        return 1 + varint_len(s->number);
    default:
        return 9;
    }
}

static void put_scalar(Buf *b, const Scalar *s) { /* reserved by the caller */
    switch (s->type) {
    case 1:
        put_byte(b, 0x0A);
        put_varint(b, (uint64_t)s->size);
        put_bytes(b, s->text, s->size);
        break;
    case 2:
        put_byte(b, 0x10);
        put_byte(b, (unsigned char)s->number);
        break;
    case 3:
        put_byte(b, 0x18);
        put_varint(b, s->number);
        break;
    default: {
        uint64_t bits;
        memcpy(&bits, &s->real, 8);
        put_byte(b, 0x21);
        put_le64(b, bits);
    }
    }
}

/* Span.attributes (field 9): one framed KeyValue per item */
static int put_attributes(Buf *b, PyObject *attributes) {
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(attributes, &pos, &key, &value)) {
        if (!PyUnicode_CheckExact(key))
            return FALLBACK;
        Py_ssize_t klen;
        const char *k = utf8_of(key, &klen);
        if (k == NULL)
            return FALLBACK;
        Scalar one;
        Py_ssize_t any_len;
        PyObject *seq = NULL;
        Py_ssize_t items = 0, array_len = 0;
        if (PyTuple_CheckExact(value) || PyList_CheckExact(value)) {
            seq = value;
            items = PySequence_Fast_GET_SIZE(seq);
            for (Py_ssize_t i = 0; i < items; i++) {
                Scalar item;
                if (scalar_of(PySequence_Fast_GET_ITEM(seq, i), &item))
                    return FALLBACK;
                Py_ssize_t n = scalar_len(&item);
                array_len += 1 + varint_len((uint64_t)n) + n; /* ArrayValue.values (1) */
            }
            any_len = 1 + varint_len((uint64_t)array_len) + array_len; /* AnyValue.array_value (5) */
        } else {
            if (scalar_of(value, &one))
                return FALLBACK;
            any_len = scalar_len(&one);
        }
        Py_ssize_t kv_len = 1 + varint_len((uint64_t)klen) + klen + 1 + varint_len((uint64_t)any_len) + any_len;
        if (reserve(b, 1 + 10 + kv_len) < 0)
            return -1;
        put_byte(b, 0x4A); /* Span.attributes (9) */
        put_varint(b, (uint64_t)kv_len);
        put_byte(b, 0x0A); /* KeyValue.key (1) */
        put_varint(b, (uint64_t)klen);
        put_bytes(b, k, klen);
        put_byte(b, 0x12); /* KeyValue.value (2) */
        put_varint(b, (uint64_t)any_len);
        if (seq == NULL) {
            put_scalar(b, &one);
            continue;
        }
        put_byte(b, 0x2A);
        put_varint(b, (uint64_t)array_len);
        for (Py_ssize_t i = 0; i < items; i++) {
            Scalar item;
            scalar_of(PySequence_Fast_GET_ITEM(seq, i), &item); /* checked above */
            put_byte(b, 0x0A);
            put_varint(b, (uint64_t)scalar_len(&item));
            put_scalar(b, &item);
        }
    }
    return 0;
}

/* Span.status (15) */
static int put_status(Buf *b, PyObject *status) {
    if (status == Py_None)
        return 0;
    PyObject *code = PyObject_GetAttr(status, s_status_code);
    if (code == NULL) {
        PyErr_Clear();
        return FALLBACK;
    }
    int number = -1;
    for (int i = 0; i < 3; i++)
        if (code == codes[i])
            number = i;
    Py_DECREF(code);
    if (number < 0)
        return FALLBACK;
    PyObject *description = PyObject_GetAttr(status, s_description);
    if (description == NULL) {
        PyErr_Clear();
        return FALLBACK;
    }
    const char *text = NULL;
    Py_ssize_t size = 0;
    if (description != Py_None) {
        if (!PyUnicode_CheckExact(description)) {
            Py_DECREF(description);
            return FALLBACK;
        }
        text = utf8_of(description, &size);
        if (text == NULL) {
            Py_DECREF(description);
            return FALLBACK;
        }
    }
    /* Status.message (2) when there is one, then Status.code (3) unless UNSET */
    Py_ssize_t body = (size ? 1 + varint_len((uint64_t)size) + size : 0) + (number ? 2 : 0);
    if (reserve(b, 2 + 10 + body) < 0) {
        Py_DECREF(description);
        return -1;
    }
    put_byte(b, 0x7A);
    put_varint(b, (uint64_t)body);
    if (size) {
        put_byte(b, 0x12);
        put_varint(b, (uint64_t)size);
        put_bytes(b, text, size);
    }
    if (number) {
        put_byte(b, 0x18);
        put_byte(b, (unsigned char)number);
    }
    Py_DECREF(description);
    return 0;
}

/* events or links present (-1: an error, left set) */
static int present(PyObject *obj) {
    if (obj == Py_None || (PyTuple_CheckExact(obj) && PyTuple_GET_SIZE(obj) == 0))
        return 0;
    return PyObject_IsTrue(obj);
}

static uint64_t time_of(PyObject *v, int *bad) {
    if (v == Py_None)
        return 0;
    if (!PyLong_CheckExact(v)) {
        *bad = 1;
        return 0;
    }
    uint64_t t = PyLong_AsUnsignedLongLong(v);
    if (t == (uint64_t)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        *bad = 1;
    }
    return t;
}

/* the span's body into `b`: 0, FALLBACK, or -1 (an exception is set) */
static int encode(PyObject *span, Buf *b) {
    int rc = FALLBACK;
    PyObject *context = NULL, *parent = NULL, *name = NULL, *kind = NULL, *start = NULL, *end = NULL;
    PyObject *attributes = NULL, *events = NULL, *links = NULL, *status = NULL;
    if (!(context = PyObject_GetAttr(span, s_context)) || !(parent = PyObject_GetAttr(span, s_parent)) ||
        !(name = PyObject_GetAttr(span, s_name)) || !(kind = PyObject_GetAttr(span, s_kind)) ||
        !(start = PyObject_GetAttr(span, s_start)) || !(end = PyObject_GetAttr(span, s_end)) ||
        !(attributes = PyObject_GetAttr(span, s_attributes)) || !(events = PyObject_GetAttr(span, s_events)) ||
        !(links = PyObject_GetAttr(span, s_links)) || !(status = PyObject_GetAttr(span, s_status))) {
        PyErr_Clear();
        goto done;
    }
    if (!PyTuple_Check(context))
        goto done;
    if (PyTuple_GET_SIZE(context) < 5 || PyTuple_GET_ITEM(context, 4) != default_state)
        goto done; /* a trace state: the Python encoder writes it */
    if (!PyDict_CheckExact(attributes) || !PyUnicode_CheckExact(name))
        goto done;
    if (present(events) || present(links)) {
        PyErr_Clear();
        goto done;
    }
    int code = -1;
    for (int i = 0; i < 5; i++)
        if (kind == kinds[i])
            code = i + 1;
    if (code < 0)
        goto done;
    int bad = 0;
    uint64_t t0 = time_of(start, &bad), t1 = time_of(end, &bad);
    if (bad)
        goto done;

    unsigned char ids[24];
    if (be_bytes(PyTuple_GET_ITEM(context, 0), ids, 16) || be_bytes(PyTuple_GET_ITEM(context, 1), ids + 16, 8))
        goto done;
    int remote = 0;
    unsigned char parent_id[8];
    if (parent != Py_None) {
        if (!PyTuple_Check(parent) || PyTuple_GET_SIZE(parent) < 3)
            goto done;
        if (be_bytes(PyTuple_GET_ITEM(parent, 1), parent_id, 8))
            goto done;
        remote = PyObject_IsTrue(PyTuple_GET_ITEM(parent, 2));
        if (remote < 0) {
            PyErr_Clear();
            goto done;
        }
    }
    Py_ssize_t name_len;
    const char *name_text = utf8_of(name, &name_len);
    if (name_text == NULL)
        goto done;

    if (reserve(b, 2 + 16 + 2 + 8 + 2 + 8) < 0)
        goto error;
    put_byte(b, 0x0A); /* trace_id (1) */
    put_byte(b, 16);
    put_bytes(b, (const char *)ids, 16);
    put_byte(b, 0x12); /* span_id (2) */
    put_byte(b, 8);
    put_bytes(b, (const char *)ids + 16, 8);
    if (parent != Py_None) {
        put_byte(b, 0x22); /* parent_span_id (4) */
        put_byte(b, 8);
        put_bytes(b, (const char *)parent_id, 8);
    }
    if (put_field(b, 0x2A, name_text, name_len) < 0) /* name (5) */
        goto error;
    if (reserve(b, 2 + 9 + 9) < 0)
        goto error;
    put_byte(b, 0x30); /* kind (6) */
    put_byte(b, (unsigned char)code);
    put_byte(b, 0x39); /* start_time_unix_nano (7) */
    put_le64(b, t0);
    put_byte(b, 0x41); /* end_time_unix_nano (8) */
    put_le64(b, t1);
    int r = put_attributes(b, attributes);
    if (r)
        goto check;
    r = put_status(b, status);
    if (r)
        goto check;
    if (reserve(b, 6) < 0)
        goto error;
    put_byte(b, 0x85); /* flags (16), fixed32: HAS_IS_REMOTE, IS_REMOTE */
    put_byte(b, 0x01);
    put_byte(b, 0x00);
    put_byte(b, remote ? 0x03 : 0x01);
    put_byte(b, 0x00);
    put_byte(b, 0x00);
    rc = 0;
    goto done;
check:
    rc = r;
    goto done;
error:
    rc = -1;
done:
    Py_XDECREF(context);
    Py_XDECREF(parent);
    Py_XDECREF(name);
    Py_XDECREF(kind);
    Py_XDECREF(start);
    Py_XDECREF(end);
    Py_XDECREF(attributes);
    Py_XDECREF(events);
    Py_XDECREF(links);
    Py_XDECREF(status);
    return rc;
}

static PyObject *encode_span(PyObject *module, PyObject *span) {
    (void)module;
    if (default_state == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "configure() first");
        return NULL;
    }
    Buf b;
    b.data = b.small;
    b.len = 0;
    b.cap = sizeof(b.small);
    int rc = encode(span, &b);
    PyObject *out = NULL;
    if (rc == 0) {
        /* ScopeSpans.spans (2): the tag, the length, the body */
        Py_ssize_t n = b.len;
        out = PyBytes_FromStringAndSize(NULL, 1 + varint_len((uint64_t)n) + n);
        if (out != NULL) {
            unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
            *p++ = 0x12;
            uint64_t v = (uint64_t)n;
            while (v >= 0x80) {
                *p++ = (unsigned char)((v & 0x7F) | 0x80);
                v >>= 7;
            }
            *p++ = (unsigned char)v;
            memcpy(p, b.data, n);
        }
    } else if (rc == FALLBACK) {
        out = Py_NewRef(Py_None);
    }
    if (b.data != b.small)
        PyMem_Free(b.data);
    return out;
}

static PyObject *configure(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *state, *kind_seq, *code_seq;
    if (!PyArg_ParseTuple(args, "OO!O!", &state, &PyTuple_Type, &kind_seq, &PyTuple_Type, &code_seq))
        return NULL;
    if (PyTuple_GET_SIZE(kind_seq) != 5 || PyTuple_GET_SIZE(code_seq) != 3) {
        PyErr_SetString(PyExc_ValueError, "5 span kinds and 3 status codes");
        return NULL;
    }
    Py_XSETREF(default_state, Py_NewRef(state));
    for (int i = 0; i < 5; i++)
        Py_XSETREF(kinds[i], Py_NewRef(PyTuple_GET_ITEM(kind_seq, i)));
    for (int i = 0; i < 3; i++)
        Py_XSETREF(codes[i], Py_NewRef(PyTuple_GET_ITEM(code_seq, i)));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"encode_span", encode_span, METH_O,
     "encode_span(span) -> bytes | None: the Span message framed as ScopeSpans.spans, or None (not handled)."},
    {"configure", configure, METH_VARARGS,
     "configure(default_trace_state, span_kinds, status_codes): the objects spans are compared with."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_otlp_span", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__otlp_span(void) {
#define INTERN(var, text)                                                                                      \
    if (!(var = PyUnicode_InternFromString(text)))                                                             \
        return NULL;
    INTERN(s_context, "_context");
    INTERN(s_parent, "_parent");
    INTERN(s_name, "_name");
    INTERN(s_kind, "_kind");
    INTERN(s_start, "_start_time");
    INTERN(s_end, "_end_time");
    INTERN(s_attributes, "_attributes");
    INTERN(s_events, "_events");
    INTERN(s_links, "_links");
    INTERN(s_status, "_status");
    INTERN(s_status_code, "_status_code");
    INTERN(s_description, "_description");
    return PyModule_Create(&module_def);
}

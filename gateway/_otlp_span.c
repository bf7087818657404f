/* One span -> its OTLP protobuf bytes (a Span message framed as ScopeSpans.spans), in C.

   The compiled twin of gateway/otlp.py's SpanEncoder.span for the spans gateway/spans.py makes: the same
   bytes (tests/unit/test_otlp_native.py compares them), at a small fraction of the instructions. It only
   takes the usual case and answers None for anything else, which the Python encoder then encodes: a span
   whose attributes are not a plain dict, a trace state, events or links, an attribute value that is not a
   str, bool, int (64-bit), float, or a tuple/list of those, a name or key that is not a str.

   Wire format: opentelemetry-proto trace.proto (Span) and common.proto (KeyValue, AnyValue, ArrayValue).

   Further down, the C twins of the three steps around it on the request's thread (making a span, ending it,
   queueing its bytes for export): see "a span's end, in C". gateway/spans.py installs them. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

/* set by configure(): compared by identity, as the Python encoder does */
static PyObject *default_state;  /* opentelemetry.trace.span.DEFAULT_TRACE_STATE */
static PyObject *kinds[5];       /* SpanKind members in OTLP order (INTERNAL, SERVER, CLIENT, PRODUCER, CONSUMER) */
static PyObject *codes[3];       /* StatusCode UNSET, OK, ERROR */

static PyObject *unset_status;   /* gateway/spans.py's shared Status(UNSET): an empty Status, known without a look */
static PyTypeObject *span_type;  /* gateway/spans.py's Span: its fields are read from their slots */

static PyObject *s_context, *s_parent, *s_name, *s_kind, *s_start, *s_end, *s_attributes, *s_events, *s_links,
    *s_status, *s_status_code, *s_description;

/* the span fields encode() reads, in this order */
enum { F_CONTEXT, F_PARENT, F_NAME, F_KIND, F_START, F_END, F_ATTRIBUTES, F_EVENTS, F_LINKS, F_STATUS, N_FIELDS };
static PyObject **field_names[N_FIELDS] = {&s_context, &s_parent,     &s_name,   &s_kind,  &s_start,
                                           &s_end,     &s_attributes, &s_events, &s_links, &s_status};
static Py_ssize_t slot_offsets[N_FIELDS]; /* each field's slot in a span_type instance */

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

/* an int in [0, 2**64), or FALLBACK (ids, times) */
static int u64_of(PyObject *v, uint64_t *out) {
    if (!PyLong_CheckExact(v) || _PyLong_Sign(v) < 0 || _PyLong_NumBits(v) > 64)
        return FALLBACK; /* (NumBits fails only for sizes far beyond 64 bits: that is a fallback too) */
    *out = PyLong_AsUnsignedLongLongMask(v); /* no overflow left to check: a loop over its digits */
    return 0;
}

/* a span id, 8 bytes big-endian, or FALLBACK */
static int be64(PyObject *v, unsigned char *out) {
    uint64_t x;
    if (u64_of(v, &x)) {
        PyErr_Clear();
        return FALLBACK;
    }
    for (int i = 7; i >= 0; i--) {
        out[i] = (unsigned char)(x & 0xFF);
        x >>= 8;
    }
    return 0;
}

/* a trace id, 16 bytes big-endian, or FALLBACK; the spans of a request share their trace id's int object, so
   the last one's bytes are kept (with a reference, so that the object cannot be another int later) */
static PyObject *last_trace;
static unsigned char last_trace_bytes[16];

static int trace_bytes(PyObject *v, unsigned char *out) {
    if (v == last_trace) {
        memcpy(out, last_trace_bytes, 16);
        return 0;
    }
    if (be_bytes(v, out, 16))
        return FALLBACK;
    Py_XSETREF(last_trace, Py_NewRef(v));
    memcpy(last_trace_bytes, out, 16);
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
    if (status == unset_status) { /* an empty Status message */
        if (reserve(b, 2) < 0)
            return -1;
        put_byte(b, 0x7A);
        put_byte(b, 0x00);
        return 0;
    }
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
    uint64_t t = 0;
    if (v != Py_None && u64_of(v, &t)) {
        PyErr_Clear();
        *bad = 1;
    }
    return t;
}

/* the span's fields into `f` (new references), read from their slots when it is a span_type; FALLBACK when
   one is missing */
static int fields_of(PyObject *span, PyObject **f) {
    if (Py_TYPE(span) == span_type) {
        for (int i = 0; i < N_FIELDS; i++) {
            PyObject *v = *(PyObject **)((char *)span + slot_offsets[i]);
            if (v == NULL) {
                for (int j = 0; j < i; j++)
                    Py_CLEAR(f[j]);
                return FALLBACK;
            }
            f[i] = Py_NewRef(v);
        }
        return 0;
    }
    for (int i = 0; i < N_FIELDS; i++) {
        f[i] = PyObject_GetAttr(span, *field_names[i]);
        if (f[i] == NULL) {
            PyErr_Clear();
            for (int j = 0; j < i; j++)
                Py_CLEAR(f[j]);
            return FALLBACK;
        }
    }
    return 0;
}

/* the span's body into `b`: 0, FALLBACK, or -1 (an exception is set) */
static int encode(PyObject *span, Buf *b) {
    PyObject *f[N_FIELDS];
    if (fields_of(span, f))
        return FALLBACK;
    int rc = FALLBACK;
    PyObject *context = f[F_CONTEXT], *parent = f[F_PARENT], *name = f[F_NAME], *kind = f[F_KIND];
    PyObject *start = f[F_START], *end = f[F_END], *attributes = f[F_ATTRIBUTES], *events = f[F_EVENTS];
    PyObject *links = f[F_LINKS], *status = f[F_STATUS];
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
    if (trace_bytes(PyTuple_GET_ITEM(context, 0), ids) || be64(PyTuple_GET_ITEM(context, 1), ids + 16))
        goto done;
    int remote = 0;
    unsigned char parent_id[8];
    if (parent != Py_None) {
        if (!PyTuple_Check(parent) || PyTuple_GET_SIZE(parent) < 3)
            goto done;
        if (be64(PyTuple_GET_ITEM(parent, 1), parent_id))
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
    for (int i = 0; i < N_FIELDS; i++)
        Py_DECREF(f[i]);
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

/* ---- a span's end, in C: Span.end and SpanBatcher.take (gateway/spans.py, gateway/span_batch.py)

   The same steps as their Python versions, which stay for a build without this module: the fields are read
   from the classes' slots, and whatever is not the usual case is handed to Python methods (Span._finish:
   the span limits and the processors; SpanBatcher._drop and _other_group: a full queue, another resource). */

#define SLOT(obj, offset) (*(PyObject **)((char *)(obj) + (offset)))

static PyTypeObject *tracing_type, *batcher_type;
static PyObject *time_ns;          /* time.time_ns */
static PyObject *take_function;    /* the `take` below, as SpanBatcher.take binds it */
static PyObject *encode_function;  /* encode_span, called directly when it is the batcher's encoder */
static PyObject *empty_args;
static PyObject *s_head, *s_plain_resource, *s_tracing, *s_resource, *s_scope, *s_finish, *s_max_length,
    *s_max_attributes, *s_take, *s_stopped, *s_encode, *s_queue, *s_max_queue_size, *s_home, *s_batch_size, *s_drop,
    *s_other_group, *s_wake, *s_append, *s_set, *s_starts, *s_started;

enum { S_TRACING, S_RESOURCE, S_HEAD, N_SPAN_MORE };
static PyObject **span_more_names[N_SPAN_MORE] = {&s_tracing, &s_resource, &s_head};
static Py_ssize_t span_more[N_SPAN_MORE];
enum { T_MAX_LENGTH, T_MAX_ATTRIBUTES, T_TAKE, T_RESOURCE, T_STARTS, N_TRACING };
static PyObject **tracing_names[N_TRACING] = {&s_max_length, &s_max_attributes, &s_take, &s_plain_resource,
                                              &s_starts};
static Py_ssize_t tracing_slots[N_TRACING];
enum { B_STOPPED, B_ENCODE, B_QUEUE, B_MAX, B_HOME, B_BATCH, N_BATCHER };
static PyObject **batcher_names[N_BATCHER] = {&s_stopped, &s_encode, &s_queue, &s_max_queue_size, &s_home,
                                              &s_batch_size};
static Py_ssize_t batcher_slots[N_BATCHER];

/* `names`' slot offsets in `type` into `offsets`, or -1 with an exception set */
static int find_slots(PyTypeObject *type, PyObject ***names, Py_ssize_t *offsets, int n) {
    for (int i = 0; i < n; i++) {
        PyObject *descr = _PyType_Lookup(type, *names[i]); /* borrowed */
        if (descr == NULL || Py_TYPE(descr) != &PyMemberDescr_Type ||
            ((PyMemberDescrObject *)descr)->d_member->type != T_OBJECT_EX) {
            PyErr_Format(PyExc_TypeError, "%s.%U is not a slot", type->tp_name, *names[i]);
            return -1;
        }
        offsets[i] = ((PyMemberDescrObject *)descr)->d_member->offset;
    }
    return 0;
}

/* every slot in `offsets` is set (a slot never assigned reads NULL) */
static int all_set(PyObject *obj, Py_ssize_t *offsets, int n) {
    for (int i = 0; i < n; i++)
        if (SLOT(obj, offsets[i]) == NULL) {
            PyErr_Format(PyExc_AttributeError, "a %s without its fields", Py_TYPE(obj)->tp_name);
            return 0;
        }
    return 1;
}

/* `span` is a span_type (exactly: a subclass may do things its own way) with its fields set; else 0 with an
   exception set */
static int span_fields_set(PyObject *span) {
    if (span_type == NULL || Py_TYPE(span) != span_type) {
        PyErr_SetString(PyExc_TypeError, "a gateway.spans.Span");
        return 0;
    }
    return all_set(span, slot_offsets, N_FIELDS) && all_set(span, span_more, N_SPAN_MORE);
}

/* SpanBatcher.take: 1 taken (queued, or dropped as on_end drops), 0 not encodable here, -1 an error. The
   caller has checked that `span` is a span_type with its fields set (take() and end() below) */
static int take_span(PyObject *batcher, PyObject *span) {
    if (batcher_type == NULL || !PyObject_TypeCheck(batcher, batcher_type)) {
        PyErr_SetString(PyExc_TypeError, "take(span): a SpanBatcher");
        return -1;
    }
    if (!all_set(batcher, batcher_slots, N_BATCHER))
        return -1;
    int stopped = PyObject_IsTrue(SLOT(batcher, batcher_slots[B_STOPPED]));
    if (stopped)
        return stopped < 0 ? -1 : 1;
    PyObject *context = SLOT(span, slot_offsets[F_CONTEXT]);
    if (!PyTuple_Check(context) || PyTuple_GET_SIZE(context) < 4) {
        PyErr_SetString(PyExc_TypeError, "a span context is a tuple");
        return -1;
    }
    long flags = PyLong_AsLong(PyTuple_GET_ITEM(context, 3));
    if (flags == -1 && PyErr_Occurred())
        return -1;
    if (!(flags & 1)) /* not sampled */
        return 1;
    PyObject *encoder = SLOT(batcher, batcher_slots[B_ENCODE]);
    PyObject *data = encoder == encode_function ? encode_span(NULL, span) : PyObject_CallOneArg(encoder, span);
    if (data == NULL)
        return -1;
    if (data == Py_None) {
        Py_DECREF(data);
        return 0;
    }
    PyObject *queue = SLOT(batcher, batcher_slots[B_QUEUE]);
    Py_ssize_t queued = PyObject_Size(queue);
    Py_ssize_t most = PyLong_AsSsize_t(SLOT(batcher, batcher_slots[B_MAX]));
    Py_ssize_t batch = PyLong_AsSsize_t(SLOT(batcher, batcher_slots[B_BATCH]));
    if (queued < 0 || ((most == -1 || batch == -1) && PyErr_Occurred())) {
        Py_DECREF(data);
        return -1;
    }
    PyObject *result;
    if (queued >= most) {
        Py_DECREF(data);
        result = PyObject_CallMethodNoArgs(batcher, s_drop);
        Py_XDECREF(result);
        return result == NULL ? -1 : 1;
    }
    PyObject *home = SLOT(batcher, batcher_slots[B_HOME]);
    PyObject *scope = _PyType_Lookup(span_type, s_scope); /* a class attribute */
    if (!PyTuple_CheckExact(home) || PyTuple_GET_SIZE(home) != 2 ||
        PyTuple_GET_ITEM(home, 0) != SLOT(span, span_more[S_RESOURCE]) || PyTuple_GET_ITEM(home, 1) != scope) {
        Py_SETREF(data, PyObject_CallMethodObjArgs(batcher, s_other_group, span, data, NULL));
        if (data == NULL)
            return -1;
    }
    result = PyObject_CallMethodOneArg(queue, s_append, data);
    Py_DECREF(data);
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    if (queued + 1 == batch) {
        PyObject *wake = PyObject_GetAttr(batcher, s_wake);
        if (wake == NULL)
            return -1;
        result = PyObject_CallMethodNoArgs(wake, s_set);
        Py_DECREF(wake);
        if (result == NULL)
            return -1;
        Py_DECREF(result);
    }
    return 1;
}

static PyObject *take(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "take(batcher, span)");
        return NULL;
    }
    if (!span_fields_set(args[1]))
        return NULL;
    int r = take_span(args[0], args[1]);
    return r < 0 ? NULL : Py_NewRef(r ? Py_True : Py_False);
}

/* Span.end(end_time=None) */
static PyObject *end(PyObject *module, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    (void)module;
    PyObject *end_time = nargs == 2 ? args[1] : NULL;
    Py_ssize_t named = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (named == 1 && nargs == 1 && PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "end_time") == 0)
        end_time = args[1];
    else if (named || nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "end(span, end_time=None)");
        return NULL;
    }
    PyObject *span = args[0];
    if (!span_fields_set(span))
        return NULL;
    if (SLOT(span, slot_offsets[F_END]) != Py_None)
        Py_RETURN_NONE;
    PyObject *stamp;
    int given = end_time != NULL ? PyObject_IsTrue(end_time) : 0; /* `end_time or time_ns()`, as in Python */
    if (given < 0)
        return NULL;
    stamp = given ? Py_NewRef(end_time) : PyObject_CallNoArgs(time_ns);
    if (stamp == NULL)
        return NULL;
    Py_SETREF(SLOT(span, slot_offsets[F_END]), stamp);
    PyObject *tracing = SLOT(span, span_more[S_TRACING]);
    PyObject *attributes = SLOT(span, slot_offsets[F_ATTRIBUTES]);
    if (Py_TYPE(tracing) == tracing_type && all_set(tracing, tracing_slots, N_TRACING) &&
        SLOT(tracing, tracing_slots[T_MAX_LENGTH]) == Py_None && PyDict_CheckExact(attributes)) {
        PyObject *taker = SLOT(tracing, tracing_slots[T_TAKE]);
        Py_ssize_t most = PyLong_AsSsize_t(SLOT(tracing, tracing_slots[T_MAX_ATTRIBUTES]));
        if (most == -1 && PyErr_Occurred())
            return NULL;
        if (taker != Py_None && PyDict_GET_SIZE(attributes) <= most) {
            int r;
            if (PyMethod_Check(taker) && PyMethod_GET_FUNCTION(taker) == take_function) {
                r = take_span(PyMethod_GET_SELF(taker), span); /* SpanBatcher.take: no call in between */
            } else {
                PyObject *answer = PyObject_CallOneArg(taker, span);
                r = answer == NULL ? -1 : PyObject_IsTrue(answer);
                Py_XDECREF(answer);
            }
            if (r < 0)
                return NULL;
            if (r)
                Py_RETURN_NONE;
        }
    } else if (PyErr_Occurred()) {
        return NULL;
    }
    return PyObject_CallMethodNoArgs(span, s_finish);
}

/* Span(tracing, name, kind, context, parent, attributes, start_time): Span.__init__'s steps, in C */
static PyObject *new_span(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "new_span(tracing, name, kind, context, parent, attributes, start_time)");
        return NULL;
    }
    PyObject *tracing = args[0], *attributes = args[5], *start = args[6];
    if (span_type == NULL || Py_TYPE(tracing) != tracing_type || !PyDict_CheckExact(attributes)) {
        PyErr_SetString(PyExc_TypeError, "new_span: a Tracing and a dict of attributes");
        return NULL;
    }
    if (!all_set(tracing, tracing_slots, N_TRACING))
        return NULL;
    int given = PyObject_IsTrue(start); /* `start_time or time_ns()` */
    if (given < 0)
        return NULL;
    PyObject *stamp = given ? Py_NewRef(start) : PyObject_CallNoArgs(time_ns);
    if (stamp == NULL)
        return NULL;
    PyObject *head = PyLong_FromSsize_t(PyDict_GET_SIZE(attributes));
    PyObject *span = head == NULL ? NULL : span_type->tp_new(span_type, empty_args, NULL);
    if (span == NULL) {
        Py_DECREF(stamp);
        Py_XDECREF(head);
        return NULL;
    }
#define SET(offset, value) Py_XSETREF(SLOT(span, offset), value)
    SET(span_more[S_TRACING], Py_NewRef(tracing));
    SET(slot_offsets[F_NAME], Py_NewRef(args[1]));
    SET(slot_offsets[F_KIND], Py_NewRef(args[2]));
    SET(slot_offsets[F_CONTEXT], Py_NewRef(args[3]));
    SET(slot_offsets[F_PARENT], Py_NewRef(args[4]));
    SET(slot_offsets[F_ATTRIBUTES], Py_NewRef(attributes));
    SET(span_more[S_HEAD], head);
    SET(span_more[S_RESOURCE], Py_NewRef(SLOT(tracing, tracing_slots[T_RESOURCE])));
    SET(slot_offsets[F_START], stamp);
    SET(slot_offsets[F_END], Py_NewRef(Py_None));
    SET(slot_offsets[F_EVENTS], Py_NewRef(empty_args));
    SET(slot_offsets[F_LINKS], Py_NewRef(empty_args));
    SET(slot_offsets[F_STATUS], Py_NewRef(unset_status));
#undef SET
    int starts = PyObject_IsTrue(SLOT(tracing, tracing_slots[T_STARTS])); /* processors with an on_start */
    PyObject *done = starts > 0 ? PyObject_CallMethodOneArg(tracing, s_started, span) : NULL;
    if (starts < 0 || (starts > 0 && done == NULL)) {
        Py_DECREF(span);
        return NULL;
    }
    Py_XDECREF(done);
    return span;
}

static PyObject *configure_spans(PyObject *module, PyObject *args) {
    PyObject *unset, *clock;
    PyTypeObject *span, *tracing, *batcher;
    if (!PyArg_ParseTuple(args, "O!OO!O!O", &PyType_Type, &span, &unset, &PyType_Type, &tracing, &PyType_Type,
                          &batcher, &clock))
        return NULL;
    if (find_slots(span, field_names, slot_offsets, N_FIELDS) < 0 ||
        find_slots(span, span_more_names, span_more, N_SPAN_MORE) < 0 ||
        find_slots(tracing, tracing_names, tracing_slots, N_TRACING) < 0 ||
        find_slots(batcher, batcher_names, batcher_slots, N_BATCHER) < 0)
        return NULL;
    if (take_function == NULL && !(take_function = PyObject_GetAttrString(module, "take")))
        return NULL;
    if (encode_function == NULL && !(encode_function = PyObject_GetAttrString(module, "encode_span")))
        return NULL;
    Py_XSETREF(span_type, (PyTypeObject *)Py_NewRef(span));
    Py_XSETREF(unset_status, Py_NewRef(unset));
    Py_XSETREF(tracing_type, (PyTypeObject *)Py_NewRef(tracing));
    Py_XSETREF(batcher_type, (PyTypeObject *)Py_NewRef(batcher));
    Py_XSETREF(time_ns, Py_NewRef(clock));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"encode_span", encode_span, METH_O,
     "encode_span(span) -> bytes | None: the Span message framed as ScopeSpans.spans, or None (not handled)."},
    {"configure", configure, METH_VARARGS,
     "configure(default_trace_state, span_kinds, status_codes): the objects spans are compared with."},
    {"configure_spans", configure_spans, METH_VARARGS,
     "configure_spans(Span, unset_status, Tracing, SpanBatcher, time_ns): the classes whose fields are read from "
     "their slots, the shared Status(UNSET) and the clock."},
    {"take", (PyCFunction)(void (*)(void))take, METH_FASTCALL,
     "take(batcher, span) -> bool: SpanBatcher.take (see gateway/span_batch.py)."},
    {"new_span", (PyCFunction)(void (*)(void))new_span, METH_FASTCALL,
     "new_span(tracing, name, kind, context, parent, attributes, start_time) -> Span: Span(...) without its "
     "__init__ (see gateway/spans.py)."},
    {"end", (PyCFunction)(void (*)(void))end, METH_FASTCALL | METH_KEYWORDS,
     "end(span, end_time=None): Span.end (see gateway/spans.py)."},
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
    INTERN(s_tracing, "_tracing");
    INTERN(s_head, "_head");
    INTERN(s_plain_resource, "resource");
    INTERN(s_resource, "_resource");
    INTERN(s_scope, "_instrumentation_scope");
    INTERN(s_finish, "_finish");
    INTERN(s_max_length, "max_length");
    INTERN(s_max_attributes, "max_attributes");
    INTERN(s_take, "take");
    INTERN(s_stopped, "_stopped");
    INTERN(s_encode, "encode");
    INTERN(s_queue, "_queue");
    INTERN(s_max_queue_size, "max_queue_size");
    INTERN(s_home, "_home");
    INTERN(s_batch_size, "batch_size");
    INTERN(s_drop, "_drop");
    INTERN(s_other_group, "_other_group");
    INTERN(s_wake, "_wake");
    INTERN(s_append, "append");
    INTERN(s_set, "set");
    INTERN(s_starts, "starts");
    INTERN(s_started, "_started");
    if (!(empty_args = PyTuple_New(0)))
        return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL)
        return NULL;
    /* Span.end and SpanBatcher.take as methods: a builtin function does not bind to an instance, these do */
    const char *names[2][2] = {{"end", "end_method"}, {"take", "take_method"}};
    for (int i = 0; i < 2; i++) {
        PyObject *function = PyObject_GetAttrString(module, names[i][0]);
        PyObject *method = function == NULL ? NULL : PyInstanceMethod_New(function);
        Py_XDECREF(function);
        if (method == NULL || PyModule_AddObject(module, names[i][1], method) < 0) {
            Py_XDECREF(method);
            Py_DECREF(module);
            return NULL;
        }
    }
    return module;
}

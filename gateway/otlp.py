"""OTLP/HTTP span export with a fast protobuf encoder.

The SDK's exporter builds a protobuf object tree for every span (about 40 µs a span here), on the same
core as the requests. This encoder writes the same `ExportTraceServiceRequest` wire format directly
(opentelemetry-proto's trace.proto / common.proto), caching the bytes of attributes that repeat from
span to span (route, deployment, model, policy version...), at a few µs a span. The transport,
endpoint, headers, timeout, compression and TLS settings stay the SDK exporter's (OTEL_EXPORTER_OTLP_*).

Tests decode what this encoder writes with opentelemetry-proto and compare it with the SDK encoder's.
"""

import collections
import logging
import struct
from collections.abc import Iterable, Mapping, Sequence
from itertools import islice
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.span import DEFAULT_TRACE_STATE

from gateway.spans import COMPILED

log = logging.getLogger("escalade.otlp")

_DOUBLE = struct.Struct("<d")
_ZERO8 = bytes(8)
_FIXED64 = struct.Struct("<Q")
_FIXED32 = struct.Struct("<I")
_TIMES = struct.Struct("<BQBQ")
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200
_FLAGS_LOCAL = b"\x85\x01" + _FIXED32.pack(_HAS_IS_REMOTE)  # Span.flags (16, fixed32)
_FLAGS_REMOTE = b"\x85\x01" + _FIXED32.pack(_HAS_IS_REMOTE | _IS_REMOTE)
_KINDS = {id(kind): b"\x30" + bytes((kind.value + 1,)) for kind in SpanKind}  # Span.kind: OTLP counts from INTERNAL=1
_STATUS_CODES = {  # Status.code (3) inside Span.status (15); UNSET is the empty Status
    StatusCode.UNSET: b"",
    StatusCode.OK: b"\x18\x01",
    StatusCode.ERROR: b"\x18\x02",
}
_STATUSES = {body: b"\x7a" + bytes((len(body),)) + body for body in _STATUS_CODES.values()}  # Span.status, no message
_STATUS_BY_ID = {id(code): _STATUSES[body] for code, body in _STATUS_CODES.items()}


_SMALL = [bytes((n,)) for n in range(128)]


def _native_encoder() -> Any:
    """The compiled `encode_span` (gateway/_otlp_span.c, built by `pip install` when a C compiler is there),
    or None: not built, or ESCALADE_OTLP_NATIVE=0 (same bytes either way; the switch is for comparing)."""
    if COMPILED is None:
        return None
    COMPILED.configure(DEFAULT_TRACE_STATE, tuple(SpanKind), (StatusCode.UNSET, StatusCode.OK, StatusCode.ERROR))
    return COMPILED.encode_span


_encode_native = _native_encoder()


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _SMALL[value]
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _bytes_field(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _str_field(field: int, text: str) -> bytes:
    return _bytes_field(field, text.encode("utf-8"))


def any_value(value: Any) -> bytes:
    """An AnyValue message's bytes (one member of its oneof, always written)."""
    if isinstance(value, bool):
        return _key(2, 0) + (b"\x01" if value else b"\x00")
    if isinstance(value, str):
        return _str_field(1, value)
    if isinstance(value, int):
        return _key(3, 0) + _varint(value)
    if isinstance(value, float):
        return _key(4, 1) + _DOUBLE.pack(value)
    if isinstance(value, bytes):
        return _bytes_field(7, value)
    if isinstance(value, Sequence):
        return _bytes_field(5, b"".join(_bytes_field(1, any_value(v)) for v in value))
    if isinstance(value, Mapping):
        return _bytes_field(6, b"".join(_bytes_field(1, key_value(str(k), v)) for k, v in value.items()))
    if value is None:
        return b""
    raise TypeError(f"cannot encode a {type(value).__name__} attribute")


def key_value(key: str, value: Any) -> bytes:
    return _str_field(1, key) + _bytes_field(2, any_value(value))


def _own_attributes(span: ReadableSpan) -> Mapping[str, Any] | None:
    """The span's attributes as a plain dict when the span keeps one (gateway/spans.py's spans hand over their
    dict; the SDK's own spans a BoundedAttributes whose public view is a proxy iterating in Python)."""
    attributes = getattr(span, "_attributes", None)
    if type(attributes) is dict:
        return attributes
    inner = getattr(attributes, "_dict", None)
    return inner if isinstance(inner, dict) else span.attributes


def _framed(tag: bytes, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return tag + _SMALL[n] + body
    if n < 0x4000:
        return tag + bytes((n & 0x7F | 0x80, n >> 7)) + body
    return tag + _varint(n) + body


def _repeated(parts: list[bytes], field: int, messages: Iterable[bytes], dropped_field: int, dropped: int) -> None:
    """A repeated message `field`, then its dropped count (a varint `dropped_field`) when any was dropped."""
    parts.extend(_bytes_field(field, message) for message in messages)
    if dropped:
        parts.append(_key(dropped_field, 0) + _varint(dropped))


_Groups = dict[tuple[int, int], tuple[Any, Any, list[bytes]]]
"""(id(resource), id(scope)) -> (resource, scope, Span messages): by identity, as a Resource hashes slowly."""


def _group(groups: _Groups, resource: Any, scope: Any) -> list[bytes]:
    """The Span messages of `resource` and `scope` in `groups` (a new group when there is none yet)."""
    group = groups.get((id(resource), id(scope)))
    if group is None:
        group = groups[(id(resource), id(scope))] = (resource, scope, [])
    return group[2]


class SpanEncoder:
    """ReadableSpans -> ExportTraceServiceRequest bytes. Not thread-safe: one per exporter (the batch
    processor exports from one thread).

    Most of a span's bytes repeat from span to span: attribute keys, text values (route, deployment, model,
    policy version...), flags, span names, the resource and the scope. Those are encoded once and cached;
    what is new per span is ids, times and numbers.
    """

    def __init__(self, cache_size: int = 4096, *, native: bool = True) -> None:
        # field -> key -> value -> the whole framed KeyValue; texts (and tuples of texts) apart from ints, as
        # a flag or a float equal to an int (True == 1 == 1.0) must not find the int's bytes
        self._texts: collections.defaultdict[int, dict[str, dict[Any, bytes]]] = collections.defaultdict(dict)
        self._ints: collections.defaultdict[int, dict[str, dict[int, bytes]]] = collections.defaultdict(dict)
        self._floats: collections.defaultdict[int, dict[str, bytes]] = collections.defaultdict(dict)
        self._cached = 0
        self._flags: dict[tuple[int, str, bool], bytes] = {}
        self._heads: dict[tuple[tuple[str, ...], tuple[Any, ...]], bytes] = {}
        self._keys: dict[str, bytes] = {}
        """key -> KeyValue.key (field 1) with its tag and length."""
        self._names: dict[str, bytes] = {}
        self._blocks: dict[int, tuple[Any, bytes]] = {}
        """id(resource or scope) -> (it, its encoded message): both live as long as their provider/tracer."""
        self._cache_size = cache_size
        self.native = _encode_native if native else None

    def _key_bytes(self, key: str) -> bytes:
        name = self._keys.get(key)
        if name is None:
            name = _str_field(1, key)
            if len(self._keys) < self._cache_size:
                self._keys[key] = name
        return name

    def attributes(self, field: int, attributes: Mapping[str, Any] | None) -> bytes:
        """Repeated KeyValue `field`."""
        if not attributes:
            return b""
        return self._pairs(field, attributes.items())

    def _span_attributes(self, attributes: dict[str, Any], head: int) -> bytes:
        """Span.attributes (9). The first `head` pairs are those the span started with (gateway/spans.py
        records how many): for an attempt they are the same for every request to a deployment, so their
        bytes are cached as one block, found with one lookup. (Values compare by equality, so 1 and True
        would share an entry: an attribute keeps one type, as the semantic conventions define it.)"""
        if head < 2 or len(attributes) < head:
            return self._pairs(9, attributes.items())
        first = (tuple(islice(attributes, head)), tuple(islice(attributes.values(), head)))  # 3 objects, not head + 1
        try:
            block = self._heads.get(first)
        except TypeError:  # an unhashable value
            return self._pairs(9, attributes.items())
        if block is None:
            block = self._pairs(9, zip(*first, strict=True))
            if len(block) <= 2048:  # not a head that carries a conversation (record_content)
                if len(self._heads) >= self._cache_size:
                    self._heads.clear()
                self._heads[first] = block
        if len(attributes) == head:
            return block
        return block + self._pairs(9, islice(attributes.items(), head, None))

    def _pairs(self, field: int, items: Iterable[tuple[str, Any]]) -> bytes:
        texts = self._texts[field]
        ints = self._ints[field]
        floats = self._floats[field]
        tag = _key(field, 2)
        out = []
        append = out.append
        for key, value in items:
            kind = type(value)
            if kind is str or kind is tuple:  # a list of texts (candidates, finish reasons) comes as a tuple
                values = texts.get(key)
                chunk = values.get(value) if values is not None else None
                if chunk is None:
                    chunk = self._text(field, tag, key, value)
                if chunk:
                    append(chunk)
                continue
            if kind is int:  # status codes, ports, attempts, token counts: they repeat too
                values = ints.get(key)
                chunk = values.get(value) if values is not None else None
                if chunk is None:
                    chunk = self._int(field, tag, key, value)
                append(chunk)
                continue
            if kind is float:  # costs, times: all but the last 8 bytes depend on the key only
                prefix = floats.get(key)
                if prefix is None:
                    prefix = floats[key] = _framed(tag, self._key_bytes(key) + b"\x12\x09\x21" + _ZERO8)[:-8]
                append(prefix + _DOUBLE.pack(value))  # ...\x21: AnyValue.double_value, fixed64
                continue
            chunk = self._other(field, tag, key, value)
            if chunk:
                append(chunk)
        return b"".join(out)

    def _text(self, field: int, tag: bytes, key: str, value: str | tuple[Any, ...]) -> bytes:
        """A framed KeyValue of text or a tuple, cached when short and (for tuples) made of texts only: an
        equal tuple is then the same texts (a text equals no number or flag)."""
        chunk = self._other(field, tag, key, value)
        if type(value) is str:
            cacheable = len(value) <= 256
        else:
            cacheable = len(value) <= 16 and all(type(v) is str and len(v) <= 256 for v in value)
        if cacheable and chunk:
            self._remember(self._texts[field], key, value, chunk)
        return chunk

    def _int(self, field: int, tag: bytes, key: str, value: int) -> bytes:
        number = _varint(value)
        body = b"\x12" + _SMALL[len(number) + 1] + b"\x18" + number  # KeyValue.value: AnyValue.int_value
        chunk = _framed(tag, self._key_bytes(key) + body)
        self._remember(self._ints[field], key, value, chunk)
        return chunk

    def _remember(self, cache: dict[str, dict[Any, bytes]], key: str, value: Any, chunk: bytes) -> None:
        if self._cached >= self._cache_size:  # token counts, costs...: start over rather than grow
            self._texts.clear()
            self._ints.clear()
            self._cached = 0
        values = cache.get(key)
        if values is None:
            values = cache[key] = {}
        values[value] = chunk
        self._cached += 1

    def _other(self, field: int, tag: bytes, key: str, value: Any) -> bytes:
        """A framed KeyValue whose value is a flag (cached), a list, bytes or a map; b"" when not encodable."""
        if type(value) is bool:
            chunk = self._flags.get((field, key, value))
            if chunk is None:
                chunk = self._flags[(field, key, value)] = _framed(tag, key_value(key, value))
            return chunk
        try:
            return _framed(tag, self._key_bytes(key) + _bytes_field(2, any_value(value)))
        except TypeError:
            log.warning("attribute %s: a %s is not exported", key, type(value).__name__)
            return b""

    def span(self, span: ReadableSpan) -> bytes:
        """One Span message, framed as ScopeSpans.spans (field 2): the compiled encoder's bytes when it takes
        the span (the usual case for gateway/spans.py's spans), else the same bytes written here."""
        data = self.native(span) if self.native is not None else None
        return data if data is not None else self._span(span)

    def _span(self, span: ReadableSpan) -> bytes:
        """`span` written in Python."""
        # the SDK's fields, read directly (each public property costs a call); a SpanContext is a tuple
        trace_id, span_id, _, _, state, _ = span._context
        parent = span._parent
        ids = b"\x0a\x10" + trace_id.to_bytes(16, "big") + b"\x12\x08" + span_id.to_bytes(8, "big")  # 1, 2
        if state is not DEFAULT_TRACE_STATE and state:  # the shared empty one: no call to TraceState.__len__
            ids += _str_field(3, ",".join(f"{k}={v}" for k, v in state.items()))
        if parent is not None:
            ids += b"\x22\x08" + parent[1].to_bytes(8, "big")  # 4: parent_span_id
        name = self._names.get(span._name)
        if name is None:
            name = _str_field(5, span._name)
            if len(self._names) < self._cache_size:
                self._names[span._name] = name
        attributes = span._attributes
        if type(attributes) is dict:  # gateway/spans.py's (or a ReadableSpan made by hand): nothing dropped
            encoded = self._span_attributes(attributes, getattr(span, "_head", 0))
        else:
            encoded = self.attributes(9, _own_attributes(span))
            if span.dropped_attributes:
                encoded += _key(10, 0) + _varint(span.dropped_attributes)
        if span._events or span._links:
            encoded += self._events_and_links(span)
        status = span._status
        body = b"".join(
            (
                ids,
                name,
                _KINDS[id(span._kind)],  # 6: kind (by identity: an enum member hashes in Python)
                _TIMES.pack(0x39, span._start_time or 0, 0x41, span._end_time or 0),  # 7, 8: start, end
                encoded,  # 9 (10, 11, 12, 13, 14)
                self._status(status),  # 15
                _FLAGS_REMOTE if parent is not None and parent[2] else _FLAGS_LOCAL,  # 16: flags, is_remote
            )
        )
        n = len(body)
        if 0x80 <= n < 0x4000:
            return b"\x12" + bytes((n & 0x7F | 0x80, n >> 7)) + body
        return _framed(b"\x12", body)

    def _status(self, status: Any) -> bytes:
        """Span.status (15); the same Status object (gateway/spans.py shares the unset one) encodes once."""
        if status is None:
            return b""
        if status.description:
            return _bytes_field(15, _str_field(2, status.description) + _STATUS_CODES[status.status_code])
        return self._block(status, lambda s: _STATUS_BY_ID[id(s.status_code)])

    def _events_and_links(self, span: ReadableSpan) -> bytes:
        """Span.events (11) and dropped_events_count (12), Span.links (13) and dropped_links_count (14)."""
        parts: list[bytes] = []
        if span._events:
            _repeated(parts, 11, map(self.event, span._events), 12, span.dropped_events)
        if span._links:
            _repeated(parts, 13, map(self.link, span._links), 14, span.dropped_links)
        return b"".join(parts)

    def event(self, event: Any) -> bytes:
        body = b"\x09" + _FIXED64.pack(event.timestamp or 0) + _str_field(2, event.name)
        body += self.attributes(3, event.attributes)
        if event.dropped_attributes:
            body += _key(4, 0) + _varint(event.dropped_attributes)
        return body

    def link(self, link: Any) -> bytes:
        ctx = link.context
        body = b"\x0a\x10" + ctx.trace_id.to_bytes(16, "big") + b"\x12\x08" + ctx.span_id.to_bytes(8, "big")
        body += self.attributes(4, link.attributes)
        if link.dropped_attributes:
            body += _key(5, 0) + _varint(link.dropped_attributes)
        flags = _HAS_IS_REMOTE | (_IS_REMOTE if ctx.is_remote else 0)
        return body + b"\x35" + _FIXED32.pack(flags)  # 6: flags (fixed32)

    def scope(self, scope: Any) -> bytes:
        if scope is None:
            return b""
        body = _str_field(1, scope.name) if scope.name else b""
        if scope.version:
            body += _str_field(2, scope.version)
        return body + self.attributes(3, getattr(scope, "attributes", None))

    def _block(self, thing: Any, encode: Any) -> bytes:
        """`encode(thing)`, once per resource or scope object."""
        entry = self._blocks.get(id(thing))
        if entry is None or entry[0] is not thing:
            if len(self._blocks) >= 64:
                self._blocks.clear()
            entry = self._blocks[id(thing)] = (thing, encode(thing))
        return entry[1]

    def _resource(self, resource: Any) -> bytes:
        return _bytes_field(1, self.attributes(1, resource.attributes))  # ResourceSpans.resource

    def _scope(self, scope: Any) -> bytes:
        return _bytes_field(1, self.scope(scope))  # ScopeSpans.scope

    def request(self, spans: Sequence[ReadableSpan]) -> bytes:
        """The ExportTraceServiceRequest for `spans`, grouped by resource, then instrumentation scope."""
        groups: _Groups = {}
        encode = self._span
        native = self.native
        last_resource = last_scope = None
        encoded: list[bytes] = []
        for span in spans:
            resource, scope = span._resource, span._instrumentation_scope
            if resource is not last_resource or scope is not last_scope or not groups:
                last_resource, last_scope, encoded = resource, scope, _group(groups, resource, scope)
            data = native(span) if native is not None else None  # `span`, inlined: one call less per span
            encoded.append(data if data is not None else encode(span))
        return self.assemble(groups.values())

    def request_ended(self, items: Sequence[Any], home: tuple[Any, Any] | None) -> bytes:
        """The ExportTraceServiceRequest for a batch of gateway/span_batch.py's queue: Span messages' bytes (spans
        of the `home` resource and scope, encoded as they ended), (resource, scope, bytes) tuples (spans of
        others), and ReadableSpans (spans that were not encoded then: they are encoded here)."""
        encoded = [item for item in items if type(item) is bytes]
        if home is not None and len(encoded) == len(items):  # the usual batch: all of one provider's spans
            return self.assemble(((home[0], home[1], encoded),))
        groups: _Groups = {}
        for item in items:
            if type(item) is bytes:
                resource, scope = home  # type: ignore[misc]  # bytes are queued only once there is a home
                data = item
            elif type(item) is tuple:
                resource, scope, data = item
            else:
                resource, scope, data = item._resource, item._instrumentation_scope, self.span(item)
            _group(groups, resource, scope).append(data)
        return self.assemble(groups.values())

    def assemble(self, groups: Iterable[tuple[Any, Any, Sequence[bytes]]]) -> bytes:
        """The ExportTraceServiceRequest for encoded spans, given as (resource, scope, Span messages) groups
        (no two with the same resource and scope). The spans' bytes are copied once, into the result."""
        by_resource: dict[int, tuple[Any, list[bytes]]] = {}
        for resource, scope, encoded in groups:
            entry = by_resource.get(id(resource))
            if entry is None:
                entry = by_resource[id(resource)] = (resource, [self._block(resource, self._resource)])
            head = self._block(scope, self._scope) if scope is not None else b"\x0a\x00"  # ScopeSpans.scope
            tail = _str_field(3, scope.schema_url) if scope is not None and scope.schema_url else b""
            size = len(head) + sum(map(len, encoded)) + len(tail)
            entry[1].extend((_key(2, 2) + _varint(size), head, *encoded, tail))  # ResourceSpans.scope_spans
        out = []
        for resource, pieces in by_resource.values():
            if resource.schema_url:
                pieces.append(_str_field(3, resource.schema_url))
            out.append(_key(1, 2) + _varint(sum(map(len, pieces))))  # ExportTraceServiceRequest.resource_spans
            out.extend(pieces)
        return b"".join(out)


class FastOTLPSpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP protobuf exporter (same configuration, same transport) with `SpanEncoder`.

    With the compiled encoder, gateway/span_batch.py's SpanBatcher has each span encoded as it ends
    (`encode_ended`) and exports the bytes (`export_ended`): the span is freed at once and the queue holds no
    objects for the garbage collector to walk. (With the Python encoder that cost more CPU per request than
    encoding in batches on the export thread, so then spans are queued as they are and encoded there.)

    Falls back to the SDK's own encoding if its transport is not the one this was written against.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._encoder = SpanEncoder()
        self.encode_ended = self._encoder.native if self._known_transport() else None
        """`(span) -> bytes | None` for SpanBatcher, or None (no compiled encoder, or an unknown transport)."""

    def _known_transport(self) -> bool:
        """The SDK exporter's HTTP client takes encoded bytes (`_client.export`), as this was written against."""
        return hasattr(getattr(self, "_client", None), "export")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if getattr(self, "_shutdown", False) or not self._known_transport():
            return super().export(spans)
        try:
            data = self._encoder.request(spans)
        except Exception:
            log.exception("encoding %d spans failed; using the SDK encoder", len(spans))
            return super().export(spans)
        return self._send(data)

    def export_ended(self, items: Sequence[Any], home: tuple[Any, Any] | None) -> SpanExportResult:
        """Export a SpanBatcher batch of spans encoded as they ended (and any that were not)."""
        if getattr(self, "_shutdown", False):
            log.warning("the span exporter is shut down: %d spans not exported", len(items))
            return SpanExportResult.FAILURE
        try:
            data = self._encoder.request_ended(items, home)
        except Exception:
            log.exception("encoding %d spans failed", len(items))
            return SpanExportResult.FAILURE
        return self._send(data)

    def _send(self, data: bytes) -> SpanExportResult:
        result = self._client.export(data)
        return SpanExportResult.SUCCESS if getattr(result, "success", False) else SpanExportResult.FAILURE

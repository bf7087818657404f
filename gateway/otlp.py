"""OTLP/HTTP span export with a fast protobuf encoder.

The SDK's exporter builds a protobuf object tree for every span (about 40 µs a span here), on the same
core as the requests. This encoder writes the same `ExportTraceServiceRequest` wire format directly
(opentelemetry-proto's trace.proto / common.proto), caching the bytes of attributes that repeat from
span to span (route, deployment, model, policy version...), at a few µs a span. The transport,
endpoint, headers, timeout, compression and TLS settings stay the SDK exporter's (OTEL_EXPORTER_OTLP_*).

Tests decode what this encoder writes with opentelemetry-proto and compare it with the SDK encoder's.
"""

import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

log = logging.getLogger("escalade.otlp")

_DOUBLE = struct.Struct("<d")
_FIXED64 = struct.Struct("<Q")
_FIXED32 = struct.Struct("<I")
_TIMES = struct.Struct("<BQBQ")
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200
_FLAGS_LOCAL = b"\x85\x01" + _FIXED32.pack(_HAS_IS_REMOTE)  # Span.flags (16, fixed32)
_FLAGS_REMOTE = b"\x85\x01" + _FIXED32.pack(_HAS_IS_REMOTE | _IS_REMOTE)
_KINDS = {kind: b"\x30" + bytes((kind.value + 1,)) for kind in SpanKind}  # Span.kind: OTLP counts from INTERNAL=1
_STATUS_CODES = {  # Status.code (3) inside Span.status (15); UNSET is the empty Status
    StatusCode.UNSET: b"",
    StatusCode.OK: b"\x18\x01",
    StatusCode.ERROR: b"\x18\x02",
}
_STATUSES = {body: b"\x7a" + bytes((len(body),)) + body for body in _STATUS_CODES.values()}  # Span.status, no message


_SMALL = [bytes((n,)) for n in range(128)]


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
    """The span's attributes as a plain dict when the SDK keeps one (its public view is a proxy over a
    mapping that iterates in Python, key by key)."""
    bounded = getattr(span, "_attributes", None)
    inner = getattr(bounded, "_dict", None)
    return inner if isinstance(inner, dict) else span.attributes


class SpanEncoder:
    """ReadableSpans -> ExportTraceServiceRequest bytes. Not thread-safe: one per exporter (the batch
    processor exports from one thread)."""

    def __init__(self, cache_size: int = 4096) -> None:
        self._cache: dict[tuple[int, str, type, Any], bytes] = {}
        self._keys: dict[str, bytes] = {}
        self._names: dict[str, bytes] = {}
        self._cache_size = cache_size

    def attributes(self, field: int, attributes: Mapping[str, Any] | None) -> bytes:
        """Repeated KeyValue `field`: whole pairs of text or flags come from the cache (they repeat from
        span to span), and the key's bytes for the others."""
        if not attributes:
            return b""
        cache = self._cache
        prefix = _key(field, 2)
        out = []
        for key, value in attributes.items():
            kind = type(value)
            if kind is str or kind is bool:
                entry = (field, key, kind, value)
                chunk = cache.get(entry)
                if chunk is None:
                    chunk = _bytes_field(field, key_value(key, value))
                    if kind is bool or len(value) <= 256:
                        if len(cache) >= self._cache_size:
                            cache.clear()
                        cache[entry] = chunk
                out.append(chunk)
                continue
            name = self._keys.get(key)
            if name is None:
                name = _str_field(1, key)
                if len(self._keys) < self._cache_size:
                    self._keys[key] = name
            try:
                if kind is int:
                    body = b"\x18" + _varint(value)  # AnyValue.int_value
                elif kind is float:
                    body = b"\x21" + _DOUBLE.pack(value)  # AnyValue.double_value
                else:
                    body = any_value(value)
            except TypeError:
                log.warning("attribute %s: a %s is not exported", key, kind.__name__)
                continue
            pair = name + b"\x12" + _varint(len(body)) + body
            out.append(prefix + _varint(len(pair)) + pair)
        return b"".join(out)

    def span(self, span: ReadableSpan) -> bytes:
        ctx = span.get_span_context()
        parent = span.parent
        parts = [
            b"\x0a\x10" + ctx.trace_id.to_bytes(16, "big") + b"\x12\x08" + ctx.span_id.to_bytes(8, "big"),  # 1, 2
        ]
        if ctx.trace_state:
            parts.append(_str_field(3, ",".join(f"{k}={v}" for k, v in ctx.trace_state.items())))
        if parent is not None:
            parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))  # 4: parent_span_id
        name = self._names.get(span.name)
        if name is None:
            name = _str_field(5, span.name)
            if len(self._names) < self._cache_size:
                self._names[span.name] = name
        parts.append(name)
        parts.append(_KINDS[span.kind])  # 6: kind
        parts.append(_TIMES.pack(0x39, span.start_time or 0, 0x41, span.end_time or 0))  # 7, 8: start, end
        parts.append(self.attributes(9, _own_attributes(span)))
        if span.dropped_attributes:
            parts.append(_key(10, 0) + _varint(span.dropped_attributes))
        events = span.events
        for event in events:
            parts.append(_bytes_field(11, self.event(event)))
        if events and span.dropped_events:
            parts.append(_key(12, 0) + _varint(span.dropped_events))
        links = span.links
        for link in links:
            parts.append(_bytes_field(13, self.link(link)))
        if links and span.dropped_links:
            parts.append(_key(14, 0) + _varint(span.dropped_links))
        status = span.status
        if status is not None:
            code = _STATUS_CODES[status.status_code]
            if status.description:
                parts.append(_bytes_field(15, _str_field(2, status.description) + code))
            else:
                parts.append(_STATUSES[code])
        parts.append(_FLAGS_REMOTE if parent is not None and parent.is_remote else _FLAGS_LOCAL)  # 16: flags
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

    def request(self, spans: Sequence[ReadableSpan]) -> bytes:
        """The ExportTraceServiceRequest for `spans`, grouped by resource, then instrumentation scope."""
        groups: dict[int, tuple[Any, dict[int, tuple[Any, list[bytes]]]]] = {}  # by identity: Resource hashes slowly
        for span in spans:
            resource, scope = span.resource, span.instrumentation_scope
            scopes = groups.get(id(resource))
            if scopes is None:
                scopes = groups[id(resource)] = (resource, {})
            entry = scopes[1].get(id(scope))
            if entry is None:
                entry = scopes[1][id(scope)] = (scope, [])
            entry[1].append(self.span(span))
        out = []
        for resource, scopes_of in groups.values():
            body = _bytes_field(1, self.attributes(1, resource.attributes))  # ResourceSpans.resource
            for scope, encoded in scopes_of.values():
                scope_spans = _bytes_field(1, self.scope(scope))
                scope_spans += b"".join(_bytes_field(2, s) for s in encoded)
                if scope is not None and scope.schema_url:
                    scope_spans += _str_field(3, scope.schema_url)
                body += _bytes_field(2, scope_spans)
            if resource.schema_url:
                body += _str_field(3, resource.schema_url)
            out.append(_bytes_field(1, body))
        return b"".join(out)


class FastOTLPSpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP protobuf exporter (same configuration, same transport) with `SpanEncoder`.

    Falls back to the SDK's own encoding if its transport is not the one this was written against.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._encoder = SpanEncoder()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        client = getattr(self, "_client", None)
        if getattr(self, "_shutdown", False) or client is None or not hasattr(client, "export"):
            return super().export(spans)
        try:
            data = self._encoder.request(spans)
        except Exception:
            log.exception("encoding %d spans failed; using the SDK encoder", len(spans))
            return super().export(spans)
        result = client.export(data)
        return SpanExportResult.SUCCESS if getattr(result, "success", False) else SpanExportResult.FAILURE

"""The fast OTLP span encoder writes what the SDK's encoder writes (decoded with opentelemetry-proto)."""

import time

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.otlp import SpanEncoder, any_value


def _spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "escalade", "n": 3}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("escalade", "1.2.3")
    other = provider.get_tracer("other")
    remote = TraceContextTextMapPropagator().extract(
        {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tracestate": "vendor=x,b=2"}
    )
    with tracer.start_as_current_span("POST /v1/chat/completions", context=remote, kind=trace.SpanKind.SERVER) as s:
        s.set_attributes({"http.response.status_code": 200, "escalade.route": "auto", "ok": True, "ratio": 0.25})
        s.add_event("escalade.backoff", {"escalade.backoff_ms": 12.5, "escalade.attempt": 1})
        with tracer.start_as_current_span("chat gpt-x", kind=trace.SpanKind.CLIENT) as c:
            c.set_attributes(
                {
                    "gen_ai.response.finish_reasons": ["stop", "length"],
                    "gen_ai.usage.input_tokens": 12,
                    "negative": -5,
                    "big": 2**62,
                    "empty": "",
                    "unicode": "héllo ✓",
                    "flags": [True, False],
                    "floats": [1.5, -2.0],
                    "ints": [1, 2, 300],
                }
            )
            c.set_status(Status(StatusCode.ERROR, "UpstreamUnavailable: 503"))
        link = Link(SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(1)), {"why": "hedge"})
        other.start_span("route auto", links=[link], start_time=time.time_ns()).end()
    ok = tracer.start_span("plain")
    ok.set_status(Status(StatusCode.OK))
    ok.end()
    return exporter.get_finished_spans()


def test_fast_encoding_decodes_to_the_sdk_encoding():
    spans = _spans()
    assert len(spans) == 4
    encoder = SpanEncoder()
    for _ in range(2):  # the second pass hits the attribute cache
        ours = ExportTraceServiceRequest.FromString(encoder.request(spans))
        sdk = ExportTraceServiceRequest.FromString(encode_spans(spans).SerializeToString())
        assert _normalized(ours) == _normalized(sdk)


def test_spans_of_several_resources_and_scopes_are_grouped_as_the_sdk_groups_them():
    spans = list(_spans())
    other = TracerProvider(resource=Resource.create({"service.name": "other"}))
    memory = InMemorySpanExporter()
    other.add_span_processor(SimpleSpanProcessor(memory))
    other.get_tracer("x", schema_url="https://opentelemetry.io/schemas/1.26.0").start_span("elsewhere").end()
    mixed = spans[:2] + list(memory.get_finished_spans()) + spans[2:]  # not in group order
    ours = ExportTraceServiceRequest.FromString(SpanEncoder().request(mixed))
    assert len(ours.resource_spans) == 2 and sorted(len(rs.scope_spans) for rs in ours.resource_spans) == [1, 2]
    sdk = ExportTraceServiceRequest.FromString(encode_spans(mixed).SerializeToString())
    assert _normalized(ours) == _normalized(sdk)


def _normalized(request: ExportTraceServiceRequest) -> list:
    """Order-independent view: (resource, scope, span) triples as canonical bytes."""
    out = []
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                out.append(
                    (
                        rs.resource.SerializeToString(deterministic=True),
                        rs.schema_url,
                        ss.scope.SerializeToString(deterministic=True),
                        ss.schema_url,
                        span.SerializeToString(deterministic=True),
                    )
                )
    return sorted(out)


def test_values_of_every_kind():
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue

    assert AnyValue.FromString(any_value("x")).string_value == "x"
    assert AnyValue.FromString(any_value(False)).HasField("bool_value")
    assert AnyValue.FromString(any_value(-(2**63))).int_value == -(2**63)
    assert AnyValue.FromString(any_value(0.1)).double_value == 0.1
    assert AnyValue.FromString(any_value(b"\x00\xff")).bytes_value == b"\x00\xff"
    assert [v.string_value for v in AnyValue.FromString(any_value(("a", "b"))).array_value.values] == ["a", "b"]
    kv = AnyValue.FromString(any_value({"k": 1})).kvlist_value.values[0]
    assert (kv.key, kv.value.int_value) == ("k", 1)

"""The compiled span encoder (gateway/_otlp_span.c) writes exactly the bytes of the Python one (gateway/otlp.py),
which tests/unit/test_otlp_encoder.py checks against the SDK's encoder; what it does not take, it hands back."""

import random

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from gateway import otlp, spans
from gateway.spans import Tracing, remote_parent

native = pytest.importorskip("gateway._otlp_span", reason="the C accelerator is not built (no C compiler?)")
if spans.COMPILED is None:
    pytest.skip("the compiled module is switched off (ESCALADE_OTLP_NATIVE=0)", allow_module_level=True)


@pytest.fixture
def made():
    """(tracing, finished spans): spans made the way the gateway makes them, collected in memory."""
    provider = TracerProvider()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return Tracing(provider), memory


def _both(span) -> tuple[bytes | None, bytes, bytes]:
    """(what the C encoder answers, the encoder's bytes with it, the Python encoder's bytes)."""
    return native.encode_span(span), otlp.SpanEncoder().span(span), otlp.SpanEncoder(native=False).span(span)


def test_the_encoder_uses_the_compiled_module_when_it_is_built():
    assert otlp.SpanEncoder().native is native.encode_span
    assert otlp.SpanEncoder(native=False).native is None


ATTRIBUTES = {
    "text": "bench-ok",
    "empty": "",
    "unicode": "héllo ✓ 日本",
    "yes": True,
    "no": False,
    "zero": 0,
    "small": 7,
    "negative": -5,
    "big": 2**62,
    "most": 2**63 - 1,
    "least": -(2**63),
    "ratio": 0.25,
    "tiny": 2.6999999999999996e-06,
    "negative_float": -1e300,
    "candidates": ("primary", "backup"),
    "mixed": ("a", 1, 2.5, True),
    "none_of_them": (),
    "listed": ["stop", "length"],
    "long": "x" * 5000,
}


@pytest.mark.parametrize(
    "status",
    [None, Status(StatusCode.OK), Status(StatusCode.ERROR, "UpstreamUnavailable: 503"), Status(StatusCode.ERROR)],
    ids=["unset", "ok", "error-described", "error"],
)
def test_same_bytes_for_the_spans_the_gateway_makes(made, status):
    tracing, memory = made
    root = tracing.start("POST /v1/chat/completions", SpanKind.SERVER, dict(ATTRIBUTES), None)
    child = tracing.start("chat ok", SpanKind.CLIENT, {"escalade.attempt": 1}, root.get_span_context())
    child.set_attributes({"gen_ai.usage.input_tokens": 12, "escalade.cost_usd": 2.6e-05})
    if status is not None:
        child.set_status(status)
    child.end()
    tracing.start("route auto", SpanKind.INTERNAL, {}, root.get_span_context()).end()
    root.end()
    spans = memory.get_finished_spans()
    assert len(spans) == 3
    for span in spans:
        taken, ours, python = _both(span)
        assert taken is not None, span.name
        assert ours == python == taken


def test_same_bytes_under_a_remote_parent_and_for_every_kind(made):
    tracing, memory = made
    parent = remote_parent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None)
    for kind in SpanKind:
        tracing.start(f"{kind.name} span", kind, {"k": kind.value}, parent).end()
    for span in memory.get_finished_spans():
        taken, ours, python = _both(span)
        assert taken is not None and ours == python == taken


def test_random_attributes_same_bytes(made):
    """Many spans of random attribute sets (texts of every UTF-8 length class, numbers at varint edges)."""
    tracing, memory = made
    rng = random.Random(7)
    edges = [0, 1, 127, 128, 16383, 16384, 2**31, 2**32, 2**53, 2**63 - 1, -1, -128, -(2**63)]

    def scalar():
        pick = rng.randrange(4)
        if pick == 0:
            return "".join(chr(rng.choice([0x41, 0xE9, 0x65E5, 0x1F600])) for _ in range(rng.randrange(0, 300)))
        if pick == 1:
            return rng.choice(edges) if rng.random() < 0.5 else rng.randrange(-(2**40), 2**40)
        if pick == 2:
            return rng.uniform(-1e6, 1e6)
        return rng.random() < 0.5

    def value():
        return tuple(scalar() for _ in range(rng.randrange(0, 5))) if rng.random() < 0.2 else scalar()

    for n in range(300):
        attributes = {f"key.{i}.{'k' * rng.randrange(0, 200)}": value() for i in range(rng.randrange(0, 20))}
        tracing.start(f"span {n}" * rng.randrange(1, 40), SpanKind.CLIENT, attributes, None).end()
    for span in memory.get_finished_spans():
        taken, ours, python = _both(span)
        assert taken is not None and ours == python == taken


def test_what_it_does_not_take_it_hands_back_and_the_bytes_stay_the_same(made):
    tracing, memory = made
    with_state = remote_parent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "vendor=x")
    tracing.start("trace state", SpanKind.SERVER, {}, with_state).end()
    evented = tracing.start("events", SpanKind.SERVER, {}, None)
    evented.add_event("escalade.backoff", {"escalade.backoff_ms": 12.5})
    evented.end()
    huge = tracing.start("huge int", SpanKind.SERVER, {}, None)
    huge._attributes["n"] = 2**64  # past int64 (the span's own checks let ints of any size through)
    huge.end()
    for name, value in {"none": None, "nested": (("a",),), "map": {"a": 1}}.items():
        odd = tracing.start(f"odd {name}", SpanKind.SERVER, {}, None)
        odd.end()
        odd._attributes[name] = value  # what the span's own checks would have refused, put in after end()
    for span in memory.get_finished_spans():
        taken, ours, python = _both(span)
        assert taken is None, span.name
        assert ours == python


def test_sdk_spans_are_left_to_the_python_encoder():
    provider = TracerProvider()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("x").start_as_current_span("sdk", attributes={"a": 1}):
        pass
    (span,) = memory.get_finished_spans()
    taken, ours, python = _both(span)
    assert taken is None and ours == python
    decoded = ExportTraceServiceRequest.FromString(otlp.SpanEncoder().request([span]))
    assert decoded == ExportTraceServiceRequest.FromString(encode_spans([span]).SerializeToString())

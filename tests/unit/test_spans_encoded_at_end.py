"""Spans encoded as they end (gateway/spans.py -> SpanBatcher.take -> the compiled encoder): what is exported
is what the SDK's encoder writes for the same spans, whichever way each span went (bytes of the home
resource, bytes with another resource, or the span object for the encoder to write later).

Every test runs twice: with the compiled Span.end and SpanBatcher.take (gateway/_otlp_span.c), and with
their Python versions."""

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from gateway import otlp, spans
from gateway.span_batch import SpanBatcher
from tests.unit.test_otlp_encoder import _normalized

pytest.importorskip("gateway._otlp_span", reason="the C accelerator is not built (no C compiler?)")
if spans.COMPILED is None:
    pytest.skip("the compiled module is switched off (ESCALADE_OTLP_NATIVE=0)", allow_module_level=True)


@pytest.fixture(autouse=True, params=["compiled", "python"])
def implementation(request, monkeypatch):
    if request.param == "compiled":
        assert spans.Span.__dict__["end"] is spans.COMPILED.end_method
        assert SpanBatcher.__dict__["take"] is spans.COMPILED.take_method
        assert spans._new_span is spans.COMPILED.new_span
    else:
        monkeypatch.setattr(spans.Span, "end", spans.PYTHON_END)
        monkeypatch.setattr(SpanBatcher, "take", spans.PYTHON_TAKE)
        monkeypatch.setattr(spans, "_new_span", spans.Span)
    return request.param


class _Encoding:
    """An exporter that takes spans encoded as they end, as gateway/otlp.py's FastOTLPSpanExporter does, and
    keeps each request's bytes and what its items were."""

    def __init__(self) -> None:
        self.encoder = otlp.SpanEncoder()
        self.encode_ended = self.encoder.native
        self.requests: list[bytes] = []
        self.kinds: list[str] = []
        self.closed = False

    def export_ended(self, items, home):
        self.kinds += ["bytes" if type(i) is bytes else "tuple" if type(i) is tuple else "span" for i in items]
        self.requests.append(self.encoder.request_ended(items, home))
        return SpanExportResult.SUCCESS

    def export(self, spans):  # pragma: no cover - a batcher with encode_ended never calls it
        raise AssertionError("export() called")

    def shutdown(self) -> None:
        self.closed = True


def _provider(batcher, name: str, **kwargs) -> spans.Tracing:
    provider = TracerProvider(resource=Resource.create({"service.name": name}), **kwargs)
    provider.add_span_processor(batcher)
    return spans.Tracing(provider)


def _request_like_spans(tracing: spans.Tracing, n: int) -> list[ReadableSpan]:
    """A server span, a routing span and an attempt, as the gateway makes them."""
    root = tracing.start("POST /v1/chat/completions", SpanKind.SERVER, {"http.request.method": "POST"}, None)
    route = tracing.start("route auto", SpanKind.INTERNAL, {"escalade.candidates": ("a", "b")}, root._context)
    route.end()
    head = {"gen_ai.request.model": "m", "escalade.attempt": n, "server.port": 9000, "ok": True}
    attempt = tracing.start("chat m", SpanKind.CLIENT, head, root._context)
    attempt.set_attributes({"gen_ai.usage.input_tokens": 300 * n, "escalade.cost_usd": 0.25})
    if n % 2:
        attempt.set_status(Status(StatusCode.ERROR, "UpstreamUnavailable: 503"))
    attempt.end()
    root.set_attribute("http.response.status_code", 200)
    root.end()
    return [route, attempt, root]


def _decoded(requests: list[bytes]) -> ExportTraceServiceRequest:
    merged = ExportTraceServiceRequest()
    for data in requests:
        merged.MergeFrom(ExportTraceServiceRequest.FromString(data))
    return merged


def test_spans_taken_as_they_end_export_what_the_sdk_encoder_writes():
    exporter = _Encoding()
    batcher = SpanBatcher(exporter, schedule_delay_ms=60000, max_export_batch_size=4)
    home = _provider(batcher, "escalade")
    other = _provider(batcher, "another")
    assert home.take == batcher.take and other.take == batcher.take
    made: list[ReadableSpan] = []
    with batcher._export_lock:  # nothing exported until all are made: one look at the queue
        for n in range(3):
            made += _request_like_spans(home, n)
        evented = home.start("with an event", SpanKind.INTERNAL, {"k": "v"}, None)
        evented.add_event("escalade.backoff", {"escalade.backoff_ms": 12.5})
        evented.end()
        odd = home.start("an odd value", SpanKind.INTERNAL, {"listed": ["a", 1], "nothing": None}, None)
        odd.end()
        made += [evented, odd]
        made += _request_like_spans(other, 7)
        queued = list(batcher._queue)
    assert [type(item).__name__ for item in queued] == ["bytes"] * 9 + ["Span", "Span"] + ["tuple"] * 3
    assert batcher.force_flush()
    assert exporter.kinds == ["bytes"] * 9 + ["span", "span"] + ["tuple"] * 3
    assert len(exporter.requests) == 4  # batches of 4
    sdk = ExportTraceServiceRequest.FromString(encode_spans(made).SerializeToString())
    ours = _decoded(exporter.requests)
    assert _normalized(ours) == _normalized(sdk)
    assert type(odd._attributes) is not dict  # the odd span went the SDK's way: its BoundedAttributes checks
    batcher.shutdown()
    assert exporter.closed


def test_taken_spans_respect_the_queue_bound_and_the_sampler():
    exporter = _Encoding()
    batcher = SpanBatcher(exporter, max_queue_size=4, schedule_delay_ms=60000, max_export_batch_size=100)
    tracing = _provider(batcher, "escalade")
    unsampled = spans.remote_parent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", None)
    with batcher._export_lock:
        assert not tracing.start("not sampled", SpanKind.SERVER, {}, unsampled).is_recording()
        for n in range(6):
            tracing.start(f"s{n}", SpanKind.INTERNAL, {"n": n}, None).end()
        assert len(batcher._queue) == 4 and batcher.dropped == 2
    batcher.shutdown()
    names = [span.name for span in _decoded(exporter.requests).resource_spans[0].scope_spans[0].spans]
    assert names == ["s0", "s1", "s2", "s3"]


def test_spans_are_taken_only_by_a_lone_encoding_batcher_and_without_value_limits():
    exporter = _Encoding()
    batcher = SpanBatcher(exporter, schedule_delay_ms=60000)
    tracing = _provider(batcher, "escalade")
    assert tracing.take == batcher.take
    memory = InMemorySpanExporter()
    tracing.provider.add_span_processor(SimpleSpanProcessor(memory))
    tracing.start("two processors", SpanKind.INTERNAL, {}, None).end()  # found again: the tuple changed
    assert tracing.take is None
    assert [s.name for s in memory.get_finished_spans()] == ["two processors"]
    assert [type(item).__name__ for item in batcher._queue] == ["Span"]
    batcher.shutdown()

    plain = SpanBatcher(InMemorySpanExporter(), schedule_delay_ms=60000)  # no encode_ended: spans as they are
    assert plain.encode is None and _provider(plain, "x").take is None
    plain.shutdown()

    limited = SpanBatcher(_Encoding(), schedule_delay_ms=60000)
    tracing = _provider(limited, "x", span_limits=SpanLimits(max_attribute_length=3))
    tracing.start("cut", SpanKind.INTERNAL, {"k": "long value"}, None).end()
    [span] = limited._queue  # the limit is applied by the SDK's BoundedAttributes, so not encoded early
    assert span.attributes["k"] == "lon"
    limited.shutdown()


def test_the_otlp_exporter_encodes_at_end_only_with_the_compiled_encoder(monkeypatch):
    exporter = otlp.FastOTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces")
    assert exporter.encode_ended is otlp._encode_native is not None
    monkeypatch.setattr(otlp, "_encode_native", None)
    assert otlp.FastOTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces").encode_ended is None
    exporter.shutdown()
    assert exporter.export_ended([b"x"], (None, None)) == SpanExportResult.FAILURE  # shut down: nothing sent


def test_end_stamps_once_and_keeps_a_given_time(implementation):
    exporter = _Encoding()
    batcher = SpanBatcher(exporter, schedule_delay_ms=60000)
    tracing = _provider(batcher, "escalade")
    given = tracing.start("given", SpanKind.INTERNAL, {}, None, start_time=100)
    given.end(end_time=250)
    given.end(end_time=999)  # ended already: nothing changes, nothing queued twice
    now = tracing.start("now", SpanKind.INTERNAL, {}, None)
    now.end()
    first = now.end_time
    now.end()
    assert given.end_time == 250 and first == now.end_time >= now.start_time
    assert len(batcher._queue) == 2
    batcher.shutdown()
    got = _decoded(exporter.requests).resource_spans[0].scope_spans[0].spans
    assert [(s.name, s.end_time_unix_nano) for s in got] == [("given", 250), ("now", first)]
    if implementation == "compiled":
        with pytest.raises(TypeError):
            spans.COMPILED.take(batcher, ReadableSpan("not ours"))
        with pytest.raises(TypeError):
            spans.COMPILED.end(ReadableSpan("not ours"))


def test_processors_with_an_on_start_see_each_span_start_once():
    class Watch(SimpleSpanProcessor):
        def __init__(self) -> None:
            super().__init__(InMemorySpanExporter())
            self.started: list[tuple[str, bool]] = []

        def on_start(self, span, parent_context=None) -> None:
            self.started.append((span.name, span.end_time is None))

    watch = Watch()
    provider = TracerProvider()
    provider.add_span_processor(watch)
    tracing = spans.Tracing(provider)
    root = tracing.start("root", SpanKind.SERVER, {}, None)
    child = tracing.start("child", SpanKind.INTERNAL, {}, root._context)  # the child fast path
    child.end()
    root.end()
    assert watch.started == [("root", True), ("child", True)]
    assert [s.name for s in watch.span_exporter.get_finished_spans()] == ["child", "root"]

"""gateway/spans.py: light spans behave as the SDK's for sampling, limits, W3C context and export.

Each test builds its own SDK TracerProvider (never the global one) and a `spans.Tracing` on it.
"""

import random
import threading

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_OFF,
    DEFAULT_ON,
    Decision,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway import spans, telemetry
from gateway.otlp import SpanEncoder
from gateway.span_batch import SpanBatcher
from tests.unit.test_otlp_encoder import _normalized


def _tracing(sampler: Sampler = DEFAULT_ON, limits: SpanLimits | None = None):
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        sampler=sampler, resource=Resource.create({"service.name": "escalade"}), span_limits=limits
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return spans.Tracing(provider), exporter


def _context(trace_id: int, remote: bool, sampled: bool, random_id: bool = False) -> SpanContext:
    flags = (1 if sampled else 0) | (2 if random_id else 0)
    return SpanContext(trace_id, 0xABC, remote, TraceFlags(flags))


SAMPLERS = [
    ALWAYS_ON,
    ALWAYS_OFF,
    DEFAULT_ON,
    DEFAULT_OFF,
    TraceIdRatioBased(0.3),
    ParentBasedTraceIdRatio(0.3),
    ParentBased(ALWAYS_ON, remote_parent_sampled=ALWAYS_OFF, local_parent_not_sampled=ALWAYS_ON),
]


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: s.get_description())
def test_sampling_decisions_are_the_samplers_own(sampler):
    """fast_decision works out what the SDK's built-in samplers answer, for roots and every kind of parent."""
    from opentelemetry import trace

    rng = random.Random(7)
    for _ in range(300):
        trace_id = rng.getrandbits(128) or 1
        parents = [None] + [
            _context(trace_id, remote, sampled) for remote in (False, True) for sampled in (False, True)
        ]
        for parent in parents:
            context = trace.set_span_in_context(NonRecordingSpan(parent)) if parent is not None else None
            expected = sampler.should_sample(context, trace_id, "x").decision.is_sampled()
            assert spans.fast_decision(sampler, parent, trace_id) is expected


def test_spans_made_under_a_ratio_sampler_keep_the_ratio_and_children_follow_the_root():
    tracing, _ = _tracing(ParentBasedTraceIdRatio(0.25))
    roots = [tracing.start("POST /x", SpanKind.SERVER, {}, None) for _ in range(4000)]
    sampled = [r for r in roots if r.is_recording()]
    assert 800 < len(sampled) < 1200
    for root in roots[:200]:
        child = tracing.start("route r", SpanKind.INTERNAL, {}, root.get_span_context())
        assert child.is_recording() is root.is_recording()
        assert child.get_span_context().trace_flags.sampled is root.get_span_context().trace_flags.sampled


class _Tagging(Sampler):
    """A sampler of the embedding program's own: asked for every span, its attributes and trace state kept."""

    def __init__(self):
        self.asked = []

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None, trace_state=None):
        self.asked.append(name)
        decision = Decision.RECORD_AND_SAMPLE if not name.startswith("drop") else Decision.DROP
        return SamplingResult(decision, {"sampler.said": "yes"}, None)

    def get_description(self):
        return "tagging"


def test_a_custom_sampler_is_asked_for_every_span_and_its_attributes_are_kept():
    sampler = _Tagging()
    tracing, exporter = _tracing(sampler)
    root = tracing.start("POST /x", SpanKind.SERVER, {"a": 1}, None)
    child = tracing.start("chat m", SpanKind.CLIENT, {}, root.get_span_context())
    dropped = tracing.start("drop me", SpanKind.CLIENT, {}, root.get_span_context())
    child.end()
    dropped.end()
    root.end()
    assert sampler.asked == ["POST /x", "chat m", "drop me"]
    assert isinstance(dropped, NonRecordingSpan)
    done = {s.name: s for s in exporter.get_finished_spans()}
    assert set(done) == {"POST /x", "chat m"}
    assert done["POST /x"].attributes["sampler.said"] == "yes" and done["POST /x"].attributes["a"] == 1


def test_finished_spans_are_sdk_readable_spans_with_parent_status_events_and_tuples():
    tracing, exporter = _tracing()
    remote = spans.remote_parent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "vendor=x,b=2")
    root = tracing.start("POST /v1/chat/completions", SpanKind.SERVER, {"http.route": "/v1/chat/completions"}, remote)
    child = tracing.start("chat m", SpanKind.CLIENT, {"escalade.attempt": 1}, root.get_span_context())
    child.add_event("escalade.backoff", {"escalade.backoff_ms": 12.5})
    child.set_attributes({"gen_ai.response.finish_reasons": ["stop"], "escalade.cost_usd": 0.5})
    child.set_status(Status(StatusCode.ERROR, "UpstreamUnavailable"))
    child.end()
    child.set_attribute("after.end", True)  # ignored, as on an SDK span
    root.end()
    first, second = exporter.get_finished_spans()
    assert (first.name, second.name) == ("chat m", "POST /v1/chat/completions")
    assert first.parent.span_id == second.context.span_id and first.context.trace_id == second.context.trace_id
    assert second.parent.is_remote and f"{second.context.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert first.context.trace_state.get("vendor") == "x"
    assert first.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert "after.end" not in first.attributes
    assert first.status.status_code is StatusCode.ERROR and first.status.description == "UpstreamUnavailable"
    [event] = first.events
    assert event.name == "escalade.backoff" and event.attributes["escalade.backoff_ms"] == 12.5
    assert first.resource.attributes["service.name"] == "escalade"
    assert first.instrumentation_scope.name == "escalade"
    assert second.end_time >= first.end_time >= first.start_time >= second.start_time


def test_light_spans_encode_to_what_the_sdk_encoder_writes():
    tracing, exporter = _tracing()
    remote = spans.remote_parent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "vendor=x")
    for n in range(3):  # the second and third rounds hit the encoder's caches
        root = tracing.start("POST /x", SpanKind.SERVER, {"http.request.method": "POST"}, remote if n else None)
        route = tracing.start(
            "route auto", SpanKind.INTERNAL, {"escalade.candidates": ("a", "b"), "v": "1"}, root.get_span_context()
        )
        route.end()
        start = {"gen_ai.request.model": "m", "escalade.attempt": 1 + n, "server.port": 9000, "flag": True}
        attempt = tracing.start("chat m", SpanKind.CLIENT, start, root.get_span_context())
        attempt.add_event("escalade.circuit", {"escalade.circuit.to": "open"})
        attempt.set_attributes({"gen_ai.usage.input_tokens": 300 * n, "escalade.cost_usd": 0.25, "big": -(2**40)})
        attempt.set_status(Status(StatusCode.ERROR, "boom"))
        attempt.end()
        root.set_attribute("http.response.status_code", 200)
        root.end()
    done = exporter.get_finished_spans()
    encoder = SpanEncoder()
    for _ in range(2):
        ours = ExportTraceServiceRequest.FromString(encoder.request(done))
        sdk = ExportTraceServiceRequest.FromString(encode_spans(done).SerializeToString())
        assert _normalized(ours) == _normalized(sdk)


def test_span_limits_apply_as_in_the_sdk():
    """The same calls on an SDK span and on a light span, under tight limits, finish the same."""
    limits = SpanLimits(max_attribute_length=5, max_span_attributes=3, max_events=1)
    tracing, exporter = _tracing(limits=limits)
    sdk_tracer = tracing.provider.get_tracer("escalade")

    def calls(span):
        span.set_attributes({"none": None, "n": 1, "extra": 2, "obj": object()})
        span.set_attribute("later", "abcdefgh")
        span.add_event("one", {"k": "abcdefgh"})
        span.add_event("two")
        span.end()

    calls(tracing.start("x", SpanKind.INTERNAL, {"long": "abcdefghij", "list": ["abcdefgh", "b"]}, None))
    calls(sdk_tracer.start_span("x", attributes={"long": "abcdefghij", "list": ["abcdefgh", "b"]}))
    ours, sdk = exporter.get_finished_spans()
    assert dict(ours.attributes) == dict(sdk.attributes)
    assert ours.attributes["later"] == "abcde" and len(ours.attributes) == 3
    assert ours.dropped_attributes == sdk.dropped_attributes > 0
    assert [e.name for e in ours.events] == [e.name for e in sdk.events] == ["two"]
    assert ours.dropped_events == sdk.dropped_events == 1


@pytest.mark.parametrize(
    "header",
    [
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-future",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "garbage",
        "",
    ],
)
def test_traceparent_is_read_as_the_sdk_propagator_reads_it(header):
    from opentelemetry import trace

    sdk = trace.get_current_span(TraceContextTextMapPropagator().extract({"traceparent": header})).get_span_context()
    ours = spans.remote_parent(header, None)
    if not sdk.is_valid:
        assert ours is None
    else:
        assert (ours.trace_id, ours.span_id, ours.trace_flags, ours.is_remote) == (
            sdk.trace_id,
            sdk.span_id,
            sdk.trace_flags,
            True,
        )


def test_traceparent_written_for_upstreams_matches_the_sdk_propagator():
    context = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0xF067AA0BA902B7, False, TraceFlags(3))
    ours: dict[str, str] = {}
    spans.traceparent(context, ours)
    from opentelemetry import trace

    theirs: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(theirs, context=trace.set_span_in_context(NonRecordingSpan(context)))
    assert ours == theirs == {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03"}


def test_the_current_span_is_per_task_and_a_foreign_token_is_harmless():
    tracing, _ = _tracing()
    span = tracing.start("x", SpanKind.SERVER, {}, None)
    token = spans.enter(span)
    assert spans.current() is span
    seen = []
    thread = threading.Thread(target=lambda: seen.append(spans.current()))
    thread.start()
    thread.join()
    assert seen == [None]
    spans.leave(token)
    assert spans.current() is None
    spans.leave(token)  # already used: logged, not raised
    import contextvars

    foreign = contextvars.copy_context().run(spans.enter, span)
    spans.leave(foreign)  # made in another context: logged, not raised
    assert spans.current() is None


class _Collect(SpanExporter):
    def __init__(self):
        self.batches = []
        self.closed = False

    def export(self, batch):
        self.batches.append([s.name for s in batch])
        return SpanExportResult.SUCCESS

    def shutdown(self):
        self.closed = True


def test_the_batcher_exports_sampled_spans_in_batches_and_flushes_at_shutdown():
    exporter = _Collect()
    batcher = SpanBatcher(exporter, max_queue_size=5, schedule_delay_ms=60000, max_export_batch_size=2)
    provider = TracerProvider()
    provider.add_span_processor(batcher)
    tracing = spans.Tracing(provider)
    unsampled = spans.remote_parent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", None)
    assert not tracing.start("dropped by the sampler", SpanKind.SERVER, {}, unsampled).is_recording()
    with batcher._export_lock:  # the export thread cannot drain the queue meanwhile
        for n in range(7):
            tracing.start(f"s{n}", SpanKind.INTERNAL, {}, None).end()
        assert batcher.dropped == 2  # the queue holds 5
    assert batcher.force_flush()
    assert sorted(name for batch in exporter.batches for name in batch) == [f"s{n}" for n in range(5)]
    assert all(len(batch) <= 2 for batch in exporter.batches)
    tracing.start("last", SpanKind.INTERNAL, {}, None).end()
    batcher.shutdown()
    assert exporter.batches[-1] == ["last"] and exporter.closed


def test_the_batcher_reads_the_otel_bsp_variables():
    env = {"OTEL_BSP_MAX_QUEUE_SIZE": "100", "OTEL_BSP_SCHEDULE_DELAY": "250", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "bad"}
    batcher = SpanBatcher.from_env(_Collect(), env, max_queue_size=16384, max_export_batch_size=2048)
    try:
        assert (batcher.max_queue_size, batcher.delay_s, batcher.batch_size) == (100, 0.25, 100)
    finally:
        batcher.shutdown()


def test_span_contexts_made_here_equal_the_sdk_constructor_ones():
    """spans._context builds the SpanContext tuple directly, and gateway/otlp.py unpacks it: the layout is
    (trace_id, span_id, is_remote, trace_flags, trace_state, is_valid)."""
    ours = spans._context(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0xF067AA0BA902B7, TraceFlags(1), None)
    sdk = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0xF067AA0BA902B7, False, TraceFlags(1))
    assert ours == sdk and isinstance(ours, SpanContext)
    assert tuple(sdk) == (sdk.trace_id, sdk.span_id, sdk.is_remote, sdk.trace_flags, sdk.trace_state, sdk.is_valid)
    assert ours.is_valid and not ours.is_remote and ours.trace_state == sdk.trace_state


def test_a_readable_span_made_by_hand_with_a_plain_dict_encodes_too():
    from opentelemetry.sdk.trace import ReadableSpan

    context = SpanContext(0x1234, 0x5678, False, TraceFlags(1))
    span = ReadableSpan("by hand", context, attributes={"k": "v", "n": 2}, start_time=1, end_time=2)
    ours = ExportTraceServiceRequest.FromString(SpanEncoder().request([span]))
    sdk = ExportTraceServiceRequest.FromString(encode_spans([span]).SerializeToString())
    assert _normalized(ours) == _normalized(sdk)


@pytest.mark.parametrize(
    ("header", "logged"),
    [
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", None),  # upper-case hex
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),  # version ff
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),  # all-zero trace id
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None),  # all-zero parent id
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", None),  # version 00 has 4 fields
        ("00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01", None),
    ],
)
def test_the_logged_trace_id_with_tracing_off_is_the_callers_only_when_its_traceparent_is_valid(header, logged):
    headers = [(b"host", b"x"), (b"traceparent", header.encode())]
    assert telemetry.trace_id_of(None, headers) == logged
    continued = spans.remote_parent(header, None)  # the same rule a span would continue it by
    assert (f"{continued.trace_id:032x}" if continued else None) == logged

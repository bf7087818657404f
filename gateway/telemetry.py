"""OpenTelemetry tracing: the only module that makes spans. Off unless the standard OTEL_* variables ask.

While tracing is off no span object is ever created: the helpers here return None (or a shared no-op)
and callers skip their span work, because even the API's no-op spans cost measurably per request.

Spans of one request:
- SERVER `POST /v1/chat/completions`: the whole request, continuing an incoming W3C `traceparent`;
- INTERNAL `route <name>`: the routing decision (strategy, candidates, and why each skipped one was);
- CLIENT `<operation> <model>` per upstream attempt, per the OpenTelemetry GenAI conventions; a
  stream's attempt lasts until the stream ends.
Backoff sleeps and circuit changes are span events. Prompt and completion text are recorded only
when the route says `record_content: true`.

The spans are gateway/spans.py's light spans, sampled by the installed SDK TracerProvider's sampler and
handed to its span processors as SDK ReadableSpans when they end; the current span is kept in escalade's
own context variable (`current_span()`), not in the OpenTelemetry context.
"""

import functools
import os
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanKind, Status, StatusCode

from gateway import spans
from providers.errors import scrub

Span = spans.Span | NonRecordingSpan
"""A span made here: recording, or the API's non-recording span of an unsampled request."""

_configured = False
_ERROR = StatusCode.ERROR
_SERVER = SpanKind.SERVER
_CLIENT = SpanKind.CLIENT
_INTERNAL = SpanKind.INTERNAL
_tracing: spans.Tracing | None = None

PROVIDER_NAMES = {
    "openai": "openai",
    "azure_openai": "azure.ai.openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "mistral": "mistral_ai",
    "vllm": "vllm",
}
"""Policy provider type -> `gen_ai.provider.name` (the GenAI conventions' well-known values; vLLM has none)."""


def tracing_active() -> bool:
    """True once an SDK tracer provider is installed (by setup_tracing or by the embedding program).

    While it is not, escalade creates no span objects at all: even no-op spans cost measurably.
    """
    provider = trace.get_tracer_provider()
    return isinstance(provider, TracerProvider) and not getattr(provider, "_disabled", False)


def _spans() -> spans.Tracing:
    """The light-span factory of the installed SDK provider (rebuilt if the provider changed)."""
    global _tracing
    provider = trace.get_tracer_provider()
    tracing = _tracing
    if tracing is None or tracing.provider is not provider:
        tracing = _tracing = spans.Tracing(provider)  # type: ignore[arg-type]
    return tracing


def current_span() -> Any:
    """The current span (the running attempt's, else the request's); a no-op span when there is none."""
    span = spans.current()
    return span if span is not None else spans.NO_SPAN


def tracing_requested(env: dict[str, str] | None = None) -> bool:
    env = dict(os.environ) if env is None else env
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none" or env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    return bool(exporter or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def setup_tracing() -> bool:
    """Install the SDK tracer provider with a batch exporter when OTEL_* variables ask for one.

    The sampler is the SDK's (OTEL_TRACES_SAMPLER, default parent-based always-on); the exporter is
    OTLP/HTTP protobuf (OTEL_EXPORTER_OTLP_* endpoint, headers, timeout, compression) or `console`.
    """
    global _configured
    if _configured or not tracing_requested():
        return _configured
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter

    from gateway.span_batch import SpanBatcher

    exporter: SpanExporter
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "console":
        exporter = ConsoleSpanExporter()
    else:
        from gateway.otlp import FastOTLPSpanExporter

        exporter = FastOTLPSpanExporter()
    service = os.environ.get("OTEL_SERVICE_NAME", "escalade")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    # A busy gateway makes thousands of spans a second: the SDK's default queue (2048) drops spans in bursts
    # and its batches of 512 pay the HTTP request's overhead four times as often. OTEL_BSP_* still win.
    provider.add_span_processor(SpanBatcher.from_env(exporter, max_queue_size=16384, max_export_batch_size=2048))
    trace.set_tracer_provider(provider)
    _configured = True
    return True


# ---------------------------------------------------------------- request (SERVER) span


def start_server_span(method: str, path: str, headers: Iterable[tuple[bytes, bytes]]) -> tuple[Span, object]:
    """Start the request's SERVER span as a child of the caller's `traceparent`, and make it current.

    Returns the span and the context token to hand to `end_server_span`.
    """
    parent = state = None
    for name, value in headers:
        if name == b"traceparent":
            parent = value.decode("latin-1")
        elif name == b"tracestate":
            state = value.decode("latin-1")
    remote = spans.remote_parent(parent, state) if parent else None
    attributes = {"http.request.method": method, "http.route": path}
    span = _spans().start(f"{method} {path}", _SERVER, attributes, remote)
    return span, spans.enter(span)


def end_server_span(span: Span, token: object, status: int, attributes: dict[str, Any]) -> None:
    attributes["http.response.status_code"] = status
    span.set_attributes(attributes)
    if status >= 500:
        span.set_status(Status(_ERROR))
    span.end()
    spans.leave(token)  # type: ignore[arg-type]


def trace_id_of(span: Span | None, headers: Iterable[tuple[bytes, bytes]] = ()) -> str | None:
    """The request's trace id (hex): its span's, else (tracing off) the caller's `traceparent` one when that
    header is valid by the same W3C rules a span continues it by (`spans.remote_parent`), else None."""
    if span is not None:
        return f"{span.get_span_context().trace_id:032x}"
    for name, value in headers:
        if name == b"traceparent":
            parent = spans.remote_parent(value.decode("latin-1"), None)
            return f"{parent.trace_id:032x}" if parent is not None else None
    return None


# ---------------------------------------------------------------- routing decision


def routing_span(
    route: str,
    strategy: str | None,
    candidates: Sequence[str],
    skipped: Sequence[tuple[str, str]],
    version: str,
    start_ns: int,
    error: Exception | None = None,
) -> None:
    """An INTERNAL span for the routing decision: what was tried in which order, and why each skipped
    deployment was skipped."""
    attributes: dict[str, Any] = {
        "escalade.route": route,
        "escalade.candidates": tuple(candidates),
        "escalade.policy.version": version,
    }
    if strategy:
        attributes["escalade.strategy"] = strategy
    if skipped:
        attributes["escalade.skipped"] = tuple(f"{name}: {why}" for name, why in skipped)
    tracing, parent = spans.current_parent()
    span = (tracing or _spans()).start(f"route {route}", _INTERNAL, attributes, parent, start_ns)
    if error is not None:
        span.set_attribute("error.type", getattr(error, "kind", type(error).__name__))
        span.set_status(Status(_ERROR, _describe(error)))
    span.end()


# ---------------------------------------------------------------- attempts (CLIENT spans)


def start_attempt_span(
    operation: str,
    upstream_model: str,
    attributes: dict[str, Any],
    headers: dict[str, str] | None,
) -> tuple[Span, object]:
    """Start one attempt's CLIENT span and make it current; inject `traceparent` into `headers` if given."""
    tracing, parent = spans.current_parent()
    span = (tracing or _spans()).start(f"{operation} {upstream_model}", _CLIENT, attributes, parent)
    if headers is not None:
        spans.traceparent(span.get_span_context(), headers)
    return span, spans.enter(span)


def inject(span: Span, headers: dict[str, str]) -> None:
    """Put `span`'s W3C `traceparent` (and `tracestate`) into `headers`."""
    spans.traceparent(span.get_span_context(), headers)


def leave(token: object) -> None:
    """Stop making a span current (the span itself may live on, e.g. a stream's attempt)."""
    spans.leave(token)  # type: ignore[arg-type]


def fail_span(span: Span, error: BaseException) -> None:
    """Mark a span failed with a GatewayError (error.type = its kind) or a cancellation, and end it."""
    kind = getattr(error, "kind", None) or type(error).__name__  # CancelledError: the client left, a hedge won
    span.set_attribute("error.type", kind)
    span.set_status(Status(_ERROR, _describe(error)))
    span.end()


def _describe(error: BaseException) -> str:
    """A short, scrubbed description for a span status (never a key; messages are the client's anyway)."""
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    return scrub(message)[:300]


@functools.lru_cache(maxsize=256)
def server_of(base_url: str | None) -> tuple[str, int] | None:
    """`server.address` / `server.port` of a provider's base URL."""
    if not base_url:
        return None
    parts = urlsplit(base_url)
    if not parts.hostname:
        return None
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def add_event(name: str, attributes: dict[str, Any]) -> None:
    """An event on the current span (no-op when tracing is off or nothing is recording)."""
    span = spans.current()
    if span is not None and span.is_recording():
        span.add_event(name, attributes)


def annotate(**attributes: Any) -> None:
    """Set attributes on the current span, e.g. `annotate(**{"escalade.gate.score": 0.8})` (no-op when off).

    Keys with dots are passed with `**{...}`; values must be str, bool, int, float or lists of one of them.
    """
    span = spans.current()
    if span is not None and span.is_recording():
        span.set_attributes(attributes)


def circuit_event(deployment: str, old: str, new: str, why: str | None = None) -> None:
    """Record a circuit breaker change (closed / half_open / open) as an event on the current span.

    Call it where the breaker changes state; inside a request it lands on that request's attempt or
    request span, outside one (a background sync) it is dropped.
    """
    if not tracing_active():
        return
    attributes = {"escalade.deployment": deployment, "escalade.circuit.from": old, "escalade.circuit.to": new}
    if why:
        attributes["escalade.circuit.why"] = scrub(why)[:300]
    add_event("escalade.circuit", attributes)

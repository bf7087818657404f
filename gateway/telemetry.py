"""OpenTelemetry: the only module that touches the SDK. Off unless the standard OTEL_* variables ask.

With no exporter configured the API's no-op tracer is used, so spans cost next to nothing.
"""

import os
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from opentelemetry import trace

tracer = trace.get_tracer("escalade")

_configured = False


def tracing_active() -> bool:
    """True once an SDK tracer provider is installed (by setup_tracing or by the embedding program).

    While it is not, escalade creates no span objects at all: even no-op spans cost measurably.
    """
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def tracing_requested(env: dict[str, str] | None = None) -> bool:
    env = dict(os.environ) if env is None else env
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none" or env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    return bool(exporter or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def setup_tracing() -> bool:
    """Install the SDK tracer provider with a batch exporter when OTEL_* variables ask for one."""
    global _configured
    if _configured or not tracing_requested():
        return _configured
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    exporter: SpanExporter
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "escalade")})
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _configured = True
    return True


def server_span(name: str, **attributes: Any) -> AbstractContextManager[trace.Span]:
    """The SERVER span of one request; a shared no-op span while tracing is off."""
    if not tracing_active():
        return nullcontext(trace.INVALID_SPAN)
    return tracer.start_as_current_span(name, kind=trace.SpanKind.SERVER, attributes=attributes)

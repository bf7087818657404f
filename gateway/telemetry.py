"""OpenTelemetry: the only module that touches the SDK. Off unless the standard OTEL_* variables ask.

With no exporter configured the API's no-op tracer is used, so spans cost next to nothing.
"""

import os

from opentelemetry import trace

tracer = trace.get_tracer("escalade")

_configured = False


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

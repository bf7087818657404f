"""Spans: one SERVER span per request, one CLIENT span per upstream attempt, no content, no secrets."""

import json

import openai
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

FALLBACK = {
    "models": {"primary": {"provider": "mock", "model": "PRIMARY"}, "backup": {"provider": "mock", "model": "ok"}},
    "routes": {"auto": {"models": ["primary", "backup"]}},
}


@pytest.fixture(scope="module")
def spans():
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def test_request_and_attempt_spans(make_gateway, mock, spans, monkeypatch):
    monkeypatch.setenv("MOCK_KEY", "sk-trace-canary-0123456789")
    gw = make_gateway(FALLBACK, providers={"mock": {"type": "openai", "base_url": mock.base_url, "api_key_env": "MOCK_KEY"}})
    mock.script("PRIMARY", ["fault:status?code=503"])
    spans.clear()
    c = openai.OpenAI(base_url=gw.base_url, api_key="client-secret-key", max_retries=0)
    c.chat.completions.create(model="auto", messages=[{"role": "user", "content": "the secret prompt"}])
    finished = spans.get_finished_spans()
    server = [s for s in finished if s.kind == trace.SpanKind.SERVER]
    clients = [s for s in finished if s.kind == trace.SpanKind.CLIENT]
    assert len(server) == 1 and server[0].attributes["escalade.deployment"] == "backup"
    assert [s.attributes["escalade.deployment"] for s in clients] == ["primary", "primary", "backup"]
    assert all(s.parent.span_id == server[0].context.span_id for s in clients)
    assert clients[0].attributes["error.type"] == "UpstreamUnavailable"
    assert clients[0].attributes["gen_ai.operation.name"] == "chat"
    assert clients[2].attributes["gen_ai.request.model"] == "ok"
    assert "error.type" not in clients[2].attributes
    dumped = json.dumps([dict(s.attributes) for s in finished] + [s.name for s in finished])
    assert "secret prompt" not in dumped and "sk-trace-canary" not in dumped and "client-secret-key" not in dumped

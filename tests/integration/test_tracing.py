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


def test_a_deployment_that_cannot_serve_the_request_is_skipped_with_the_reason_in_the_trace(make_gateway, mock, spans):
    gw = make_gateway(
        models={
            "plain": {"provider": "mock", "model": "PLAIN", "capabilities": ["json_schema"]},
            "tooled": {"provider": "mock", "model": "ok", "capabilities": ["tools", "json_schema"]},
        },
        routes={"auto": {"models": ["plain", "tooled"]}, "plain-only": {"models": ["plain"]}},
    )
    spans.clear()
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    raw = c.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "x"}], tools=tools
    )
    assert raw.headers["x-escalade-model"] == "tooled"
    assert not mock.records("PLAIN")
    [server] = [s for s in spans.get_finished_spans() if s.kind == trace.SpanKind.SERVER]
    assert list(server.attributes["escalade.skipped"]) == ["plain: cannot serve tools"]
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(model="plain-only", messages=[{"role": "user", "content": "x"}], tools=tools)
    assert "cannot serve tools" in info.value.message
    # no tools asked: the plain deployment answers first
    plain = c.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": "x"}])
    assert plain.headers["x-escalade-model"] == "plain"

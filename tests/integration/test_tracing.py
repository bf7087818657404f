"""Traces of real requests through the gateway, caught by the SDK's in-memory exporter.

One trace per request: a SERVER span, an INTERNAL span for the routing decision, one CLIENT span per
upstream attempt named and attributed per the OpenTelemetry GenAI conventions. No prompt text, no key.
"""

import hashlib
import json
import time

import openai
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

PRICE = {"input_per_mtok": 1.0, "output_per_mtok": 2.0}
FALLBACK = {
    "models": {
        "primary": {"provider": "mock", "model": "PRIMARY"},
        "backup": {"provider": "mock", "model": "ok", "price": PRICE},
        "cutter": {"provider": "mock", "model": "fault:cut?after=3"},
    },
    "routes": {"auto": {"models": ["primary", "backup"]}, "cut": {"models": ["cutter"]}},
}
CANARY_PROVIDER_KEY = "sk-trace-canary-0123456789"
CANARY_CLIENT_KEY = "client-canary-key-9876543210"


@pytest.fixture(scope="module")
def spans():
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def finished(spans, servers: int = 1, timeout: float = 5.0):
    """The finished spans once `servers` SERVER spans ended (the SERVER span ends just after the last byte)."""
    end = time.monotonic() + timeout
    while True:
        done = spans.get_finished_spans()
        if sum(s.kind == trace.SpanKind.SERVER for s in done) >= servers or time.monotonic() > end:
            return done
        time.sleep(0.01)


def by_kind(done, kind):
    return [s for s in done if s.kind == kind]


def routing(done):
    return [s for s in done if s.name.startswith("route ")]


def all_text(done) -> str:
    """Everything a trace backend would store: names, attributes, events, status descriptions."""
    parts = []
    for s in done:
        parts.append(s.name)
        parts.append(json.dumps(dict(s.attributes), default=str))
        parts += [json.dumps({"n": e.name, **dict(e.attributes)}, default=str) for e in s.events]
        parts.append(str(s.status.description))
    return "\n".join(parts)


def _client(gw, key="x"):
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=30)


def test_fallback_and_retry_make_one_trace_with_genai_client_spans(make_gateway, mock, spans, monkeypatch):
    monkeypatch.setenv("MOCK_KEY", CANARY_PROVIDER_KEY)
    gw = make_gateway(FALLBACK, providers={"mock": {"type": "openai", "base_url": mock.base_url, "api_key_env": "MOCK_KEY"}})
    mock.script("PRIMARY", ["fault:status?code=503"])
    spans.clear()
    raw = _client(gw).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "the secret prompt"}]
    )
    answer = raw.parse()
    done = finished(spans)
    [server] = by_kind(done, trace.SpanKind.SERVER)
    [decision] = routing(done)
    clients = by_kind(done, trace.SpanKind.CLIENT)

    assert server.name == "POST /v1/chat/completions"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["escalade.route"] == "auto" and server.attributes["escalade.deployment"] == "backup"
    assert {s.context.trace_id for s in done} == {server.context.trace_id}

    assert decision.parent.span_id == server.context.span_id
    assert list(decision.attributes["escalade.candidates"]) == ["primary", "backup"]
    assert decision.attributes["escalade.strategy"] == "priority"

    assert [s.attributes["escalade.deployment"] for s in clients] == ["primary", "primary", "backup"]
    assert [s.attributes["escalade.attempt"] for s in clients] == [1, 2, 1]
    assert all(s.parent.span_id == server.context.span_id for s in clients)
    first, retry, ok = clients
    assert first.name == "chat PRIMARY" and ok.name == "chat ok"
    assert first.attributes["error.type"] == "UpstreamUnavailable"
    assert first.status.status_code == trace.StatusCode.ERROR
    assert retry.attributes["escalade.retry.reason"] == "UpstreamUnavailable"
    assert "escalade.retry.reason" not in first.attributes and "escalade.retry.reason" not in ok.attributes
    for s in clients:
        assert s.attributes["gen_ai.operation.name"] == "chat"
        assert s.attributes["gen_ai.provider.name"] == "openai" == s.attributes["gen_ai.system"]
        assert s.attributes["escalade.route"] == "auto"
        assert s.attributes["escalade.policy.version"] == raw.headers["x-escalade-policy-version"]
        assert s.attributes["server.address"] == "127.0.0.1"
    assert ok.attributes["gen_ai.request.model"] == "ok" and ok.attributes["gen_ai.response.model"] == "ok"
    assert ok.attributes["gen_ai.usage.input_tokens"] == answer.usage.prompt_tokens
    assert ok.attributes["gen_ai.usage.output_tokens"] == answer.usage.completion_tokens
    assert list(ok.attributes["gen_ai.response.finish_reasons"]) == ["stop"]
    expected_cost = (answer.usage.prompt_tokens * 1.0 + answer.usage.completion_tokens * 2.0) / 1e6
    assert ok.attributes["escalade.cost_usd"] == pytest.approx(expected_cost)
    assert ok.attributes["escalade.ttft_ms"] > 0
    assert "error.type" not in ok.attributes

    [backoff] = [e for e in server.events if e.name == "escalade.backoff"]
    assert backoff.attributes["escalade.deployment"] == "primary"
    assert backoff.attributes["escalade.retry.reason"] == "UpstreamUnavailable"
    assert backoff.attributes["escalade.backoff_ms"] >= 0

    text = all_text(done)
    assert "secret prompt" not in text and "mock answer" not in text
    assert CANARY_PROVIDER_KEY not in text and "gen_ai.input.messages" not in text


def test_skipped_deployments_and_the_reason_are_on_the_routing_span(make_gateway, mock, spans):
    gw = make_gateway(
        models={
            "plain": {"provider": "mock", "model": "PLAIN", "capabilities": ["json_schema"]},
            "tooled": {"provider": "mock", "model": "ok", "capabilities": ["tools", "json_schema"]},
        },
        routes={"auto": {"models": ["plain", "tooled"]}, "plain-only": {"models": ["plain"]}},
    )
    spans.clear()
    c = _client(gw)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    raw = c.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "x"}], tools=tools
    )
    assert raw.headers["x-escalade-model"] == "tooled"
    assert not mock.records("PLAIN")
    [decision] = routing(finished(spans))
    assert list(decision.attributes["escalade.skipped"]) == ["plain: cannot serve tools"]
    assert list(decision.attributes["escalade.candidates"]) == ["tooled"]

    spans.clear()
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(model="plain-only", messages=[{"role": "user", "content": "x"}], tools=tools)
    assert "cannot serve tools" in info.value.message
    done = finished(spans)
    [decision] = routing(done)
    assert decision.status.status_code == trace.StatusCode.ERROR and "cannot serve tools" in decision.status.description
    [server] = by_kind(done, trace.SpanKind.SERVER)
    assert server.attributes["http.response.status_code"] == 400 and server.attributes["error.type"] == "InvalidRequest"
    # no tools asked: the plain deployment answers first
    plain = c.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": "x"}])
    assert plain.headers["x-escalade-model"] == "plain"


def test_a_stream_attempt_span_lasts_until_the_stream_ends(make_gateway, mock, spans):
    gw = make_gateway(FALLBACK)
    mock.script("PRIMARY", ["fault:status?code=503"])
    spans.clear()
    stream = _client(gw).chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "hi"}], stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    usage = chunks[-1].usage
    done = finished(spans)
    [server] = by_kind(done, trace.SpanKind.SERVER)
    primary, _, ok = by_kind(done, trace.SpanKind.CLIENT)
    assert primary.attributes["error.type"] == "UpstreamUnavailable"
    assert ok.attributes["escalade.stream.committed"] is True
    assert ok.attributes["escalade.stream.truncated"] is False
    assert ok.attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens
    assert list(ok.attributes["gen_ai.response.finish_reasons"]) == ["stop"]
    assert ok.attributes["escalade.cost_usd"] > 0
    assert ok.attributes["escalade.ttft_ms"] > 0
    assert ok.end_time <= server.end_time
    assert server.attributes["escalade.stream.truncated"] is False


def test_a_cut_stream_is_marked_truncated_with_its_error(make_gateway, mock, spans):
    gw = make_gateway(FALLBACK)
    spans.clear()
    stream = _client(gw).chat.completions.create(model="cut", messages=[{"role": "user", "content": "hi"}], stream=True)
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass
    done = finished(spans)
    [server] = by_kind(done, trace.SpanKind.SERVER)
    [attempt] = by_kind(done, trace.SpanKind.CLIENT)
    assert attempt.attributes["escalade.stream.committed"] is True
    assert attempt.attributes["escalade.stream.truncated"] is True
    assert attempt.attributes["error.type"].startswith("Upstream")
    assert attempt.status.status_code == trace.StatusCode.ERROR
    assert server.attributes["escalade.stream.truncated"] is True
    assert server.attributes["error.type"] == attempt.attributes["error.type"]
    assert server.attributes["http.response.status_code"] == 200  # the status went out before the cut


def test_an_incoming_traceparent_is_continued_and_propagated_only_when_the_policy_says(make_gateway, mock, spans):
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    header = {"traceparent": f"00-{trace_id}-{parent_id}-01"}
    for propagate in (False, True):
        gw = make_gateway(FALLBACK, telemetry={"propagate_trace_context": propagate})
        mock.reset()
        mock.script("PRIMARY", ["fault:status?code=503"])
        spans.clear()
        _client(gw).chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "hi"}], extra_headers=header
        )
        done = finished(spans)
        [server] = by_kind(done, trace.SpanKind.SERVER)
        assert f"{server.context.trace_id:032x}" == trace_id
        assert f"{server.parent.span_id:016x}" == parent_id and server.parent.is_remote
        sent = [r["headers"].get("traceparent") for r in mock.records()]
        if not propagate:
            assert sent == [None, None, None]  # primary twice, backup once: the caller's header is not forwarded
            continue
        clients = by_kind(done, trace.SpanKind.CLIENT)
        assert sent == [f"00-{trace_id}-{s.context.span_id:016x}-01" for s in clients]


def test_content_is_recorded_only_on_routes_that_ask(make_gateway, mock, spans):
    gw = make_gateway(
        models={"ok": {"provider": "mock", "model": "ok"}},
        routes={"open": {"models": ["ok"], "record_content": True}, "closed": {"models": ["ok"]}},
    )
    c = _client(gw)
    for route in ("open", "closed"):
        spans.clear()
        c.chat.completions.create(model=route, messages=[{"role": "user", "content": "tell me a secret"}])
        text = all_text(finished(spans))
        assert ("tell me a secret" in text) is (route == "open")
        assert ("mock answer to: tell me a secret" in text) is (route == "open")
    spans.clear()
    stream = c.chat.completions.create(model="open", messages=[{"role": "user", "content": "stream it"}], stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) == "mock answer to: stream it"
    [attempt] = by_kind(finished(spans), trace.SpanKind.CLIENT)
    assert "stream it" in attempt.attributes["gen_ai.input.messages"]
    assert json.loads(attempt.attributes["gen_ai.output.messages"])[0]["content"] == "mock answer to: stream it"


def test_errors_before_routing_are_traced_without_the_client_key(make_gateway, mock, spans):
    good = hashlib.sha256(b"the-good-key").hexdigest()
    gw = make_gateway(FALLBACK, keys=[{"name": "app", "key_sha256": good}])
    spans.clear()
    with pytest.raises(openai.AuthenticationError):
        _client(gw, CANARY_CLIENT_KEY).chat.completions.create(model="auto", messages=[{"role": "user", "content": "x"}])
    done = finished(spans)
    [server] = by_kind(done, trace.SpanKind.SERVER)
    assert server.attributes["http.response.status_code"] == 401
    assert server.attributes["error.type"] == "Unauthorized"
    assert server.attributes["escalade.route"] == "unknown"
    assert CANARY_CLIENT_KEY not in all_text(done)


def test_an_unsampled_request_makes_no_span_but_still_passes_the_trace_on(make_gateway, mock, spans):
    """The caller said "not sampled" (flags 00): the parent-based sampler drops the request, so escalade builds
    no routing or attempt span; the upstream still joins the caller's trace, unsampled."""
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    gw = make_gateway(FALLBACK, telemetry={"propagate_trace_context": True})
    spans.clear()
    _client(gw).chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-00"},
    )
    time.sleep(0.2)
    assert spans.get_finished_spans() == ()
    [sent] = [r["headers"].get("traceparent") for r in mock.records()]
    assert sent.startswith(f"00-{trace_id}-") and sent.endswith("-00")


def test_a_circuit_that_opens_shows_as_an_event_on_the_failing_attempt(make_gateway, mock, spans):
    gw = make_gateway(FALLBACK, resilience={"breaker": {"consecutive_failures": 2, "open_s": 30}})
    mock.script("PRIMARY", ["fault:status?code=503"])
    spans.clear()
    _client(gw).chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
    clients = by_kind(finished(spans), trace.SpanKind.CLIENT)
    events = [(s.attributes["escalade.attempt"], e) for s in clients for e in s.events if e.name == "escalade.circuit"]
    [(attempt, event)] = events  # the second consecutive failure opens primary's circuit
    assert attempt == 2
    assert event.attributes["escalade.deployment"] == "primary"
    assert (event.attributes["escalade.circuit.from"], event.attributes["escalade.circuit.to"]) == ("closed", "open")


def test_a_cascade_rung_passed_over_ends_its_stream_span_and_the_gate_verdict_is_on_the_request(
    make_gateway, mock, spans
):
    gw = make_gateway(
        models={
            "small": {"provider": "mock", "model": "replay:unsure", "local": True, "capabilities": ["logprobs"]},
            "large": {"provider": "mock", "model": "ok"},
        },
        routes={"ladder": {"strategy": "cascade", "rungs": [{"models": ["small"]}, {"models": ["large"]}],
                           "gate": {"checks": ["empty"], "min_score": 0.6}}},
    )  # fmt: skip
    spans.clear()
    list(_client(gw).chat.completions.create(model="ladder", messages=[{"role": "user", "content": "hi"}], stream=True))
    done = finished(spans)
    [server] = by_kind(done, trace.SpanKind.SERVER)
    small, large = by_kind(done, trace.SpanKind.CLIENT)
    assert small.attributes["escalade.stream.dropped"] == "gate_failed"
    assert large.attributes["escalade.stream.truncated"] is False
    assert server.attributes["escalade.escalated"] is True and server.attributes["escalade.deployment"] == "large"
    assert server.attributes["escalade.gate.score"] < 0.6

"""The mock upstream's other wire formats: Anthropic, Azure OpenAI, Gemini, Mistral (raw HTTP)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.mock_upstream import run_in_thread

ANTHROPIC_KEY = "sk-ant-api03-SECRET-0123456789"
AZURE_KEY = "azure0SECRET0123456789abcdef"
GEMINI_KEY = "AIzaSyMockSECRET0123456789abcdefghijk"
MISTRAL_KEY = "mistral-SECRET-0123456789"
TOOL_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@pytest.fixture(scope="module")
def mock():
    h = run_in_thread()
    yield h
    h.stop()


@pytest.fixture
def http(mock):
    mock.reset()
    with httpx.Client(base_url=mock.url, timeout=10) as client:
        yield client


def sse_events(text: str) -> list[tuple[str | None, Any]]:
    """(event name, parsed data) per SSE event; data that is not JSON is kept as a string."""
    out: list[tuple[str | None, Any]] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        name = None
        data = []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        raw = "\n".join(data)
        try:
            out.append((name, json.loads(raw)))
        except ValueError:
            out.append((name, raw))
    return out


# ---------------------------------------------------------------- Anthropic

AH = {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"}


def messages(http: httpx.Client, model: str = "ok", headers: dict | None = None, **body: Any) -> httpx.Response:
    doc = {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "hello there"}], **body}
    return http.post("/v1/messages", headers=AH if headers is None else headers, json=doc)


def test_anthropic_message(http, mock):
    r = messages(http, system="be brief", stop_sequences=["there"])
    body = r.json()
    assert r.status_code == 200 and body["type"] == "message" and body["id"].startswith("msg_")
    assert body["content"] == [{"type": "text", "text": "mock answer to: hello"}]
    assert body["stop_reason"] == "stop_sequence" and body["stop_sequence"] == "there"
    assert set(body["usage"]) == {
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    }
    assert mock.records()[0]["headers"]["x-api-key"] == ANTHROPIC_KEY


def test_anthropic_thinking_tools_and_cache(http):
    body = messages(
        http,
        "ok?tool_calls=2&cached=100",
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        tools=[{"name": "weather", "input_schema": TOOL_SCHEMA}],
    ).json()
    kinds = [b["type"] for b in body["content"]]
    assert kinds == ["thinking", "tool_use", "tool_use"] and body["stop_reason"] == "tool_use"
    assert body["content"][0]["signature"] and body["content"][1]["input"] == {"city": "x"}
    assert body["usage"]["cache_read_input_tokens"] == 100


def test_anthropic_stream_event_sequence(http):
    r = messages(
        http,
        "ok?tokens=3",
        stream=True,
        tools=[{"name": "w", "input_schema": TOOL_SCHEMA}],
        tool_choice={"type": "none"},
    )
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    names = [n for n, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(n == d["type"] for n, d in events)
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == "lorem ipsum dolor"
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"


def test_anthropic_checks_headers_and_body(http):
    r = messages(http, headers={"anthropic-version": "2023-06-01"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = messages(http, headers={"x-api-key": "k"})
    assert r.status_code == 400 and "anthropic-version" in r.json()["error"]["message"]
    r = http.post("/v1/messages", headers=AH, json={"model": "ok", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["message"] == "max_tokens: Field required"
    r = messages(http, max_tokens=100, thinking={"type": "enabled", "budget_tokens": 1024})
    assert r.status_code == 400 and "budget_tokens" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("scenario", "status", "kind"),
    [
        ("fault:529", 529, "overloaded_error"),
        ("fault:500", 500, "api_error"),
        ("fault:429?retry_after=3", 429, "rate_limit_error"),
        ("fault:context_length", 400, "invalid_request_error"),
        ("fault:auth", 401, "authentication_error"),
    ],
)
def test_anthropic_errors(http, scenario, status, kind):
    r = messages(http, scenario)
    assert r.status_code == status
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == kind
    if status == 429:
        assert r.headers["retry-after"] == "3"
    if scenario == "fault:auth":
        assert ANTHROPIC_KEY in body["error"]["message"]


def test_anthropic_mid_stream_error_event_and_first_event_error(http):
    events = sse_events(messages(http, "fault:stream_error?after=2", stream=True).text)
    assert events[-1] == (
        "error",
        {
            "type": "error",
            "error": {"type": "overloaded_error", "message": "Overloaded"},
            "request_id": "req_mock0error",
        },
    )
    assert [d["delta"]["text"] for n, d in events if n == "content_block_delta"] == ["mock", " answer"]
    events = sse_events(messages(http, "fault:error_200?type=api_error", stream=True).text)
    assert len(events) == 1 and events[0][0] == "error" and events[0][1]["error"]["type"] == "api_error"


def test_anthropic_malformed_and_cut(http):
    events = sse_events(messages(http, "fault:malformed?at=4", stream=True).text)
    assert events[3] == ("content_block_delta", "{not json")
    with pytest.raises(httpx.RemoteProtocolError):
        messages(http, "fault:cut?after=1", stream=True)


# ---------------------------------------------------------------- Azure OpenAI


def azure(
    http: httpx.Client,
    deployment: str,
    operation: str = "chat/completions",
    key: str | None = AZURE_KEY,
    version: str | None = "2024-10-21",
    **body: Any,
) -> httpx.Response:
    query = f"?api-version={version}" if version else ""
    headers = {"api-key": key} if key else {}
    doc = body or {"messages": [{"role": "user", "content": "hello there"}]}
    return http.post(f"/openai/deployments/{quote(deployment, safe='')}/{operation}{query}", headers=headers, json=doc)


def test_azure_chat_has_filter_results(http, mock):
    body = azure(http, "gpt-4o-prod").json()
    assert body["model"] == "gpt-4o-prod" and body["choices"][0]["message"]["content"] == "mock answer to: hello there"
    assert body["prompt_filter_results"][0]["content_filter_results"]["hate"]["filtered"] is False
    assert "content_filter_results" in body["choices"][0]
    record = mock.records()[0]
    assert record["model"] == "gpt-4o-prod" and record["query"] == {"api-version": "2024-10-21"}


def test_azure_stream_opens_with_prompt_annotations(http):
    r = azure(
        http, "dep", messages=[{"role": "user", "content": "hi"}], stream=True, stream_options={"include_usage": True}
    )
    events = sse_events(r.text)
    first = events[0][1]
    assert first["choices"] == [] and first["id"] == "" and "prompt_filter_results" in first
    assert events[-1][1] == "[DONE]" and events[-2][1]["usage"]["completion_tokens"] > 0


def test_azure_scenario_from_the_deployment_and_scripts(http, mock):
    r = azure(http, "fault:429?retry_after=2")
    assert r.status_code == 429 and r.headers["retry-after"] == "2" and r.json()["error"]["code"] == "429"
    mock.script("flaky-deploy", ["fault:503", "ok"])
    assert azure(http, "flaky-deploy").status_code == 503
    assert azure(http, "flaky-deploy").status_code == 200


def test_azure_checks_and_errors(http):
    assert azure(http, "dep", version=None).status_code == 404
    r = azure(http, "dep", key=None)
    assert r.status_code == 401 and "missing subscription key" in r.json()["error"]["message"]
    r = azure(http, "fault:auth")
    assert r.status_code == 401 and AZURE_KEY in r.json()["error"]["message"]
    r = azure(http, "ok?filter=prompt")
    assert r.status_code == 400 and r.json()["error"]["code"] == "content_filter"
    body = azure(http, "ok?filter=completion").json()
    assert body["choices"][0]["finish_reason"] == "content_filter"
    assert azure(http, "fault:404").json()["error"]["code"] == "DeploymentNotFound"


def test_azure_embeddings_and_completions(http):
    body = azure(http, "emb", "embeddings", input=["a", "b"], dimensions=4).json()
    assert [len(d["embedding"]) for d in body["data"]] == [4, 4]
    body = azure(http, "inst", "completions", prompt="say hi").json()
    assert body["object"] == "text_completion"


# ---------------------------------------------------------------- Gemini


def gemini(
    http: httpx.Client,
    model: str,
    verb: str = "generateContent",
    key: str | None = GEMINI_KEY,
    query: str = "",
    **body: Any,
) -> httpx.Response:
    doc = body or {"contents": [{"role": "user", "parts": [{"text": "hello there"}]}]}
    headers = {"x-goog-api-key": key} if key else {}
    return http.post(f"/v1beta/models/{quote(model, safe='')}:{verb}{query}", headers=headers, json=doc)


def test_gemini_generate(http, mock):
    body = gemini(
        http,
        "gemini-2.5-flash",
        contents=[{"role": "user", "parts": [{"text": "hello there"}]}],
        systemInstruction={"parts": [{"text": "be brief"}]},
        generationConfig={"thinkingConfig": {"includeThoughts": True}, "maxOutputTokens": 100},
    ).json()
    parts = body["candidates"][0]["content"]["parts"]
    assert parts[0]["thought"] is True and parts[1] == {"text": "mock answer to: hello there"}
    assert body["candidates"][0]["finishReason"] == "STOP" and body["modelVersion"] == "gemini-2.5-flash"
    usage = body["usageMetadata"]
    assert (
        usage["totalTokenCount"]
        == usage["promptTokenCount"] + usage["candidatesTokenCount"] + usage["thoughtsTokenCount"]
    )
    assert mock.records()[0]["model"] == "gemini-2.5-flash"


def test_gemini_function_calls_and_json(http):
    tools = [{"functionDeclarations": [{"name": "weather", "parameters": TOOL_SCHEMA}]}]
    body = gemini(
        http,
        "ok?tool_calls=2",
        contents=[{"parts": [{"text": "x"}]}],
        tools=tools,
        toolConfig={"functionCallingConfig": {"mode": "ANY"}},
    ).json()
    calls = [p["functionCall"] for p in body["candidates"][0]["content"]["parts"]]
    assert calls == [{"name": "weather", "args": {"city": "x"}}] * 2
    body = gemini(
        http,
        "ok",
        contents=[{"parts": [{"text": "x"}]}],
        generationConfig={"responseMimeType": "application/json", "responseJsonSchema": TOOL_SCHEMA},
    ).json()
    assert json.loads(body["candidates"][0]["content"]["parts"][0]["text"]) == {"city": "x"}


def test_gemini_stream_sse_and_array(http):
    r = gemini(http, "ok?tokens=3", "streamGenerateContent", query="?alt=sse")
    assert r.headers["content-type"].startswith("text/event-stream") and "\r\n\r\n" in r.text
    events = [d for _, d in sse_events(r.text)]
    assert "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in events) == "lorem ipsum dolor"
    assert (
        events[-1]["candidates"][0]["finishReason"] == "STOP" and "candidatesTokenCount" in events[-1]["usageMetadata"]
    )
    array = gemini(http, "ok?tokens=3", "streamGenerateContent").json()
    assert isinstance(array, list) and len(array) == 3


def test_gemini_errors(http):
    r = gemini(http, "fault:429?retry_after=4")
    error = r.json()["error"]
    assert (r.status_code, error["code"], error["status"]) == (429, 429, "RESOURCE_EXHAUSTED")
    assert error["details"][0]["retryDelay"] == "4s"
    r = gemini(http, "fault:auth")
    assert r.status_code == 400 and r.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    assert GEMINI_KEY in r.json()["error"]["message"]
    assert gemini(http, "ok", key=None).status_code == 403
    assert gemini(http, "fault:503").json()["error"]["status"] == "UNAVAILABLE"
    assert "exceeds the maximum number of tokens" in gemini(http, "fault:context_length").json()["error"]["message"]
    events = sse_events(gemini(http, "fault:stream_error?after=1", "streamGenerateContent", query="?alt=sse").text)
    assert events[-1][1]["error"]["status"] == "UNAVAILABLE"
    blocked = gemini(http, "ok?block=SAFETY").json()
    assert "candidates" not in blocked and blocked["promptFeedback"]["blockReason"] == "SAFETY"


def test_gemini_embeddings(http):
    body = gemini(
        http, "text-embedding-004", "embedContent", content={"parts": [{"text": "a"}]}, outputDimensionality=8
    ).json()
    assert len(body["embedding"]["values"]) == 8
    requests = [{"model": "models/e", "content": {"parts": [{"text": t}]}} for t in ("a", "b")]
    body = gemini(http, "e", "batchEmbedContents", requests=requests).json()
    assert len(body["embeddings"]) == 2


# ---------------------------------------------------------------- Mistral


def mistral(
    http: httpx.Client, model: str = "ok", key: str | None = MISTRAL_KEY, path: str = "chat/completions", **body: Any
) -> httpx.Response:
    doc = {"model": model, "messages": [{"role": "user", "content": "hello there"}], **body}
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return http.post(f"/mistral/v1/{path}", headers=headers, json=doc)


def test_mistral_chat_tool_ids_and_any(http):
    body = mistral(
        http, tools=[{"type": "function", "function": {"name": "w", "parameters": TOOL_SCHEMA}}], tool_choice="any"
    ).json()
    call = body["choices"][0]["message"]["tool_calls"][0]
    assert len(call["id"]) == 9 and call["id"].isalnum() and body["choices"][0]["finish_reason"] == "tool_calls"
    assert "system_fingerprint" not in body and set(body["usage"]) == {
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
    }


def test_mistral_stream_usage_on_the_finish_chunk(http):
    r = mistral(http, "ok?finish=model_length", stream=True, stream_options={"include_usage": True})
    events = [d for _, d in sse_events(r.text)]
    assert events[-1] == "[DONE]"
    last = events[-2]
    assert last["choices"][0]["finish_reason"] == "model_length" and last["usage"]["total_tokens"] > 0
    assert all(e["choices"] for e in events[:-1])  # no usage-only chunk


def test_mistral_stream_tool_call_whole(http):
    tools = [{"type": "function", "function": {"name": "w", "parameters": TOOL_SCHEMA}}]
    events = [d for _, d in sse_events(mistral(http, stream=True, tools=tools).text)]
    deltas = [e["choices"][0]["delta"] for e in events[:-1] if "tool_calls" in e["choices"][0]["delta"]]
    assert len(deltas) == 1 and json.loads(deltas[0]["tool_calls"][0]["function"]["arguments"]) == {"city": "x"}


def test_mistral_errors(http):
    r = mistral(http, "fault:429")
    assert r.status_code == 429 and r.json()["object"] == "error" and r.json()["type"] == "rate_limit_error"
    r = mistral(http, key=None)
    assert r.status_code == 401 and r.json()["message"] == "Unauthorized"
    assert MISTRAL_KEY in mistral(http, "fault:auth").json()["message"]
    assert mistral(http, "fault:context_length").json()["message"].startswith("Prompt contains")
    events = [d for _, d in sse_events(mistral(http, "fault:stream_error?after=1", stream=True).text)]
    assert events[-1]["object"] == "error"


def test_mistral_embeddings(http):
    r = mistral(http, "mistral-embed", path="embeddings", input=["a"], output_dimension=4)
    body = r.json()
    assert body["id"].startswith("emb-") and body["usage"]["completion_tokens"] == 0
    assert len(body["data"][0]["embedding"]) == 4


def test_openai_paths_are_unchanged(http):
    r = http.post(
        "/v1/chat/completions",
        json={
            "model": "fault:stream_error?after=1",
            "stream": True,
            "messages": [{"role": "user", "content": "hello there"}],
        },
    )
    events = [d for _, d in sse_events(r.text)]
    assert events[-1]["error"]["type"] == "server_error" and events[0]["choices"][0]["delta"]["role"] == "assistant"

"""End to end through every native adapter: OpenAI SDK -> escalade -> mock upstream in the provider's
own wire format (tests/mock_upstream: anthropic_wire, azure_wire, gemini_wire, mistral_wire).

Each test runs once per provider type. A type whose adapter is not registered in
providers/registry.py is skipped, saying so.
"""

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from providers.registry import PROVIDER_TYPES


@dataclass(frozen=True)
class Native:
    kind: str
    path: str
    """The upstream path (prefix) the adapter must call."""
    key_header: str
    overloaded: str
    """The scenario for the provider's own "busy, try again" answer."""

    def entry(self, url: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": self.kind, "base_url": url, "api_key_env": ENV[self.kind]}
        if self.kind == "azure_openai":
            entry["api_version"] = "2024-10-21"
        if self.kind == "mistral":
            entry["base_url"] = f"{url}/mistral/v1"
        return entry


NATIVES = [
    Native("anthropic", "/v1/messages", "x-api-key", "fault:529"),
    Native("azure_openai", "/openai/deployments/", "api-key", "fault:503"),
    Native("gemini", "/v1beta/models/", "x-goog-api-key", "fault:503"),
    Native("mistral", "/mistral/v1/chat/completions", "authorization", "fault:503"),
]
ENV = {n.kind: f"ESCALADE_TEST_{n.kind.upper()}_KEY" for n in NATIVES}
KEYS = {
    "anthropic": "sk-ant-api03-TESTSECRET0123456789abcdefXYZ",
    "azure_openai": "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
    "gemini": "AIzaSyTESTSECRET0123456789abcdefghijk",
    "mistral": "mistral-TESTSECRET-0123456789abcdef",
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
USER = [{"role": "user", "content": "hello there"}]


@pytest.fixture(params=NATIVES, ids=lambda n: n.kind)
def native(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Native:
    native: Native = request.param
    if native.kind not in PROVIDER_TYPES:
        pytest.skip(f"no `{native.kind}` adapter in providers/registry.py yet")
    monkeypatch.setenv(ENV[native.kind], KEYS[native.kind])
    return native


@pytest.fixture
def gateway(make_gateway, mock, native):
    """Start a gateway whose routes name models (scenarios) at the native provider: gateway(route=[models])."""

    def start(**routes: list[str]) -> Any:
        models = {m: {"provider": "native", "model": m} for ms in routes.values() for m in ms}
        names = {m: f"m{i}" for i, m in enumerate(models)}
        return make_gateway(
            providers={"native": native.entry(mock.url)},
            models={names[m]: spec for m, spec in models.items()},
            routes={route: {"models": [names[m] for m in ms]} for route, ms in routes.items()},
        )

    return start


def client(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0, timeout=30)


def upstream_records(mock: Any, native: Native) -> list[dict[str, Any]]:
    return [r for r in mock.records() if r["path"].startswith(native.path)]


# ---------------------------------------------------------------- answers


def test_plain_answer(gateway, mock, native):
    gw = gateway(auto=["ok"])
    answer = client(gw).chat.completions.create(
        model="auto", messages=[{"role": "system", "content": "be brief"}, *USER], max_tokens=100
    )
    assert answer.choices[0].message.content == "mock answer to: hello there"
    assert answer.choices[0].finish_reason == "stop"
    usage = answer.usage
    assert usage.prompt_tokens > 0 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    [record] = upstream_records(mock, native)
    assert record["headers"][native.key_header].endswith(KEYS[native.kind])
    assert "authorization" not in record["headers"] or native.kind == "mistral"


def test_stream_with_usage(gateway, native):
    gw = gateway(auto=["ok?tokens=6"])
    chunks = list(
        client(gw).chat.completions.create(
            model="auto", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "lorem ipsum dolor sit amet consectetur"
    assert chunks[0].choices and chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_stream_without_usage_shows_none(gateway):
    gw = gateway(auto=["ok"])
    chunks = list(client(gw).chat.completions.create(model="auto", messages=USER, stream=True))
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


def test_parallel_tool_calls_streamed_and_assembled(gateway, native):
    gw = gateway(auto=["ok?tool_calls=2"])
    calls: dict[int, dict[str, str]] = defaultdict(lambda: {"id": "", "name": "", "arguments": ""})
    finish = None
    for chunk in client(gw).chat.completions.create(model="auto", messages=USER, tools=[WEATHER], stream=True):
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or ():
                call = calls[delta.index]
                call["id"] += delta.id or ""
                if delta.function:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
    assert finish == "tool_calls"
    assert sorted(calls) == [0, 1]
    assert len({c["id"] for c in calls.values()}) == 2 and all(c["id"] for c in calls.values())
    for call in calls.values():
        assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "x"}


def test_tool_calls_non_stream(gateway):
    gw = gateway(auto=["ok"])
    answer = client(gw).chat.completions.create(model="auto", messages=USER, tools=[WEATHER], tool_choice="required")
    [call] = answer.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "x"}
    assert answer.choices[0].finish_reason == "tool_calls"


def test_json_schema(gateway):
    gw = gateway(auto=["ok"])
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}},
        "required": ["name"],
        "additionalProperties": False,
    }
    answer = client(gw).chat.completions.create(
        model="auto",
        messages=USER,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
    )
    assert json.loads(answer.choices[0].message.content) == {"name": "x"}


# ---------------------------------------------------------------- errors


def test_rejected_request_is_a_bad_request_with_the_provider_message(gateway, native):
    gw = gateway(auto=["fault:400?message=bad+thing+happened"])
    with pytest.raises(openai.BadRequestError) as caught:
        client(gw).chat.completions.create(model="auto", messages=USER)
    assert "bad thing happened" in caught.value.message


def test_context_length(gateway):
    gw = gateway(auto=["fault:context_length"])
    with pytest.raises(openai.BadRequestError) as caught:
        client(gw).chat.completions.create(model="auto", messages=USER)
    assert caught.value.code == "context_length_exceeded"


def test_rate_limited(gateway, mock, native):
    gw = gateway(auto=["fault:429?retry_after=0"])
    with pytest.raises(openai.RateLimitError):
        client(gw).chat.completions.create(model="auto", messages=USER)
    assert len(upstream_records(mock, native)) == 2  # retried once (policy: attempts 2)


def test_overloaded_is_retried(gateway, mock, native):
    mock.script("busy", [native.overloaded, "ok"])
    gw = gateway(auto=["busy"])
    raw = client(gw).chat.completions.with_raw_response.create(model="auto", messages=USER)
    assert raw.parse().choices[0].message.content == "mock answer to: hello there"
    assert raw.headers["x-escalade-attempts"] == "2"


def test_overloaded_falls_back(gateway, native):
    gw = gateway(auto=[f"{native.overloaded}", "ok?text=from+the+fallback"])
    raw = client(gw).chat.completions.with_raw_response.create(model="auto", messages=USER, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text == "from the fallback" and raw.headers["x-escalade-model"] == "m1"


def test_auth_error_is_a_502_without_the_key(gateway, mock, native):
    gw = gateway(auto=["fault:auth"])
    with pytest.raises(openai.InternalServerError) as caught:
        client(gw).chat.completions.create(model="auto", messages=USER)
    assert caught.value.status_code == 502
    body = caught.value.response.text
    assert KEYS[native.kind] not in body and KEYS[native.kind][:16] not in body
    assert len(upstream_records(mock, native)) == 1  # the provider's key is bad: no retry on it


def test_first_event_error_is_retried_before_commit(gateway, mock, native):
    mock.script("flaky-stream", ["fault:error_200", "ok"])
    gw = gateway(auto=["flaky-stream"])
    chunks = list(client(gw).chat.completions.create(model="auto", messages=USER, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "mock answer to: hello there"


def test_mid_stream_error_event_ends_the_stream_as_an_error(gateway, native):
    gw = gateway(auto=["fault:stream_error?after=2"])
    body = {"model": "auto", "messages": USER, "stream": True}
    with httpx.stream("POST", f"{gw.base_url}/chat/completions", json=body, timeout=10) as response:
        text = "".join(response.iter_text())
    assert response.status_code == 200
    assert '"error"' in text.split("\n\n")[-2] and "[DONE]" not in text


def test_cut_stream_is_never_complete(gateway):
    gw = gateway(auto=["fault:cut?after=2"])
    with pytest.raises(openai.APIError):
        list(client(gw).chat.completions.create(model="auto", messages=USER, stream=True))


# ---------------------------------------------------------------- embeddings


def test_embeddings_where_offered(gateway, native):
    if native.kind == "anthropic":
        gw = gateway(auto=["ok"])
        with pytest.raises(openai.BadRequestError):
            client(gw).embeddings.create(model="auto", input=["a"])
        return
    gw = gateway(auto=["text-embedding"])
    result = client(gw).embeddings.create(model="auto", input=["hello", "world"], dimensions=8)
    assert [len(d.embedding) for d in result.data] == [8, 8]

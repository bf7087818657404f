"""End to end with the official OpenAI SDK: SDK -> escalade (uvicorn, real sockets) -> mock upstream.

Each test asserts what a user sees (results, usage, headers, SDK exception classes) and what
reached the upstream (the mock's request log). What a client sees when an upstream fails (retries,
fallback, timeouts, cut streams, disconnects) is the fault suite: tests/integration/test_faults.py.
"""

import base64
import json
import struct

import httpx
import openai
import pytest

ROUTE = {"models": {"primary": {"provider": "mock", "model": "ok"}}, "routes": {"auto": {"models": ["primary"]}}}


def client(gw, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=kw.pop("api_key", "unused"), max_retries=0, timeout=30, **kw)


def user(text: str = "hello there") -> list[dict]:
    return [{"role": "user", "content": text}]


# ---------------------------------------------------------------- chat, the happy paths


def test_chat_plain_answer_usage_and_headers(make_gateway, mock):
    gw = make_gateway(ROUTE, models={"primary": {"provider": "mock", "model": "ok", "price": {"input_per_mtok": 1, "output_per_mtok": 2}}})
    raw = client(gw).chat.completions.with_raw_response.create(model="auto", messages=user())
    answer = raw.parse()
    assert answer.choices[0].message.content == "mock answer to: hello there"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.prompt_tokens > 0 and answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    assert raw.headers["x-escalade-route"] == "auto"
    assert raw.headers["x-escalade-model"] == "primary"
    assert raw.headers["x-escalade-attempts"] == "1"
    assert len(raw.headers["x-request-id"]) >= 8
    expected_cost = (answer.usage.prompt_tokens * 1 + answer.usage.completion_tokens * 2) / 1e6
    assert float(raw.headers["x-escalade-cost-usd"]) == pytest.approx(expected_cost)
    [record] = mock.records()
    assert record["body"]["model"] == "ok"  # the deployment's upstream name, not the route
    assert record["headers"]["x-request-id"] == raw.headers["x-request-id"]


def test_client_request_id_is_kept(make_gateway, mock):
    gw = make_gateway(ROUTE)
    raw = client(gw).chat.completions.with_raw_response.create(
        model="auto", messages=user(), extra_headers={"x-request-id": "my-trace-42"}
    )
    assert raw.headers["x-request-id"] == "my-trace-42"
    assert mock.records()[0]["headers"]["x-request-id"] == "my-trace-42"


def test_stream_with_usage(make_gateway, mock):
    gw = make_gateway(ROUTE)
    chunks = list(
        client(gw).chat.completions.create(
            model="auto", messages=user(), stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "mock answer to: hello there"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_stream_without_usage_hides_the_usage_chunk_escalade_asked_for(make_gateway, mock):
    gw = make_gateway(ROUTE)
    chunks = list(client(gw).chat.completions.create(model="auto", messages=user(), stream=True))
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert mock.records()[0]["body"]["stream_options"] == {"include_usage": True}


def test_stream_ends_with_done(make_gateway, mock):
    gw = make_gateway(ROUTE)
    body = {"model": "auto", "messages": user(), "stream": True}
    with httpx.stream("POST", f"{gw.base_url}/chat/completions", json=body, timeout=10) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-escalade-model"] == "primary"
        text = response.read().decode()
    assert text.endswith("data: [DONE]\n\n")
    assert text.count("data: [DONE]") == 1


def test_tools_and_tool_choice(make_gateway, mock):
    gw = make_gateway(ROUTE)
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ]
    answer = client(gw).chat.completions.create(model="auto", messages=user("weather?"), tools=tools, tool_choice="auto")
    call = answer.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments), dict)
    assert answer.choices[0].finish_reason == "tool_calls"
    named = {"type": "function", "function": {"name": "get_weather"}}
    stream = client(gw).chat.completions.create(model="auto", messages=user(), tools=tools, tool_choice=named, stream=True)
    name, args = "", ""
    for chunk in stream:
        for delta in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            name += delta.function.name or ""
            args += delta.function.arguments or ""
    assert name == "get_weather" and isinstance(json.loads(args), dict)
    assert mock.records()[-1]["body"]["tool_choice"] == named


def test_json_schema_n_logprobs_stop_seed_reasoning_effort(make_gateway, mock):
    gw = make_gateway(ROUTE)
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    answer = client(gw).chat.completions.create(
        model="auto",
        messages=user(),
        response_format={"type": "json_schema", "json_schema": {"name": "reply", "schema": schema, "strict": True}},
        n=2,
        logprobs=True,
        top_logprobs=2,
        stop=["\n\n"],
        seed=7,
        reasoning_effort="high",
    )
    assert len(answer.choices) == 2
    assert "answer" in json.loads(answer.choices[0].message.content)
    assert answer.choices[0].logprobs.content[0].top_logprobs
    sent = mock.records()[0]["body"]
    assert sent["n"] == 2 and sent["seed"] == 7 and sent["stop"] == ["\n\n"] and sent["reasoning_effort"] == "high"
    assert sent["response_format"]["json_schema"]["schema"] == schema
    assert sent["logprobs"] is True and sent["top_logprobs"] == 2


def test_unknown_fields_pass_through_and_deny_list_never_does(make_gateway, mock):
    gw = make_gateway(ROUTE)
    client(gw).chat.completions.create(
        model="auto",
        messages=user(),
        extra_body={
            "return_token_ids": True,  # a vLLM extension
            "api_base": "http://169.254.169.254/",
            "base_url": "http://evil.example/",
            "api_key": "sk-client-supplied",
            "extra_headers": {"x-api-key": "stolen"},
            "user_config": {"model_list": []},
        },
        extra_headers={"x-api-key": "client-header", "cookie": "a=b"},
    )
    record = mock.records()[0]
    assert record["body"]["return_token_ids"] is True
    for denied in ("api_base", "base_url", "api_key", "extra_headers", "user_config"):
        assert denied not in record["body"]
    assert "x-api-key" not in record["headers"] and "cookie" not in record["headers"]


def test_provider_key_from_env_reaches_upstream_and_client_key_does_not(make_gateway, mock, monkeypatch):
    monkeypatch.setenv("MOCK_KEY", "sk-provider-canary-1234567890")
    gw = make_gateway(ROUTE, providers={"mock": {"type": "openai", "base_url": mock.base_url, "api_key_env": "MOCK_KEY"}})
    client(gw, api_key="client-virtual-key").chat.completions.create(model="auto", messages=user())
    assert mock.records()[0]["headers"]["authorization"] == "Bearer sk-provider-canary-1234567890"


# ---------------------------------------------------------------- legacy completions, embeddings, models


def test_legacy_completions(make_gateway, mock):
    gw = make_gateway(ROUTE)
    answer = client(gw).completions.create(model="auto", prompt="Say hi", max_tokens=5)
    assert answer.choices[0].text and answer.usage.completion_tokens <= 5
    chunks = list(client(gw).completions.create(model="auto", prompt="Say hi", stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    assert mock.records()[-1]["path"] == "/v1/completions"


def test_embeddings_float_and_base64(make_gateway, mock):
    gw = make_gateway(ROUTE)
    floats = client(gw).embeddings.create(model="auto", input=["a", "b"], encoding_format="float")
    assert len(floats.data) == 2 and all(isinstance(x, float) for x in floats.data[0].embedding)
    default = client(gw).embeddings.create(model="auto", input="a")  # the SDK asks for base64 and decodes it
    assert default.data[0].embedding == pytest.approx(floats.data[0].embedding)
    raw = httpx.post(f"{gw.base_url}/embeddings", json={"model": "auto", "input": "a", "encoding_format": "base64"}).json()
    decoded = struct.unpack(f"<{len(floats.data[0].embedding)}f", base64.b64decode(raw["data"][0]["embedding"]))
    assert list(decoded) == pytest.approx(floats.data[0].embedding)


def test_models_list(make_gateway):
    gw = make_gateway(ROUTE, routes={"auto": {"models": ["primary"]}, "other": {"models": ["primary"]}})
    assert [m.id for m in client(gw).models.list()] == ["auto", "other"]
    assert client(gw).models.retrieve("other").id == "other"
    with pytest.raises(openai.NotFoundError):
        client(gw).models.retrieve("missing")

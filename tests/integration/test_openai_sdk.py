"""End to end with the official OpenAI SDK: SDK -> escalade (uvicorn, real sockets) -> mock upstream.

Each test asserts what a user sees (results, usage, headers, SDK exception classes) and what
reached the upstream (the mock's request log).
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


# ---------------------------------------------------------------- fallback and retries


FALLBACK = {
    "models": {"primary": {"provider": "mock", "model": "PRIMARY"}, "backup": {"provider": "mock", "model": "ok?tokens=3"}},
    "routes": {"auto": {"models": ["primary", "backup"]}},
}


def _primary(mock, steps, **route):
    mock.script("PRIMARY", steps)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("fault", "primary_attempts"),
    [
        ("fault:status?code=500", 2),
        ("fault:status?code=503", 2),
        ("fault:429", 2),
        ("fault:reset", 2),
        ("fault:error_200", 2),
        ("fault:auth", 1),  # never retried on the same provider
    ],
)
def test_fallback_before_first_token(make_gateway, mock, fault, primary_attempts, stream):
    gw = make_gateway(FALLBACK)
    mock.script("PRIMARY", [fault])
    c = client(gw)
    raw = c.chat.completions.with_raw_response.create(model="auto", messages=user(), stream=stream)
    assert raw.headers["x-escalade-model"] == "backup"
    assert raw.headers["x-escalade-attempts"] == str(primary_attempts + 1)
    if stream:
        text = "".join(ch.choices[0].delta.content or "" for ch in raw.parse() if ch.choices)
    else:
        text = raw.parse().choices[0].message.content
    assert text
    assert len(mock.records("PRIMARY")) == primary_attempts


def test_silent_upstream_stream_falls_back_after_the_header_timeout_without_retry(make_gateway, mock):
    gw = make_gateway(FALLBACK, timeouts={"headers_s": 0.5})
    mock.script("PRIMARY", ["fault:never"])
    raw = client(gw).chat.completions.with_raw_response.create(model="auto", messages=user(), stream=True)
    assert raw.headers["x-escalade-model"] == "backup"
    assert len(mock.records("PRIMARY")) == 1
    assert mock.records("ok?tokens=3")[0]["t"] - mock.records("PRIMARY")[0]["t"] < 1.5


def test_500_once_then_ok_is_retried_on_the_same_deployment(make_gateway, mock):
    gw = make_gateway(FALLBACK)
    mock.script("PRIMARY", ["fault:status?code=500", "ok"])
    raw = client(gw).chat.completions.with_raw_response.create(model="auto", messages=user())
    assert raw.headers["x-escalade-model"] == "primary" and raw.headers["x-escalade-attempts"] == "2"


def test_retry_after_is_honoured(make_gateway, mock):
    gw = make_gateway(FALLBACK)
    mock.script("PRIMARY", ["fault:429?retry_after=1", "ok"])
    raw = client(gw).chat.completions.with_raw_response.create(model="auto", messages=user())
    assert raw.headers["x-escalade-model"] == "primary"
    first, second = mock.records("PRIMARY")
    assert second["t"] - first["t"] >= 0.95


def test_retry_after_over_the_cap_falls_back_at_once(make_gateway, mock):
    gw = make_gateway(FALLBACK)
    mock.script("PRIMARY", ["fault:429?retry_after=30"])
    raw = client(gw).chat.completions.with_raw_response.create(model="auto", messages=user())
    assert raw.headers["x-escalade-model"] == "backup"
    assert len(mock.records("PRIMARY")) == 1
    assert mock.records("ok?tokens=3")[0]["t"] - mock.records("PRIMARY")[0]["t"] < 1.0


def test_slow_first_token_falls_back(make_gateway, mock):
    gw = make_gateway(FALLBACK, timeouts={"first_token_s": 0.5})
    mock.script("PRIMARY", ["fault:slow_first?delay=3"])
    raw = client(gw).chat.completions.with_raw_response.create(model="auto", messages=user(), stream=True)
    assert raw.headers["x-escalade-model"] == "backup"
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)


def test_slow_first_token_on_the_last_deployment_is_waited_for(make_gateway, mock):
    gw = make_gateway(FALLBACK, timeouts={"first_token_s": 0.3}, routes={"auto": {"models": ["primary"]}})
    mock.script("PRIMARY", ["fault:slow_first?delay=0.8"])
    chunks = list(client(gw).chat.completions.create(model="auto", messages=user(), stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_all_deployments_failing_returns_the_first_error(make_gateway, mock):
    gw = make_gateway(FALLBACK)
    mock.script("PRIMARY", ["fault:429?retry_after=30"])
    mock.script("ok?tokens=3", ["fault:status?code=400"])
    with pytest.raises(openai.RateLimitError) as info:
        client(gw).chat.completions.create(model="auto", messages=user())
    assert info.value.response.headers.get("retry-after") == "30"


def test_upstream_400_is_the_clients_error_and_not_retried(make_gateway, mock):
    gw = make_gateway(FALLBACK)
    mock.script("PRIMARY", ["fault:status?code=400"])
    with pytest.raises(openai.BadRequestError):
        client(gw).chat.completions.create(model="auto", messages=user())
    assert len(mock.records("PRIMARY")) == 1 and not mock.records("ok?tokens=3")


def test_context_length_exceeded(make_gateway, mock):
    gw = make_gateway(FALLBACK, routes={"auto": {"models": ["primary"]}})
    mock.script("PRIMARY", ["fault:context_length"])
    with pytest.raises(openai.BadRequestError) as info:
        client(gw).chat.completions.create(model="auto", messages=user())
    assert info.value.code == "context_length_exceeded"


def test_provider_auth_error_is_502_and_never_leaks_the_key(make_gateway, mock, monkeypatch):
    monkeypatch.setenv("MOCK_KEY", "sk-canary-abcdef0123456789")
    gw = make_gateway(
        FALLBACK,
        providers={"mock": {"type": "openai", "base_url": mock.base_url, "api_key_env": "MOCK_KEY"}},
        routes={"auto": {"models": ["primary"]}},
    )
    mock.script("PRIMARY", ["fault:auth"])
    with pytest.raises(openai.InternalServerError) as info:
        client(gw).chat.completions.create(model="auto", messages=user())
    assert info.value.status_code == 502
    assert "sk-canary" not in info.value.response.text
    assert "sk-canary" in json.dumps(mock.records("PRIMARY")[0]["headers"])  # the upstream did get it


def test_redirect_is_not_followed(make_gateway, mock):
    gw = make_gateway(FALLBACK, routes={"auto": {"models": ["primary"]}})
    mock.script("PRIMARY", [f"fault:redirect?to={mock.base_url}/chat/completions"])
    with pytest.raises(openai.InternalServerError) as info:
        client(gw).chat.completions.create(model="auto", messages=user())
    assert info.value.status_code == 502
    assert len(mock.records()) == 1


# ---------------------------------------------------------------- after the commit point


def test_stream_cut_after_content_is_an_in_band_error_without_done(make_gateway, mock):
    gw = make_gateway(FALLBACK)
    mock.script("PRIMARY", ["fault:cut?after=3"])
    stream = client(gw).chat.completions.create(model="auto", messages=user(), stream=True)
    got = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            got.append(chunk.choices[0].delta.content or "")
    assert "".join(got)  # the client saw content before the error
    body = {"model": "auto", "messages": user(), "stream": True}
    with httpx.stream("POST", f"{gw.base_url}/chat/completions", json=body, timeout=10) as response:
        text = response.read().decode()
    assert '"error"' in text.splitlines()[-2] and "[DONE]" not in text
    assert not mock.records("ok?tokens=3")  # no fallback after the commit point


def test_stream_stall_after_content_hits_the_idle_timeout(make_gateway, mock):
    gw = make_gateway(FALLBACK, timeouts={"idle_s": 0.5})
    mock.script("PRIMARY", ["fault:stall?after=2"])
    body = {"model": "auto", "messages": user(), "stream": True}
    with httpx.stream("POST", f"{gw.base_url}/chat/completions", json=body, timeout=10) as response:
        text = response.read().decode()
    last = json.loads(text.strip().splitlines()[-1].removeprefix("data: "))
    assert last["error"]["type"] == "timeout_error" and "[DONE]" not in text


def test_malformed_chunk_before_content_retries_after_content_errors(make_gateway, mock):
    gw = make_gateway(FALLBACK)
    mock.script("PRIMARY", ["fault:malformed?at=0", "ok"])
    chunks = list(client(gw).chat.completions.create(model="auto", messages=user(), stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    mock.script("PRIMARY", ["fault:malformed?at=4"])
    body = {"model": "auto", "messages": user(), "stream": True}
    with httpx.stream("POST", f"{gw.base_url}/chat/completions", json=body, timeout=10) as response:
        text = response.read().decode()
    assert "upstream_invalid_response" in text and "[DONE]" not in text
    assert "{not json" not in text  # garbage is never forwarded


def test_client_disconnect_cancels_the_upstream_stream(make_gateway, mock):
    gw = make_gateway(FALLBACK)
    mock.script("PRIMARY", ["ok?tokens=200&delay=0.05"])
    body = {"model": "auto", "messages": user(), "stream": True}
    with httpx.stream("POST", f"{gw.base_url}/chat/completions", json=body, timeout=10) as response:
        next(response.iter_lines())
    record = mock.wait_for(lambda log: [r for r in log if r.get("outcome") == "client_closed"], timeout=3)[0]
    assert record["closed_t"] - record["t"] < 3


def test_client_disconnect_cancels_a_unary_upstream_call(make_gateway, mock):
    gw = make_gateway(FALLBACK)
    mock.script("PRIMARY", ["fault:slow_first?delay=5"])
    body = {"model": "auto", "messages": user()}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gw.base_url}/chat/completions", json=body, timeout=0.5)
    record = mock.wait_for(lambda log: [r for r in log if r.get("outcome") == "client_closed"], timeout=3)[0]
    assert record["closed_t"] - record["t"] < 2.5

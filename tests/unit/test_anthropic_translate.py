"""Anthropic translation rules the golden cases do not show one by one: rejections, thinking rules,
tool_choice, the stream step's protocol checks, and the error mapping."""

import json
from typing import Any

import msgspec
import pytest

from providers.anthropic import errors, translate, wire
from providers.anthropic.config import AnthropicConf, ThinkingBudgets
from providers.errors import (
    ContextLengthExceeded,
    InvalidRequest,
    UpstreamAuthError,
    UpstreamNotFound,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from providers.schema.chat import with_overrides
from providers.schema.codec import decode_chat_request

CONF = AnthropicConf()
USER = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


def translated(conf: AnthropicConf = CONF, raw_extra: dict[str, Any] | None = None, **body: Any) -> dict[str, Any]:
    t = translate_(conf, raw_extra, **body)
    return json.loads(wire.encode(t.body))


def translate_(conf: AnthropicConf = CONF, raw_extra: dict[str, Any] | None = None, **body: Any) -> Any:
    doc = {"model": "m", "messages": USER, **body}
    req = decode_chat_request(json.dumps(doc).encode())
    return translate.to_anthropic_request(req, model="claude", conf=conf, raw={**doc, **(raw_extra or {})})


REJECTED = [
    ({"n": 2}, "n"),
    ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"frequency_penalty": -1}, "frequency_penalty"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"temperature": 1.5}, "temperature"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
    ({"web_search_options": {}}, "web_search_options"),
    (
        {
            "messages": [
                {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}]}
            ]
        },
        "messages[0].content[0]",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}]},
        "messages[0].content[0]",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/bmp;base64,AA"}}]}
            ]
        },
        "messages[0].content[0].image_url",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]},
        "messages[0].content[0].image_url",
    ),
    ({"messages": [{"role": "function", "name": "f", "content": "1"}]}, "messages[0]"),
    (
        {
            "messages": [
                *USER,
                {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}},
            ]
        },
        "messages[1].function_call",
    ),
    (
        {
            "messages": [
                *USER,
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{oops"}}],
                },
            ]
        },
        "messages[1].tool_calls[0].function.arguments",
    ),
    (
        {
            "messages": [
                *USER,
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "[1]"}}],
                },
            ]
        },
        "messages[1].tool_calls[0].function.arguments",
    ),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
    ({"reasoning_effort": "extreme"}, "reasoning_effort"),
    ({"reasoning_effort": "low", "max_tokens": 1000}, "max_tokens"),
    ({"reasoning_effort": "low", "max_completion_tokens": 1024}, "max_completion_tokens"),
    ({"reasoning_effort": "low", "temperature": 0.2}, "temperature"),
    ({"reasoning_effort": "low", "top_p": 0.5}, "top_p"),
    ({"reasoning_effort": "low", "tools": [TOOL], "tool_choice": "required"}, "tool_choice"),
    ({"reasoning_effort": "low", "response_format": {"type": "json_object"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema.schema"),
    (
        {
            "response_format": {"type": "json_object"},
            "tools": [{"type": "function", "function": {"name": "json_response"}}],
        },
        "tools",
    ),
]


@pytest.mark.parametrize(("body", "param"), REJECTED, ids=lambda v: v if isinstance(v, str) else None)
def test_what_anthropic_cannot_honour_is_rejected_naming_the_parameter(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        translate_(**body)
    assert caught.value.param == param
    assert caught.value.status == 400


def test_top_k_from_the_raw_body_is_translated_but_not_with_thinking() -> None:
    assert translated(raw_extra={"top_k": 40})["top_k"] == 40
    with pytest.raises(InvalidRequest) as caught:
        translate_(raw_extra={"top_k": 40}, reasoning_effort="low")
    assert caught.value.param == "top_k"


def test_fields_that_do_not_change_the_answer_are_left_out() -> None:
    body = translated(seed=1, metadata={"k": "v"}, raw_extra={"store": True, "service_tier": "auto"})
    assert set(body) == {"model", "max_tokens", "messages"}


def test_temperature_one_and_top_p_high_are_allowed_with_thinking() -> None:
    body = translated(reasoning_effort="low", temperature=1, top_p=0.97)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert body["temperature"] == 1.0 and body["top_p"] == 0.97


@pytest.mark.parametrize("effort", ["none", "minimal"])
def test_no_thinking_for_none_and_minimal(effort: str) -> None:
    assert "thinking" not in translated(reasoning_effort=effort)


def test_budgets_are_configurable_and_clamped_below_the_cap() -> None:
    conf = AnthropicConf(thinking_budgets=ThinkingBudgets(high=50000), max_tokens_default=1000)
    assert translated(conf, reasoning_effort="high")["max_tokens"] == 51000
    body = translated(conf, reasoning_effort="high", max_tokens=8000)
    assert (body["max_tokens"], body["thinking"]["budget_tokens"]) == (8000, 7999)


def test_a_tool_loop_without_kept_thinking_blocks_goes_without_thinking() -> None:
    call = {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    loop = [
        *USER,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "ok"},
    ]
    body = translated(messages=loop, tools=[TOOL], reasoning_effort="high")
    assert "thinking" not in body and body["max_tokens"] == CONF.max_tokens_default
    kept = {"type": "thinking", "thinking": "let me call f", "signature": "sig"}
    loop[1] = {**loop[1], "thinking_blocks": [kept]}
    body = translated(messages=loop, tools=[TOOL], reasoning_effort="high")
    assert body["thinking"]["type"] == "enabled"
    assert body["messages"][1]["content"][0] == kept


def test_thinking_blocks_are_not_sent_back_when_thinking_is_off() -> None:
    kept = {"type": "thinking", "thinking": "t", "signature": "sig"}
    body = translated(messages=[*USER, {"role": "assistant", "content": "a", "thinking_blocks": [kept]}, *USER])
    assert body["messages"][1]["content"] == [{"type": "text", "text": "a"}]


def test_tool_choice_mapping() -> None:
    assert "tool_choice" not in translated(tools=[TOOL])
    assert translated(tools=[TOOL], tool_choice="auto")["tool_choice"] == {"type": "auto"}
    assert translated(tools=[TOOL], tool_choice="none")["tool_choice"] == {"type": "none"}
    assert translated(tools=[TOOL], tool_choice="required")["tool_choice"] == {"type": "any"}
    assert translated(tools=[TOOL], parallel_tool_calls=False)["tool_choice"] == {
        "type": "auto",
        "disable_parallel_tool_use": True,
    }
    assert "tool_choice" not in translated(tool_choice="auto")  # no tools: nothing to choose
    assert translated(tools=[{"type": "function", "function": {"name": "g"}}])["tools"][0]["input_schema"] == {
        "type": "object",
        "properties": {},
    }


def test_strict_tools_only_with_native_structured_outputs() -> None:
    strict = {"type": "function", "function": {"name": "f", "strict": True, "parameters": {"type": "object"}}}
    assert translated(tools=[strict])["tools"][0]["strict"] is True
    assert "strict" not in translated(AnthropicConf(structured_output="tool"), tools=[strict])["tools"][0]


def test_consecutive_same_role_messages_merge_and_empty_text_is_dropped() -> None:
    body = translated(
        messages=[
            {"role": "user", "content": "a"},
            {"role": "user", "content": ""},
            {"role": "user", "content": [{"type": "text", "text": "b"}]},
        ]
    )
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]


def test_overrides_replace_typed_fields_and_ignore_others() -> None:
    req = decode_chat_request(json.dumps({"model": "m", "messages": USER, "reasoning_effort": "low"}).encode())
    assert with_overrides(req, {}) is req
    changed = with_overrides(req, {"reasoning_effort": "high", "not_a_field": 1})
    assert changed.reasoning_effort == "high"


# ---------------------------------------------------------------- stream step


def events(*docs: dict[str, Any]) -> list[Any]:
    return [msgspec.json.decode(json.dumps(d).encode(), type=wire.Event) for d in docs]


START = {"type": "message_start", "message": {"id": "msg_1", "model": "claude", "usage": {"input_tokens": 3}}}


def run(*docs: dict[str, Any], json_tool: str | None = None) -> list[Any]:
    state = translate.StreamState(created=0, model="claude", json_tool=json_tool)
    out: list[Any] = []
    for event in events(*docs):
        out.extend(translate.step(state, event))
    return out


@pytest.mark.parametrize(
    "docs",
    [
        [{"type": "message_stop"}],
        [START, START],
        [START, {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}}],
        [
            START,
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{"}},
        ],
        [
            START,
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
        ],
        [
            START,
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
            {"type": "content_block_stop", "index": 0},
            {"type": "content_block_stop", "index": 0},
        ],
        [START, {"type": "message_stop"}, {"type": "ping"}, {"type": "message_delta"}],
    ],
    ids=["before-start", "two-starts", "unknown-block", "wrong-delta", "block-twice", "stop-twice", "after-stop"],
)
def test_out_of_order_events_are_protocol_errors(docs: list[dict[str, Any]]) -> None:
    with pytest.raises(UpstreamProtocolError):
        run(*docs)


@pytest.mark.parametrize(
    "doc",
    [b'{"type":"citations_delta"}', b'{"type":"content_block_delta","index":0,"delta":{"type":"new_delta"}}', b"{"],
)
def test_unknown_or_malformed_events_do_not_decode(doc: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        wire.decode_event(doc)


def test_the_json_tool_streams_as_content_and_finishes_as_stop() -> None:
    out = run(
        START,
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "tool_use", "id": "t", "name": "json_response"},
        },
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"a":'}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "1}"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 5}},
        {"type": "message_stop"},
        json_tool="json_response",
    )
    text = "".join(c.choices[0].delta.content or "" for c in out if c.choices)
    assert text == '{"a":1}'
    assert [c.choices[0].finish_reason for c in out if c.choices][-1] == "stop"
    assert out[-1].choices == [] and out[-1].usage.completion_tokens == 5


def test_ping_yields_nothing_and_an_error_event_is_typed() -> None:
    assert run(START, {"type": "ping"})[1:] == []
    with pytest.raises(UpstreamRateLimited):
        run(START, {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "kind", "message", "expected"),
    [
        (529, "overloaded_error", "Overloaded", UpstreamUnavailable),
        (500, "api_error", "boom", UpstreamUnavailable),
        (402, "billing_error", "credit balance too low", UpstreamUnavailable),
        (429, "rate_limit_error", "slow", UpstreamRateLimited),
        (401, "authentication_error", "invalid x-api-key", UpstreamAuthError),
        (403, "permission_error", "no", UpstreamAuthError),
        (404, "not_found_error", "model: claude-9", UpstreamNotFound),
        (413, "request_too_large", "too big", UpstreamRejected),
        (400, "invalid_request_error", "prompt is too long: 208310 tokens > 200000 maximum", ContextLengthExceeded),
        (
            400,
            "invalid_request_error",
            "input length and `max_tokens` exceed context limit: 198000 + 8192",
            ContextLengthExceeded,
        ),
        (400, "invalid_request_error", "max_tokens: Field required", UpstreamRejected),
        (504, "timeout_error", "timed out", UpstreamTimeout),
        (None, "overloaded_error", "Overloaded", UpstreamUnavailable),
        (None, "something_new", "?", UpstreamUnavailable),
        (418, "", "HTTP 418", UpstreamRejected),
    ],
)
def test_error_mapping(status: int | None, kind: str, message: str, expected: type) -> None:
    error = errors.anthropic_error(status, kind, message, provider="claude", retry_after_s=2.0)
    assert type(error) is expected
    assert "sk-ant" not in error.message


def test_auth_errors_never_carry_the_upstream_message() -> None:
    error = errors.anthropic_error(401, "authentication_error", "invalid x-api-key sk-ant-api03-abcdefghijkl")
    assert "sk-ant" not in error.message and error.status == 502


def test_error_bodies_that_are_not_json_map_by_status() -> None:
    error = errors.error_from_body(413, b"<html>413 Request Entity Too Large</html>", provider="c", retry_after_s=None)
    assert isinstance(error, UpstreamRejected)
    error = errors.error_from_body(529, b"", provider="c", retry_after_s=1.0)
    assert isinstance(error, UpstreamUnavailable) and error.retry_after_s == 1.0

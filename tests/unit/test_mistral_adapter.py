"""providers/mistral/adapter.py over an httpx.MockTransport: the exact HTTP it sends and how it reads answers.

No sockets: the transport is injected. Translation itself is covered by test_mistral_golden.py; here
the URL, headers, body, JSON and SSE reading, and status -> error class are pinned.
"""

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import pytest

from providers.base import Call, Inbound, Timeouts
from providers.capabilities import required_by_chat
from providers.errors import (
    ContextLengthExceeded,
    GatewayError,
    InvalidRequest,
    UpstreamAuthError,
    UpstreamConnectionError,
    UpstreamNotFound,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamRedirect,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from providers.mistral.adapter import MistralProvider
from providers.mistral.config import MistralConf
from providers.mistral.translate import mistral_tool_call_id
from providers.registry import ProviderConf, build_provider
from providers.schema.chat import ChatCompletionChunk, Usage
from providers.schema.codec import decode_chat_request, decode_completion_request, decode_embedding_request
from providers.secrets import Secret

KEY = "mistral-test-key-0123456789abcdefXYZ"
BASE = "https://mistral.test/v1"
MODEL = "mistral-small-2603"

Handler = Callable[[httpx.Request], httpx.Response]
SSE_HEADERS = {"content-type": "text/event-stream"}


def provider(handler: Handler, **conf: Any) -> MistralProvider:
    return MistralProvider(
        "mis", MistralConf(base_url=BASE, **conf), Secret(KEY), Timeouts(), transport=httpx.MockTransport(handler)
    )


def call(model: str = MODEL, **kw: Any) -> Call:
    return Call(
        request_id="req-1",
        upstream_model=model,
        timeouts=Timeouts(),
        deadline=time.monotonic() + 30,
        headers={"x-request-id": "req-1"},
        **kw,
    )


def chat(body: dict[str, Any]) -> Inbound[Any]:
    raw = json.dumps({"model": "auto", **body}).encode()
    return Inbound(typed=decode_chat_request(raw), raw=json.loads(raw))


def answer(content: Any = "Hello!", reason: str = "stop") -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "chat.completion",
        "created": 1767225000,
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": reason}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def chunk(delta: dict[str, Any], reason: str | None = None, usage: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": "cmpl-1",
        "object": "chat.completion.chunk",
        "created": 1767225000,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
    }
    if usage:
        out["usage"] = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    return out


def sse(*events: Any) -> bytes:
    return b"".join(b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n\n" for e in events)


async def collect(gen: Any) -> list[ChatCompletionChunk]:
    return [c async for c in gen]


# ---------------------------------------------------------------- requests on the wire


async def test_chat_sends_exact_url_headers_and_body() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=answer())

    body = {
        "messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi", "name": "ada"}],
        "seed": 7,
        "max_completion_tokens": 20,
        "tool_choice": "required",
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "user": "u-1",
        "stream_options": {"include_usage": True},
        "safe_prompt": True,
    }
    got = await provider(handler).chat(chat(body), call())
    request = seen[0]
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["x-request-id"] == "req-1"
    assert json.loads(request.content) == {
        "model": MODEL,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "max_tokens": 20,
        "random_seed": 7,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": "any",
        "safe_prompt": True,
    }
    assert got.choices[0].message.content == "Hello!"
    assert got.usage is not None and got.usage.total_tokens == 5


async def test_overrides_and_configured_efforts() -> None:
    bodies: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json=answer())

    inbound = chat({"messages": [{"role": "user", "content": "Hi"}], "reasoning_effort": "low"})
    await provider(handler).chat(inbound, call())
    await provider(handler, reasoning_efforts=("none", "low", "high")).chat(inbound, call())
    await provider(handler).chat(inbound, call(overrides={"reasoning_effort": "none"}))
    assert [b["reasoning_effort"] for b in bodies] == ["high", "low", "none"]


async def test_rejected_parameter_fails_before_any_io() -> None:
    def handler(request: httpx.Request) -> httpx.Response:  # pragma: no cover - must not be reached
        raise AssertionError("no request should be sent")

    with pytest.raises(InvalidRequest) as info:
        await provider(handler).chat(chat({"messages": [{"role": "user", "content": "Hi"}], "logprobs": True}), call())
    assert info.value.param == "logprobs"


# ---------------------------------------------------------------- streaming


async def test_stream_chunks_done_and_final_usage() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = sse(
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": [{"type": "thinking", "thinking": [{"type": "text", "text": "hmm"}]}]}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}, "stop", usage=True),
            b"[DONE]",
        )
        return httpx.Response(200, content=body, headers=SSE_HEADERS)

    inbound = chat({"messages": [{"role": "user", "content": "Hi"}], "stream": True})
    chunks = await collect(provider(handler).chat_stream(inbound, call()))
    assert str(seen[0].url) == f"{BASE}/chat/completions"
    assert json.loads(seen[0].content)["stream"] is True
    assert "stream_options" not in json.loads(seen[0].content)  # not in Mistral's schema; usage comes anyway
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[1].choices[0].delta.reasoning_content == "hmm"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and isinstance(chunks[-1].usage, Usage) and chunks[-1].usage.total_tokens == 5


async def test_stream_parallel_tool_calls_get_their_own_index() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        calls = [
            {"id": "aaaaaaaa1", "function": {"name": "f", "arguments": '{"x": 1}'}, "index": 0},
            {"id": "bbbbbbbb2", "function": {"name": "g", "arguments": {"y": 2}}, "index": 0},
        ]
        body = sse(
            chunk({"tool_calls": calls[:1]}), chunk({"tool_calls": calls[1:]}), chunk({}, "tool_calls", usage=True)
        )
        return httpx.Response(200, content=body, headers=SSE_HEADERS)

    chunks = await collect(
        provider(handler).chat_stream(chat({"messages": [{"role": "user", "content": "Hi"}]}), call())
    )
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [(d.index, d.id, d.function.name, d.function.arguments) for d in deltas] == [  # type: ignore[union-attr]
        (0, "aaaaaaaa1", "f", '{"x": 1}'),
        (1, "bbbbbbbb2", "g", '{"y":2}'),
    ]


async def test_stream_mid_stream_error_event_raises_after_the_chunks() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        error = {"object": "error", "message": "Service unavailable.", "type": "internal_server_error", "code": "1000"}
        return httpx.Response(200, content=sse(chunk({"content": "Once"}), error), headers=SSE_HEADERS)

    got: list[ChatCompletionChunk] = []
    with pytest.raises(UpstreamUnavailable):
        async for c in provider(handler).chat_stream(chat({"messages": [{"role": "user", "content": "Hi"}]}), call()):
            got.append(c)
    assert [c.choices[0].delta.content for c in got] == ["", "Once"]


async def test_stream_malformed_event_is_a_protocol_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse(chunk({"content": "Hi"}), b'{"choices": [}'), headers=SSE_HEADERS)

    with pytest.raises(UpstreamProtocolError):
        await collect(provider(handler).chat_stream(chat({"messages": [{"role": "user", "content": "Hi"}]}), call()))


async def test_stream_done_before_finish_is_a_protocol_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse(chunk({"content": "Once"}), b"[DONE]"), headers=SSE_HEADERS)

    with pytest.raises(UpstreamProtocolError, match="ended before"):
        await collect(provider(handler).chat_stream(chat({"messages": [{"role": "user", "content": "Hi"}]}), call()))


async def test_stream_error_status_maps_before_any_chunk() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = {"object": "error", "message": "Requests rate limit exceeded", "type": "rate_limited", "code": "1300"}
        return httpx.Response(429, json=body, headers={"retry-after": "3"})

    with pytest.raises(UpstreamRateLimited) as info:
        await collect(provider(handler).chat_stream(chat({"messages": [{"role": "user", "content": "Hi"}]}), call()))
    assert info.value.retry_after_s == 3.0


async def test_stream_answered_with_json_error_instead_of_sse() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = {"object": "error", "message": "Internal server error", "type": "internal_server_error"}
        return httpx.Response(200, json=body)

    with pytest.raises(UpstreamUnavailable):
        await collect(provider(handler).chat_stream(chat({"messages": [{"role": "user", "content": "Hi"}]}), call()))


# ---------------------------------------------------------------- errors


def status_error(status: int, body: Any) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body)

    return handler


def mistral_body(message: Any, kind: str = "invalid_request_error", code: Any = None) -> dict[str, Any]:
    return {"object": "error", "message": message, "type": kind, "param": None, "code": code}


ERRORS = [
    (status_error(401, {"message": "Unauthorized", "request_id": "abc"}), UpstreamAuthError),
    (status_error(403, {"message": "Forbidden"}), UpstreamAuthError),
    (status_error(429, mistral_body("Requests rate limit exceeded", "rate_limited")), UpstreamRateLimited),
    (status_error(503, mistral_body("Internal server error", "internal_server_error")), UpstreamUnavailable),
    (status_error(500, mistral_body("Internal server error", "internal_server_error")), UpstreamUnavailable),
    (status_error(504, {"message": "Gateway timeout"}), UpstreamTimeout),
    (
        status_error(400, mistral_body("Tool call id was x but must be...", "invalid_function_call", "3280")),
        UpstreamRejected,
    ),
    (
        status_error(
            422, mistral_body({"detail": [{"loc": ["body", "foo"], "msg": "Extra inputs are not permitted"}]})
        ),
        UpstreamRejected,
    ),
    (status_error(404, mistral_body("Invalid model: nope", "invalid_model", "1500")), UpstreamNotFound),
    (
        status_error(
            400, mistral_body("Prompt contains 40000 tokens, too large for model with 32768 maximum context length")
        ),
        ContextLengthExceeded,
    ),
]


@pytest.mark.parametrize(("handler", "cls"), ERRORS)
async def test_error_status_maps_to_error_class(handler: Handler, cls: type[GatewayError]) -> None:
    with pytest.raises(cls) as info:
        await provider(handler).chat(chat({"messages": [{"role": "user", "content": "Hi"}]}), call())
    assert type(info.value) is cls
    assert info.value.status != 401


async def test_validation_detail_is_readable() -> None:
    body = mistral_body({"detail": [{"loc": ["body", "foo"], "msg": "Extra inputs are not permitted"}]})
    with pytest.raises(UpstreamRejected) as info:
        await provider(status_error(422, body)).chat(chat({"messages": [{"role": "user", "content": "Hi"}]}), call())
    assert info.value.message == "mis: foo: Extra inputs are not permitted"


async def test_finish_reason_error_is_an_error_not_an_answer() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=answer("Hel", reason="error"))

    with pytest.raises(UpstreamUnavailable):
        await provider(handler).chat(chat({"messages": [{"role": "user", "content": "Hi"}]}), call())


async def test_redirect_is_never_followed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(307, headers={"location": "https://elsewhere.test/"})

    with pytest.raises(UpstreamRedirect):
        await provider(handler).chat(chat({"messages": [{"role": "user", "content": "Hi"}]}), call())


async def test_transport_failure_is_a_connection_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with pytest.raises(UpstreamConnectionError):
        await provider(handler).chat(chat({"messages": [{"role": "user", "content": "Hi"}]}), call())


# ---------------------------------------------------------------- embeddings and the rest


async def test_embeddings_url_and_body() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        data = [{"object": "embedding", "embedding": [0.1, 0.2], "index": 0}]
        usage = {"prompt_tokens": 2, "total_tokens": 2, "completion_tokens": 0}
        return httpx.Response(
            200, json={"id": "e1", "object": "list", "data": data, "model": "mistral-embed", "usage": usage}
        )

    raw = json.dumps({"model": "embed", "input": "hi", "dimensions": 8, "user": "u"}).encode()
    got = await provider(handler).embeddings(
        Inbound(typed=decode_embedding_request(raw), raw={}), call(model="mistral-embed")
    )
    assert str(seen[0].url) == f"{BASE}/embeddings"
    assert seen[0].headers["authorization"] == f"Bearer {KEY}"
    assert json.loads(seen[0].content) == {"model": "mistral-embed", "input": "hi", "output_dimension": 8}
    assert got.data[0].embedding == [0.1, 0.2]
    assert got.usage is not None and got.usage.prompt_tokens == 2


async def test_legacy_completions_are_refused_clearly() -> None:
    raw = json.dumps({"model": "auto", "prompt": "Hi"}).encode()
    inbound = Inbound(typed=decode_completion_request(raw), raw=json.loads(raw))
    p = provider(lambda r: httpx.Response(500))
    with pytest.raises(InvalidRequest, match="chat/completions"):
        await p.completion(inbound, call())
    with pytest.raises(InvalidRequest):
        await collect(p.completion_stream(inbound, call()))


def test_existing_policies_with_type_mistral_get_the_native_adapter() -> None:
    conf = msgspec.convert({"type": "mistral", "api_key_env": "MISTRAL_API_KEY", "stream_usage": True}, ProviderConf)
    assert isinstance(conf, MistralConf)
    assert conf.base_url == "https://api.mistral.ai/v1"
    assert isinstance(build_provider("mis", conf, Secret(KEY), Timeouts()), MistralProvider)


def test_tool_call_ids_become_mistral_shaped_and_stable() -> None:
    assert mistral_tool_call_id("D681PevKs") == "D681PevKs"
    for foreign in ("call_PTLP8xhu3uwZk4l3nlnrrJha", "toolu_01A", "turn1_0", "abc"):
        got = mistral_tool_call_id(foreign)
        assert len(got) == 9 and got.isalnum() and got.isascii()
        assert got == mistral_tool_call_id(foreign)
    assert mistral_tool_call_id("call_a") != mistral_tool_call_id("call_b")


# ---------------------------------------------------------------- capabilities are honest

NEEDS: dict[str, dict[str, Any]] = {
    "tools": {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]},
    "json_schema": {
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    },
    "vision": {
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]}]
    },
    "reasoning": {"reasoning_effort": "high"},
    "logprobs": {"logprobs": True},
}


@pytest.mark.parametrize("capability", sorted(NEEDS))
async def test_capabilities_match_what_translates(capability: str) -> None:
    inbound = chat({"messages": [{"role": "user", "content": "Hi"}], **NEEDS[capability]})
    assert capability in required_by_chat(inbound.typed)
    p = provider(lambda r: httpx.Response(200, json=answer()))
    if capability in MistralProvider.capabilities:
        await p.chat(inbound, call())
    else:
        with pytest.raises(InvalidRequest):
            await p.chat(inbound, call())


async def test_non_json_error_body_still_maps_by_status() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, content=b"<html><head><title>502 Bad Gateway</title></head></html>")

    with pytest.raises(UpstreamUnavailable, match="HTTP 502"):
        await provider(handler).chat(chat({"messages": [{"role": "user", "content": "Hi"}]}), call())

"""providers/gemini/adapter.py over an httpx.MockTransport: the exact HTTP it sends and how it reads answers.

No sockets: the transport is injected. Translation itself is covered by test_gemini_golden.py; here
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
from providers.gemini.adapter import GeminiProvider
from providers.gemini.config import GeminiConf
from providers.registry import ProviderConf, build_provider
from providers.schema.chat import ChatCompletionChunk, Usage
from providers.schema.codec import decode_chat_request, decode_completion_request, decode_embedding_request
from providers.secrets import Secret

KEY = "AIzaSyTESTKEY0000000000000000000000000"
BASE = "https://gemini.test"
MODEL = "gemini-2.5-flash"

Handler = Callable[[httpx.Request], httpx.Response]


def provider(handler: Handler, **conf: Any) -> GeminiProvider:
    return GeminiProvider(
        "gem", GeminiConf(base_url=BASE, **conf), Secret(KEY), Timeouts(), transport=httpx.MockTransport(handler)
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


def sse(*events: Any) -> bytes:
    return b"".join(b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\r\n\r\n" for e in events)


def answer(text: str = "Hello!", reason: str = "STOP") -> dict[str, Any]:
    return {
        "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": reason, "index": 0}],
        "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2, "totalTokenCount": 5},
        "modelVersion": MODEL,
        "responseId": "resp-1",
    }


def event(text: str, reason: str | None = None, usage: bool = False) -> dict[str, Any]:
    cand: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
    if reason:
        cand["finishReason"] = reason
    out: dict[str, Any] = {"candidates": [cand], "modelVersion": MODEL, "responseId": "resp-1"}
    if usage:
        out["usageMetadata"] = {"promptTokenCount": 3, "candidatesTokenCount": 2, "totalTokenCount": 5}
    return out


SSE_HEADERS = {"content-type": "text/event-stream"}


async def collect(gen: Any) -> list[ChatCompletionChunk]:
    return [chunk async for chunk in gen]


# ---------------------------------------------------------------- requests on the wire


async def test_chat_sends_exact_url_headers_and_body() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=answer())

    p = provider(handler)
    got = await p.chat(chat({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 10}), call())
    request = seen[0]
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/v1beta/models/{MODEL}:generateContent"
    assert request.headers["x-goog-api-key"] == KEY
    assert "authorization" not in request.headers
    assert "key=" not in str(request.url)  # the key never goes in the URL (it would be logged)
    assert request.headers["x-request-id"] == "req-1"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {
        "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
        "generationConfig": {"maxOutputTokens": 10},
    }
    assert got.choices[0].message.content == "Hello!"
    assert got.choices[0].finish_reason == "stop"
    assert got.id == "chatcmpl-resp-1"
    assert got.usage is not None and got.usage.total_tokens == 5
    await p.aclose()


async def test_model_prefix_and_api_version_from_config() -> None:
    urls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        urls.append(str(request.url))
        return httpx.Response(200, json=answer())

    p = provider(handler, api_version="v1alpha")
    await p.chat(chat({"messages": [{"role": "user", "content": "Hi"}]}), call(model="models/gemini-3-pro-preview"))
    assert urls == [f"{BASE}/v1alpha/models/gemini-3-pro-preview:generateContent"]


async def test_overrides_apply_over_the_client_request() -> None:
    bodies: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json=answer())

    p = provider(handler)
    inbound = chat({"messages": [{"role": "user", "content": "Hi"}], "reasoning_effort": "low"})
    await p.chat(inbound, call(model="gemini-3-flash-preview", overrides={"reasoning_effort": "high"}))
    assert bodies[0]["generationConfig"]["thinkingConfig"] == {"includeThoughts": True, "thinkingLevel": "high"}


async def test_thinking_control_can_be_forced_by_policy() -> None:
    bodies: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json=answer())

    p = provider(handler, thinking="budget")
    await p.chat(chat({"messages": [{"role": "user", "content": "Hi"}], "reasoning_effort": "high"}), call(model="x"))
    assert bodies[0]["generationConfig"]["thinkingConfig"] == {"includeThoughts": True, "thinkingBudget": 24576}


async def test_rejected_parameter_fails_before_any_io() -> None:
    def handler(request: httpx.Request) -> httpx.Response:  # pragma: no cover - must not be reached
        raise AssertionError("no request should be sent")

    p = provider(handler)
    with pytest.raises(InvalidRequest) as info:
        await p.chat(chat({"messages": [{"role": "user", "content": "Hi"}], "logit_bias": {"1": 5}}), call())
    assert info.value.param == "logit_bias"
    with pytest.raises(InvalidRequest):
        p.chat_stream(chat({"messages": [{"role": "user", "content": "Hi"}], "logit_bias": {"1": 5}}), call())


# ---------------------------------------------------------------- streaming


async def test_stream_url_chunks_and_final_usage() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = sse(event("Hel"), event("lo", "STOP", usage=True))
        return httpx.Response(200, content=body, headers=SSE_HEADERS)

    p = provider(handler)
    chunks = await collect(
        p.chat_stream(chat({"messages": [{"role": "user", "content": "Hi"}], "stream": True}), call())
    )
    assert str(seen[0].url) == f"{BASE}/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
    assert seen[0].headers["x-goog-api-key"] == KEY
    assert chunks[0].choices[0].delta.role == "assistant"  # the first chunk is always the role delta
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and isinstance(chunks[-1].usage, Usage) and chunks[-1].usage.total_tokens == 5


async def test_stream_mid_stream_error_event_raises_after_the_chunks() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        error = {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
        return httpx.Response(200, content=sse(event("Once"), error), headers=SSE_HEADERS)

    got: list[ChatCompletionChunk] = []
    p = provider(handler)
    with pytest.raises(UpstreamUnavailable):
        async for chunk in p.chat_stream(chat({"messages": [{"role": "user", "content": "Hi"}]}), call()):
            got.append(chunk)
    assert [c.choices[0].delta.content for c in got] == ["", "Once"]


async def test_stream_malformed_event_is_a_protocol_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse(event("Hi"), b'{"candidates": [}'), headers=SSE_HEADERS)

    with pytest.raises(UpstreamProtocolError):
        await collect(provider(handler).chat_stream(chat({"messages": [{"role": "user", "content": "Hi"}]}), call()))


async def test_stream_cut_short_is_a_protocol_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse(event("Once upon")), headers=SSE_HEADERS)

    with pytest.raises(UpstreamProtocolError, match="ended before"):
        await collect(provider(handler).chat_stream(chat({"messages": [{"role": "user", "content": "Hi"}]}), call()))


async def test_stream_error_status_maps_before_any_chunk() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = {"error": {"code": 429, "message": "Quota exceeded.", "status": "RESOURCE_EXHAUSTED"}}
        return httpx.Response(429, json=body, headers={"retry-after": "4"})

    with pytest.raises(UpstreamRateLimited) as info:
        await collect(provider(handler).chat_stream(chat({"messages": [{"role": "user", "content": "Hi"}]}), call()))
    assert info.value.retry_after_s == 4.0


async def test_stream_answered_with_json_error_instead_of_sse() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = {"error": {"code": 500, "message": "Internal error.", "status": "INTERNAL"}}
        return httpx.Response(200, json=body)

    with pytest.raises(UpstreamUnavailable):
        await collect(provider(handler).chat_stream(chat({"messages": [{"role": "user", "content": "Hi"}]}), call()))


async def test_stream_answered_with_garbage_instead_of_sse() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"<html>hello</html>", headers={"content-type": "text/html"})

    with pytest.raises(UpstreamProtocolError):
        await collect(provider(handler).chat_stream(chat({"messages": [{"role": "user", "content": "Hi"}]}), call()))


# ---------------------------------------------------------------- errors


def status_error(status: int, kind: str, message: str = "boom", **extra: Any) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": {"code": status, "message": message, "status": kind, **extra}})

    return handler


ERRORS = [
    (status_error(429, "RESOURCE_EXHAUSTED"), UpstreamRateLimited),
    (status_error(503, "UNAVAILABLE"), UpstreamUnavailable),
    (status_error(500, "INTERNAL"), UpstreamUnavailable),
    (status_error(504, "DEADLINE_EXCEEDED"), UpstreamTimeout),
    (status_error(400, "INVALID_ARGUMENT"), UpstreamRejected),
    (status_error(401, "UNAUTHENTICATED"), UpstreamAuthError),
    (status_error(403, "PERMISSION_DENIED"), UpstreamAuthError),
    (status_error(404, "NOT_FOUND"), UpstreamNotFound),
    (
        status_error(
            400,
            "INVALID_ARGUMENT",
            "The input token count (2000000) exceeds the maximum number of tokens allowed (1048576).",
        ),
        ContextLengthExceeded,
    ),
    (
        status_error(400, "INVALID_ARGUMENT", "API key not valid.", details=[{"reason": "API_KEY_INVALID"}]),
        UpstreamAuthError,
    ),
]


@pytest.mark.parametrize(("handler", "cls"), ERRORS, ids=lambda v: getattr(v, "__name__", ""))
async def test_error_status_maps_to_error_class(handler: Handler, cls: type[GatewayError]) -> None:
    with pytest.raises(cls) as info:
        await provider(handler).chat(chat({"messages": [{"role": "user", "content": "Hi"}]}), call())
    assert type(info.value) is cls
    assert info.value.status != 401  # a provider auth failure is never the client's 401


async def test_auth_error_is_502_and_never_echoes_the_key() -> None:
    handler = status_error(
        400, "INVALID_ARGUMENT", f"API key not valid: {KEY}", details=[{"reason": "API_KEY_INVALID"}]
    )
    with pytest.raises(UpstreamAuthError) as info:
        await provider(handler).chat(chat({"messages": [{"role": "user", "content": "Hi"}]}), call())
    assert info.value.status == 502
    assert KEY not in info.value.message


async def test_key_like_text_in_upstream_messages_is_scrubbed() -> None:
    handler = status_error(400, "INVALID_ARGUMENT", f"bad request near {KEY}")
    with pytest.raises(UpstreamRejected) as info:
        await provider(handler).chat(chat({"messages": [{"role": "user", "content": "Hi"}]}), call())
    assert KEY not in info.value.message and "[redacted]" in info.value.message


async def test_redirect_is_never_followed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"location": "https://elsewhere.test/"})

    with pytest.raises(UpstreamRedirect):
        await provider(handler).chat(chat({"messages": [{"role": "user", "content": "Hi"}]}), call())


async def test_malformed_json_body_is_a_protocol_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b'{"candidates": [')

    with pytest.raises(UpstreamProtocolError):
        await provider(handler).chat(chat({"messages": [{"role": "user", "content": "Hi"}]}), call())


async def test_transport_failure_is_a_connection_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with pytest.raises(UpstreamConnectionError):
        await provider(handler).chat(chat({"messages": [{"role": "user", "content": "Hi"}]}), call())


# ---------------------------------------------------------------- embeddings and the rest


async def test_embeddings_url_body_and_base64() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"embeddings": [{"values": [0.5, -0.25]}, {"values": [1.0, 0.0]}]})

    raw = json.dumps({"model": "embed", "input": ["a", "b"], "encoding_format": "base64"}).encode()
    inbound = Inbound(typed=decode_embedding_request(raw), raw=json.loads(raw))
    got = await provider(handler).embeddings(inbound, call(model="gemini-embedding-001"))
    assert str(seen[0].url) == f"{BASE}/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert seen[0].headers["x-goog-api-key"] == KEY
    assert [r["content"]["parts"][0]["text"] for r in json.loads(seen[0].content)["requests"]] == ["a", "b"]
    assert [d.embedding for d in got.data] == ["AAAAPwAAgL4=", "AACAPwAAAAA="]


async def test_legacy_completions_are_refused_clearly() -> None:
    raw = json.dumps({"model": "auto", "prompt": "Hi"}).encode()
    inbound = Inbound(typed=decode_completion_request(raw), raw=json.loads(raw))
    p = provider(lambda r: httpx.Response(500))
    with pytest.raises(InvalidRequest, match="chat/completions"):
        await p.completion(inbound, call())
    with pytest.raises(InvalidRequest):
        await collect(p.completion_stream(inbound, call()))


def test_policy_type_gemini_builds_this_adapter() -> None:
    conf = msgspec.convert({"type": "gemini", "api_key_env": "GEMINI_API_KEY"}, ProviderConf)
    assert isinstance(conf, GeminiConf)
    assert conf.base_url == "https://generativelanguage.googleapis.com"
    built = build_provider("gem", conf, Secret(KEY), Timeouts())
    assert isinstance(built, GeminiProvider)
    assert "x-goog-api-key" in built._client.headers
    assert KEY not in repr(conf)


# ---------------------------------------------------------------- capabilities are honest

NEEDS: dict[str, dict[str, Any]] = {
    "tools": {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]},
    "json_schema": {
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    },
    "vision": {
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}
        ]
    },
    "logprobs": {"logprobs": True, "top_logprobs": 2},
    "reasoning": {"reasoning_effort": "high"},
}


@pytest.mark.parametrize("capability", sorted(NEEDS))
async def test_claimed_chat_capabilities_translate(capability: str) -> None:
    assert capability in GeminiProvider.capabilities
    body = {"messages": [{"role": "user", "content": "Hi"}], **NEEDS[capability]}
    inbound = chat(body)
    assert capability in required_by_chat(inbound.typed)
    sent: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, json=answer())

    await provider(handler).chat(inbound, call())
    assert sent


async def test_non_json_error_body_still_maps_by_status() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, content=b"<html><body>502 Bad Gateway</body></html>")

    with pytest.raises(UpstreamUnavailable, match="HTTP 502"):
        await provider(handler).chat(chat({"messages": [{"role": "user", "content": "Hi"}]}), call())

"""The Gemini adapter: I/O only. Translation lives in translate.py, error mapping in errors.py.

POST {base}/{version}/models/{model}:generateContent, :streamGenerateContent?alt=sse and
:batchEmbedContents, with the key in `x-goog-api-key` (ai.google.dev/api, read 2026-06).
"""

import time
from collections.abc import AsyncIterator, Callable
from typing import TypeVar
from urllib.parse import quote

import httpx
import msgspec

from providers._http import (
    decode_or_protocol_error,
    event_stream,
    json_client,
    parse_retry_after,
    post_for_body,
)
from providers.base import Call, Inbound, Timeouts
from providers.errors import InvalidRequest, UpstreamProtocolError
from providers.gemini import translate, wire
from providers.gemini.config import GeminiConf
from providers.gemini.errors import error_from_body
from providers.schema.chat import ChatCompletion, ChatCompletionChunk, ChatRequest, with_overrides
from providers.schema.completions import Completion, CompletionRequest, EmbeddingRequest, EmbeddingResponse
from providers.secrets import Secret

T = TypeVar("T")


class GeminiProvider:
    """Google's Gemini API behind the OpenAI chat and embeddings endpoints."""

    capabilities: frozenset[str] = frozenset({"tools", "json_schema", "vision", "logprobs", "reasoning", "embeddings"})

    def __init__(
        self,
        name: str,
        conf: GeminiConf,
        key: Secret | None,
        timeouts: Timeouts,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not conf.base_url:
            raise ValueError(f"provider {name}: base_url is required")
        self.name = name
        self._version = conf.api_version.strip("/")
        self._thinking = conf.thinking
        headers = dict(conf.headers)
        if key is not None:
            headers["x-goog-api-key"] = key.reveal()
        self._client = json_client(conf.base_url, headers, timeouts, transport)

    async def aclose(self) -> None:
        await self._client.aclose()

    # ------------------------------------------------------------ public API

    async def chat(self, inbound: Inbound[ChatRequest], call: Call) -> ChatCompletion:
        req = with_overrides(inbound.typed, call.overrides)
        body = self._chat_body(req, call)
        raw = await self._post(self._path(call, "generateContent"), body, call)
        resp = decode_or_protocol_error(wire.decode_response, raw, provider=self.name)
        return translate.from_gemini_response(resp, self._context(req, call))

    def chat_stream(self, inbound: Inbound[ChatRequest], call: Call) -> AsyncIterator[ChatCompletionChunk]:
        req = with_overrides(inbound.typed, call.overrides)
        body = self._chat_body(req, call)  # a request Gemini cannot take fails here, before any I/O
        state = translate.StreamState(ctx=self._context(req, call))
        return self._stream(self._path(call, "streamGenerateContent"), body, call, state)

    async def completion(self, inbound: Inbound[CompletionRequest], call: Call) -> Completion:
        raise _no_completions(self.name)

    async def completion_stream(self, inbound: Inbound[CompletionRequest], call: Call) -> AsyncIterator[Completion]:
        raise _no_completions(self.name)
        yield  # pragma: no cover - makes this an async generator

    async def embeddings(self, inbound: Inbound[EmbeddingRequest], call: Call) -> EmbeddingResponse:
        req = inbound.typed
        body = wire.encode(translate.to_gemini_embeddings(req, model=call.upstream_model))
        raw = await self._post(self._path(call, "batchEmbedContents"), body, call)
        resp = decode_or_protocol_error(wire.decode_embeddings, raw, provider=self.name)
        return translate.from_gemini_embeddings(
            resp, model=call.upstream_model, encoding_format=req.encoding_format, provider=self.name
        )

    # ------------------------------------------------------------ internals

    def _path(self, call: Call, method: str) -> str:
        model = quote(call.upstream_model.removeprefix("models/"), safe="-._~")
        return f"/{self._version}/models/{model}:{method}"

    def _chat_body(self, req: ChatRequest, call: Call) -> bytes:
        mode = translate.thinking_mode(call.upstream_model, self._thinking)
        return wire.encode(translate.to_gemini_request(req, thinking=mode))

    def _context(self, req: ChatRequest, call: Call) -> translate.Context:
        return translate.context_for(
            req, model=call.upstream_model, created=int(time.time()), request_id=call.request_id, provider=self.name
        )

    async def _post(self, path: str, body: bytes, call: Call) -> bytes:
        return await post_for_body(self._client, path, body, call, provider=self.name, error_for=self._error)

    async def _stream(
        self, path: str, body: bytes, call: Call, state: translate.StreamState
    ) -> AsyncIterator[ChatCompletionChunk]:
        opened = event_stream(
            self._client,
            f"{path}?alt=sse",
            body,
            call,
            provider=self.name,
            error_for=self._error,
            not_a_stream=self._not_a_stream,
        )
        async with opened as events:
            async for data in events:
                event = decode_or_protocol_error(wire.decode_response, data, provider=self.name)
                for chunk in translate.step(state, event):
                    yield chunk
            for chunk in translate.finish(state):
                yield chunk

    def _error(self, status: int, headers: httpx.Headers, body: bytes) -> Exception:
        return error_from_body(status, body, provider=self.name, retry_after_s=parse_retry_after(headers))

    def _not_a_stream(self, body: bytes) -> Exception:
        """A 200 that is not SSE: an error body (mapped like any error) or garbage (a protocol error)."""
        error = _try(wire.decode_error, body)
        if error is not None:
            return error_from_body(0, body, provider=self.name)
        return UpstreamProtocolError(
            f"{self.name}: upstream answered a stream request without an event stream", provider=self.name
        )


def _no_completions(provider: str) -> InvalidRequest:
    return InvalidRequest(
        f"{provider}: Gemini has no legacy completions endpoint; use /v1/chat/completions", param="model"
    )


def _try(decode: Callable[[bytes], T], body: bytes) -> T | None:
    try:
        return decode(body)
    except msgspec.DecodeError:
        return None

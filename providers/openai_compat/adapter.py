"""The OpenAI-compatible adapter: I/O only. The client's body is forwarded as sent (minus the deny-list)."""

from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import httpx
import msgspec
from msgspec import UNSET

from providers._http import (
    decode_or_protocol_error,
    error_from_detail,
    error_from_response,
    event_stream,
    json_client,
    post_for_body,
)
from providers.base import Call, Inbound, Timeouts
from providers.capabilities import ALL as ALL_CAPABILITIES
from providers.errors import UpstreamProtocolError
from providers.openai_compat.config import OpenAICompatConf
from providers.schema.chat import ChatCompletion, ChatCompletionChunk, ChatRequest
from providers.schema.codec import (
    decode_chat_chunk,
    decode_chat_completion,
    decode_completion,
    decode_embedding_response,
    encode,
)
from providers.schema.completions import Completion, CompletionRequest, EmbeddingRequest, EmbeddingResponse
from providers.secrets import Secret

R = TypeVar("R", ChatCompletion, Completion, EmbeddingResponse)
C = TypeVar("C", ChatCompletionChunk, Completion)


class OpenAICompatProvider:
    """Talks to any server that implements OpenAI's /chat/completions, /completions and /embeddings."""

    capabilities: frozenset[str] = ALL_CAPABILITIES
    """Bodies are forwarded as sent: whatever the server behind it supports (the policy's model
    `capabilities:` say what a given deployment really has)."""

    def __init__(self, name: str, conf: OpenAICompatConf, key: Secret | None, timeouts: Timeouts) -> None:
        if not conf.base_url:
            raise ValueError(f"provider {name}: base_url is required")
        self.name = name
        self._stream_usage = conf.stream_usage
        headers = dict(conf.headers)
        if key is not None:
            headers["authorization"] = f"Bearer {key.reveal()}"
        self._client = json_client(conf.base_url, headers, timeouts)

    async def aclose(self) -> None:
        await self._client.aclose()

    # ------------------------------------------------------------ public API

    async def chat(self, inbound: Inbound[ChatRequest], call: Call) -> ChatCompletion:
        return await self._post(
            "/chat/completions", self._body(inbound, call, stream=False), call, decode_chat_completion
        )

    def chat_stream(self, inbound: Inbound[ChatRequest], call: Call) -> AsyncIterator[ChatCompletionChunk]:
        return self._stream("/chat/completions", self._body(inbound, call, stream=True), call, decode_chat_chunk)

    async def completion(self, inbound: Inbound[CompletionRequest], call: Call) -> Completion:
        return await self._post("/completions", self._body(inbound, call, stream=False), call, decode_completion)

    def completion_stream(self, inbound: Inbound[CompletionRequest], call: Call) -> AsyncIterator[Completion]:
        return self._stream("/completions", self._body(inbound, call, stream=True), call, decode_completion)

    async def embeddings(self, inbound: Inbound[EmbeddingRequest], call: Call) -> EmbeddingResponse:
        return await self._post("/embeddings", self._body(inbound, call, stream=False), call, decode_embedding_response)

    # ------------------------------------------------------------ internals

    def _body(self, inbound: Inbound[Any], call: Call, *, stream: bool) -> bytes:
        body = dict(inbound.raw)
        body["model"] = call.upstream_model
        if call.overrides:
            body.update(call.overrides)
        if stream and self._stream_usage:
            options = body.get("stream_options")
            body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        return encode(body)

    async def _post(self, path: str, body: bytes, call: Call, decode: Callable[[bytes], R]) -> R:
        content = await post_for_body(self._client, path, body, call, provider=self.name, error_for=self._error_for)
        result = decode_or_protocol_error(decode, content, provider=self.name)
        if result.error is not UNSET:  # 200 with an error body
            raise error_from_detail(result.error, status=0, provider=self.name)
        return result

    async def _stream(self, path: str, body: bytes, call: Call, decode: Callable[[bytes], C]) -> AsyncIterator[C]:
        opened = event_stream(
            self._client,
            path,
            body,
            call,
            provider=self.name,
            error_for=self._error_for,
            not_a_stream=lambda content: _not_a_stream(content, decode, self.name),
        )
        async with opened as events:
            async for chunk in self._chunks(events, decode):
                yield chunk

    def _error_for(self, status: int, headers: httpx.Headers, body: bytes) -> Exception:
        return error_from_response(status, headers, body, provider=self.name)

    async def _chunks(self, events: AsyncIterator[bytes], decode: Callable[[bytes], C]) -> AsyncIterator[C]:
        finished = False
        async for data in events:
            if data == b"[DONE]":
                return
            chunk = decode_or_protocol_error(decode, data, provider=self.name)
            if chunk.error is not UNSET:
                raise error_from_detail(chunk.error, status=0, provider=self.name)
            finished = finished or any(c.finish_reason for c in chunk.choices)
            yield chunk
        if not finished:
            raise UpstreamProtocolError(f"{self.name}: stream ended before the answer was complete", provider=self.name)


def _not_a_stream(body: bytes, decode: Callable[[bytes], Any], provider: str) -> Exception:
    """A 200 that is not SSE: an error body (retryable like its status) or garbage (a protocol error)."""
    try:
        parsed = decode(body)
    except msgspec.DecodeError:
        return UpstreamProtocolError(f"{provider}: upstream answered a stream request without an event stream")
    if parsed.error is not UNSET:
        return error_from_detail(parsed.error, status=0, provider=provider)
    return UpstreamProtocolError(f"{provider}: upstream answered a stream request without an event stream")

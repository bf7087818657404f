"""The OpenAI-compatible adapter: I/O only. The client's body is forwarded as sent (minus the deny-list)."""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import httpx
import msgspec
from msgspec import UNSET

from providers._http import (
    aiter_sse,
    decode_or_protocol_error,
    error_from_detail,
    error_from_response,
    error_from_transport,
    make_client,
)
from providers.base import Call, Inbound, Timeouts
from providers.capabilities import ALL as ALL_CAPABILITIES
from providers.errors import UpstreamProtocolError, UpstreamSilent, UpstreamTimeout
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

_MAX_ERROR_BODY = 64 * 1024


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
        headers = {"content-type": "application/json", "accept": "application/json", **conf.headers}
        if key is not None:
            headers["authorization"] = f"Bearer {key.reveal()}"
        self._client = make_client(
            base_url=conf.base_url, headers=headers, connect_s=timeouts.connect_s, read_s=timeouts.idle_s
        )

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
        try:
            async with asyncio.timeout_at(_loop_deadline(call.deadline)):
                response = await self._client.post(path, content=body, headers=call.headers)
        except TimeoutError:
            raise UpstreamTimeout(
                f"{self.name}: no complete answer before the request deadline", provider=self.name
            ) from None
        except httpx.HTTPError as exc:
            raise error_from_transport(exc, provider=self.name) from None
        if response.status_code != 200:
            raise error_from_response(response.status_code, response.headers, response.content, provider=self.name)
        result = decode_or_protocol_error(decode, response.content, provider=self.name)
        if result.error is not UNSET:  # 200 with an error body
            raise error_from_detail(result.error, status=0, provider=self.name)
        return result

    async def _stream(self, path: str, body: bytes, call: Call, decode: Callable[[bytes], C]) -> AsyncIterator[C]:
        request = self._client.build_request("POST", path, content=body, headers=call.headers)
        headers_by = min(call.deadline, time.monotonic() + call.timeouts.headers_s)
        try:
            async with asyncio.timeout_at(_loop_deadline(headers_by)):
                response = await self._client.send(request, stream=True)
        except TimeoutError:
            raise UpstreamSilent(
                f"{self.name}: no response headers within {call.timeouts.headers_s:g}s", provider=self.name
            ) from None
        except httpx.HTTPError as exc:
            raise error_from_transport(exc, provider=self.name) from None
        try:
            if response.status_code != 200:
                raise error_from_response(
                    response.status_code, response.headers, await _read_capped(response), provider=self.name
                )
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                raise _not_a_stream(await _read_capped(response), decode, self.name)
            async for chunk in self._chunks(response, decode):
                yield chunk
        except httpx.HTTPError as exc:
            raise error_from_transport(exc, provider=self.name) from None
        finally:
            await response.aclose()

    async def _chunks(self, response: httpx.Response, decode: Callable[[bytes], C]) -> AsyncIterator[C]:
        finished = False
        async for data in aiter_sse(response.aiter_bytes()):
            if data == b"[DONE]":
                return
            chunk = decode_or_protocol_error(decode, data, provider=self.name)
            if chunk.error is not UNSET:
                raise error_from_detail(chunk.error, status=0, provider=self.name)
            finished = finished or any(c.finish_reason for c in chunk.choices)
            yield chunk
        if not finished:
            raise UpstreamProtocolError(f"{self.name}: stream ended before the answer was complete", provider=self.name)


def _loop_deadline(deadline: float) -> float:
    """Convert a time.monotonic() deadline to the running loop's clock."""
    loop = asyncio.get_running_loop()
    return loop.time() + (deadline - time.monotonic())


async def _read_capped(response: httpx.Response) -> bytes:
    body = b""
    async for piece in response.aiter_bytes():
        body += piece
        if len(body) >= _MAX_ERROR_BODY:
            break
    return body


def _not_a_stream(body: bytes, decode: Callable[[bytes], Any], provider: str) -> Exception:
    """A 200 that is not SSE: an error body (retryable like its status) or garbage (a protocol error)."""
    try:
        parsed = decode(body)
    except msgspec.DecodeError:
        return UpstreamProtocolError(f"{provider}: upstream answered a stream request without an event stream")
    if parsed.error is not UNSET:
        return error_from_detail(parsed.error, status=0, provider=provider)
    return UpstreamProtocolError(f"{provider}: upstream answered a stream request without an event stream")

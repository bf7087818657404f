"""The Anthropic adapter: I/O only. Translation lives in translate.py, the wire shapes in wire.py."""

import asyncio
import time
from collections.abc import AsyncIterator
from typing import NoReturn

import httpx
import msgspec

from providers._http import (
    aiter_sse,
    decode_or_protocol_error,
    error_from_response,
    error_from_transport,
    make_client,
    parse_retry_after,
)
from providers.anthropic import errors, translate, wire
from providers.anthropic.config import AnthropicConf
from providers.base import Call, Inbound, Timeouts
from providers.errors import UpstreamProtocolError, UpstreamSilent, UpstreamTimeout
from providers.schema.chat import ChatCompletion, ChatCompletionChunk, ChatRequest
from providers.schema.completions import Completion, CompletionRequest, EmbeddingRequest, EmbeddingResponse
from providers.secrets import Secret

_PATH = "/v1/messages"
_MAX_ERROR_BODY = 64 * 1024


class AnthropicProvider:
    """Talks to Anthropic's Messages API (POST /v1/messages), JSON and SSE."""

    capabilities: frozenset[str] = frozenset({"tools", "json_schema", "vision", "reasoning"})

    def __init__(self, name: str, conf: AnthropicConf, key: Secret | None, timeouts: Timeouts) -> None:
        if not conf.base_url:
            raise ValueError(f"provider {name}: base_url is required")
        self.name = name
        self._conf = conf
        headers = {
            "content-type": "application/json",
            "accept": "application/json",
            "anthropic-version": conf.anthropic_version,
            **conf.headers,
        }
        if conf.betas:
            headers["anthropic-beta"] = ",".join(conf.betas)
        if key is not None:
            headers["x-api-key"] = key.reveal()
        self._client = make_client(
            base_url=conf.base_url, headers=headers, connect_s=timeouts.connect_s, read_s=timeouts.idle_s
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    # ------------------------------------------------------------ public API

    async def chat(self, inbound: Inbound[ChatRequest], call: Call) -> ChatCompletion:
        body, json_tool = self._translate(inbound, call, stream=False)
        try:
            async with asyncio.timeout_at(_loop_deadline(call.deadline)):
                response = await self._client.post(_PATH, content=wire.encode(body), headers=call.headers)
        except TimeoutError:
            raise UpstreamTimeout(
                f"{self.name}: no complete answer before the request deadline", provider=self.name
            ) from None
        except httpx.HTTPError as exc:
            raise error_from_transport(exc, provider=self.name) from None
        if response.status_code != 200:
            self._raise_status(response.status_code, response.headers, response.content)
        message = decode_or_protocol_error(wire.decode_message, response.content, provider=self.name)
        return translate.from_anthropic_response(
            message, created=int(time.time()), model=body.model, json_tool=json_tool
        )

    def chat_stream(self, inbound: Inbound[ChatRequest], call: Call) -> AsyncIterator[ChatCompletionChunk]:
        body, json_tool = self._translate(inbound, call, stream=True)
        state = translate.StreamState(
            created=int(time.time()), model=body.model, json_tool=json_tool, provider=self.name
        )
        return self._stream(wire.encode(body), call, state)

    async def completion(self, inbound: Inbound[CompletionRequest], call: Call) -> Completion:
        raise errors.unsupported_endpoint("/v1/completions", provider=self.name)

    def completion_stream(self, inbound: Inbound[CompletionRequest], call: Call) -> AsyncIterator[Completion]:
        raise errors.unsupported_endpoint("/v1/completions", provider=self.name)

    async def embeddings(self, inbound: Inbound[EmbeddingRequest], call: Call) -> EmbeddingResponse:
        raise errors.unsupported_endpoint("/v1/embeddings", provider=self.name)

    # ------------------------------------------------------------ internals

    def _translate(self, inbound: Inbound[ChatRequest], call: Call, *, stream: bool) -> translate.Translated:
        req = translate.apply_overrides(inbound.typed, call.overrides)
        return translate.to_anthropic_request(
            req, model=call.upstream_model, conf=self._conf, raw=inbound.raw, stream=stream
        )

    def _raise_status(self, status: int, headers: httpx.Headers, body: bytes) -> NoReturn:
        if 300 <= status < 400:  # the shared redirect error (redirects are never followed)
            raise error_from_response(status, headers, body, provider=self.name)
        raise errors.error_from_body(status, body, provider=self.name, retry_after_s=parse_retry_after(headers))

    async def _stream(
        self, body: bytes, call: Call, state: translate.StreamState
    ) -> AsyncIterator[ChatCompletionChunk]:
        request = self._client.build_request("POST", _PATH, content=body, headers=call.headers)
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
                self._raise_status(response.status_code, response.headers, await _read_capped(response))
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                raise self._not_a_stream(await _read_capped(response))
            async for data in aiter_sse(response.aiter_bytes()):
                event = decode_or_protocol_error(wire.decode_event, data, provider=self.name)
                for chunk in translate.step(state, event):
                    yield chunk
            if not state.done:
                raise UpstreamProtocolError(
                    f"{self.name}: stream ended before the answer was complete", provider=self.name
                )
        except httpx.HTTPError as exc:
            raise error_from_transport(exc, provider=self.name) from None
        finally:
            await response.aclose()

    def _not_a_stream(self, body: bytes) -> Exception:
        """A 200 that is not SSE: an Anthropic error body (typed like its kind) or garbage."""
        try:
            info = wire.decode_error(body).error
        except msgspec.DecodeError:
            return UpstreamProtocolError(
                f"{self.name}: upstream answered a stream request without an event stream", provider=self.name
            )
        return errors.anthropic_error(None, info.type, info.message, provider=self.name)


def _loop_deadline(deadline: float) -> float:
    """Convert a time.monotonic() deadline to the running loop's clock."""
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())


async def _read_capped(response: httpx.Response) -> bytes:
    body = b""
    async for piece in response.aiter_bytes():
        body += piece
        if len(body) >= _MAX_ERROR_BODY:
            break
    return body

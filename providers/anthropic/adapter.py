"""The Anthropic adapter: I/O only. Translation lives in translate.py, the wire shapes in wire.py."""

import time
from collections.abc import AsyncIterator

import httpx
import msgspec

from providers._http import (
    decode_or_protocol_error,
    event_stream,
    json_client,
    parse_retry_after,
    post_for_body,
)
from providers.anthropic import errors, translate, wire
from providers.anthropic.config import AnthropicConf
from providers.base import Call, Inbound, Timeouts
from providers.errors import UpstreamProtocolError
from providers.schema.chat import ChatCompletion, ChatCompletionChunk, ChatRequest, with_overrides
from providers.schema.completions import Completion, CompletionRequest, EmbeddingRequest, EmbeddingResponse
from providers.secrets import Secret

_PATH = "/v1/messages"


class AnthropicProvider:
    """Talks to Anthropic's Messages API (POST /v1/messages), JSON and SSE."""

    capabilities: frozenset[str] = frozenset({"tools", "json_schema", "vision", "reasoning"})

    def __init__(self, name: str, conf: AnthropicConf, key: Secret | None, timeouts: Timeouts) -> None:
        if not conf.base_url:
            raise ValueError(f"provider {name}: base_url is required")
        self.name = name
        self._conf = conf
        headers = {"anthropic-version": conf.anthropic_version, **conf.headers}
        if conf.betas:
            headers["anthropic-beta"] = ",".join(conf.betas)
        if key is not None:
            headers["x-api-key"] = key.reveal()
        self._client = json_client(conf.base_url, headers, timeouts)

    async def aclose(self) -> None:
        await self._client.aclose()

    # ------------------------------------------------------------ public API

    async def chat(self, inbound: Inbound[ChatRequest], call: Call) -> ChatCompletion:
        body, json_tool = self._translate(inbound, call, stream=False)
        content = await post_for_body(
            self._client, _PATH, wire.encode(body), call, provider=self.name, error_for=self._error_for
        )
        message = decode_or_protocol_error(wire.decode_message, content, provider=self.name)
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
        req = with_overrides(inbound.typed, call.overrides)
        return translate.to_anthropic_request(
            req, model=call.upstream_model, conf=self._conf, raw=inbound.raw, stream=stream
        )

    def _error_for(self, status: int, headers: httpx.Headers, body: bytes) -> Exception:
        return errors.error_from_body(status, body, provider=self.name, retry_after_s=parse_retry_after(headers))

    async def _stream(
        self, body: bytes, call: Call, state: translate.StreamState
    ) -> AsyncIterator[ChatCompletionChunk]:
        opened = event_stream(
            self._client,
            _PATH,
            body,
            call,
            provider=self.name,
            error_for=self._error_for,
            not_a_stream=self._not_a_stream,
        )
        async with opened as events:
            async for data in events:
                event = decode_or_protocol_error(wire.decode_event, data, provider=self.name)
                for chunk in translate.step(state, event):
                    yield chunk
            if not state.done:
                raise UpstreamProtocolError(
                    f"{self.name}: stream ended before the answer was complete", provider=self.name
                )

    def _not_a_stream(self, body: bytes) -> Exception:
        """A 200 that is not SSE: an Anthropic error body (typed like its kind) or garbage."""
        try:
            info = wire.decode_error(body).error
        except msgspec.DecodeError:
            return UpstreamProtocolError(
                f"{self.name}: upstream answered a stream request without an event stream", provider=self.name
            )
        return errors.anthropic_error(None, info.type, info.message, provider=self.name)

"""The Mistral adapter: I/O only. Translation and error mapping live in translate.py.

POST {base}/chat/completions (JSON or SSE ending in `data: [DONE]`) and {base}/embeddings, with a
bearer key (docs.mistral.ai/api, read 2026-06).
"""

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
from providers.base import Call, Inbound, Timeouts
from providers.errors import InvalidRequest, UpstreamProtocolError
from providers.mistral import translate, wire
from providers.mistral.config import MistralConf
from providers.schema.chat import ChatCompletion, ChatCompletionChunk, ChatRequest, with_overrides
from providers.schema.codec import decode_embedding_response
from providers.schema.completions import Completion, CompletionRequest, EmbeddingRequest, EmbeddingResponse
from providers.secrets import Secret


class MistralProvider:
    """Mistral La Plateforme behind the OpenAI chat and embeddings endpoints."""

    capabilities: frozenset[str] = frozenset({"tools", "json_schema", "vision", "reasoning", "embeddings"})

    def __init__(
        self,
        name: str,
        conf: MistralConf,
        key: Secret | None,
        timeouts: Timeouts,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not conf.base_url:
            raise ValueError(f"provider {name}: base_url is required")
        self.name = name
        self._efforts = tuple(conf.reasoning_efforts) or ("none", "high")
        headers = dict(conf.headers)
        if key is not None:
            headers["authorization"] = f"Bearer {key.reveal()}"
        self._client = json_client(conf.base_url, headers, timeouts, transport)

    async def aclose(self) -> None:
        await self._client.aclose()

    # ------------------------------------------------------------ public API

    async def chat(self, inbound: Inbound[ChatRequest], call: Call) -> ChatCompletion:
        body = self._chat_body(inbound, call, stream=False)
        raw = await self._post("/chat/completions", body, call)
        resp = decode_or_protocol_error(wire.decode_response, raw, provider=self.name)
        return translate.from_mistral_response(resp, provider=self.name)

    def chat_stream(self, inbound: Inbound[ChatRequest], call: Call) -> AsyncIterator[ChatCompletionChunk]:
        body = self._chat_body(inbound, call, stream=True)  # a request Mistral cannot take fails here
        req = inbound.typed
        state = translate.StreamState(n=req.n if isinstance(req.n, int) and req.n > 0 else 1, provider=self.name)
        return self._stream("/chat/completions", body, call, state)

    async def completion(self, inbound: Inbound[CompletionRequest], call: Call) -> Completion:
        raise _no_completions(self.name)

    async def completion_stream(self, inbound: Inbound[CompletionRequest], call: Call) -> AsyncIterator[Completion]:
        raise _no_completions(self.name)
        yield  # pragma: no cover - makes this an async generator

    async def embeddings(self, inbound: Inbound[EmbeddingRequest], call: Call) -> EmbeddingResponse:
        body = wire.encode(translate.to_mistral_embeddings(inbound.typed, model=call.upstream_model))
        raw = await self._post("/embeddings", body, call)
        resp: EmbeddingResponse = decode_or_protocol_error(decode_embedding_response, raw, provider=self.name)
        if resp.error is not msgspec.UNSET:
            raise translate.error_from_body(0, raw, provider=self.name)
        return resp

    # ------------------------------------------------------------ internals

    def _chat_body(self, inbound: Inbound[ChatRequest], call: Call, *, stream: bool) -> bytes:
        req = with_overrides(inbound.typed, call.overrides)
        body = translate.to_mistral_request(
            req, model=call.upstream_model, stream=stream, raw=inbound.raw, efforts=self._efforts
        )
        return wire.encode(body)

    async def _post(self, path: str, body: bytes, call: Call) -> bytes:
        return await post_for_body(self._client, path, body, call, provider=self.name, error_for=self._error)

    async def _stream(
        self, path: str, body: bytes, call: Call, state: translate.StreamState
    ) -> AsyncIterator[ChatCompletionChunk]:
        opened = event_stream(
            self._client,
            path,
            body,
            call,
            provider=self.name,
            error_for=self._error,
            not_a_stream=self._not_a_stream,
        )
        async with opened as events:
            async for data in events:
                if data == b"[DONE]":
                    break
                event = decode_or_protocol_error(wire.decode_chunk, data, provider=self.name)
                for chunk in translate.step(state, event):
                    yield chunk
            for chunk in translate.finish(state):
                yield chunk

    def _error(self, status: int, headers: httpx.Headers, body: bytes) -> Exception:
        return translate.error_from_body(status, body, provider=self.name, retry_after_s=parse_retry_after(headers))

    def _not_a_stream(self, body: bytes) -> Exception:
        """A 200 that is not SSE: an error body (mapped like any error) or garbage (a protocol error)."""
        try:
            fields = wire.decode_error(body)
        except msgspec.DecodeError:
            fields = None
        if fields is not None and (fields.object == "error" or fields.message is not None):
            return translate.mistral_error(0, fields, provider=self.name)
        return UpstreamProtocolError(
            f"{self.name}: upstream answered a stream request without an event stream", provider=self.name
        )


def _no_completions(provider: str) -> InvalidRequest:
    return InvalidRequest(
        f"{provider}: Mistral has no legacy completions endpoint; use /v1/chat/completions", param="model"
    )

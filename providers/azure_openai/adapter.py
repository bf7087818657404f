"""The Azure OpenAI adapter: the OpenAI-compatible adapter with Azure's addressing and auth.

The bodies are OpenAI's (minus `model`: the deployment in the URL chooses it), so the I/O and the
error mapping are the OpenAI-compatible ones. What differs (Azure OpenAI REST reference, data plane
inference, read 2026-05: https://learn.microsoft.com/azure/ai-services/openai/reference):

- URL: {endpoint}/openai/deployments/{deployment}/{chat/completions|completions|embeddings}?api-version=...
- auth: an `api-key` header instead of a bearer token;
- content filtering: `finish_reason: "content_filter"` (already OpenAI's value), per-choice
  `content_filter_results` and top-level `prompt_filter_results` (passed through), a filtered prompt
  is a 400 with `code: "content_filter"`, and a stream's first event is a choice-less chunk that only
  carries `prompt_filter_results` (content-filter docs: "Streaming"), folded into the next chunk here.
"""

from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import msgspec
from msgspec import UNSET

from providers.azure_openai.config import AzureOpenAIConf
from providers.base import Call, Inbound, Timeouts
from providers.openai_compat.adapter import OpenAICompatProvider
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

C = TypeVar("C", ChatCompletionChunk, Completion)


class AzureOpenAIProvider(OpenAICompatProvider):
    """Azure OpenAI deployments; a model's `model:` is the deployment name."""

    capabilities: frozenset[str] = frozenset(
        {"tools", "json_schema", "vision", "logprobs", "reasoning", "embeddings", "completions"}
    )

    def __init__(self, name: str, conf: AzureOpenAIConf, key: Secret | None, timeouts: Timeouts) -> None:
        endpoint = conf.base_url.rstrip("/").removesuffix("/openai")
        super().__init__(name, _with_base_url(conf, endpoint), None, timeouts)
        if key is not None:
            self._client.headers["api-key"] = key.reveal()
        self._query = urlencode({"api-version": conf.api_version})

    # ------------------------------------------------------------ public API

    async def chat(self, inbound: Inbound[ChatRequest], call: Call) -> ChatCompletion:
        body = self._body(inbound, call, stream=False)
        return await self._post(self._path(call, "chat/completions"), body, call, decode_chat_completion)

    def chat_stream(self, inbound: Inbound[ChatRequest], call: Call) -> AsyncIterator[ChatCompletionChunk]:
        body = self._body(inbound, call, stream=True)
        return self._stream(self._path(call, "chat/completions"), body, call, decode_chat_chunk)

    async def completion(self, inbound: Inbound[CompletionRequest], call: Call) -> Completion:
        body = self._body(inbound, call, stream=False)
        return await self._post(self._path(call, "completions"), body, call, decode_completion)

    def completion_stream(self, inbound: Inbound[CompletionRequest], call: Call) -> AsyncIterator[Completion]:
        body = self._body(inbound, call, stream=True)
        return self._stream(self._path(call, "completions"), body, call, decode_completion)

    async def embeddings(self, inbound: Inbound[EmbeddingRequest], call: Call) -> EmbeddingResponse:
        body = self._body(inbound, call, stream=False)
        return await self._post(self._path(call, "embeddings"), body, call, decode_embedding_response)

    # ------------------------------------------------------------ internals

    def _path(self, call: Call, operation: str) -> str:
        return f"/openai/deployments/{quote(call.upstream_model, safe='')}/{operation}?{self._query}"

    def _body(self, inbound: Inbound[Any], call: Call, *, stream: bool) -> bytes:
        body = {k: v for k, v in inbound.raw.items() if k != "model"}  # the deployment picks the model
        if call.overrides:
            body.update(call.overrides)
        if stream and self._stream_usage:
            options = body.get("stream_options")
            body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        return encode(body)

    async def _chunks(self, events: AsyncIterator[bytes], decode: Callable[[bytes], C]) -> AsyncIterator[C]:
        """Azure's choice-less `prompt_filter_results` chunk is folded into the next chunk."""
        pending: list[Any] | None = None
        async for chunk in super()._chunks(events, decode):
            if not chunk.choices and chunk.usage in (UNSET, None):
                found = getattr(chunk, "prompt_filter_results", UNSET)
                pending = found if isinstance(found, list) else pending
                continue
            if pending is not None and isinstance(chunk, ChatCompletionChunk):
                chunk.prompt_filter_results = pending
                pending = None
            yield chunk


def _with_base_url(conf: AzureOpenAIConf, base_url: str) -> Any:
    """The conf as the OpenAI-compatible adapter reads it, pointed at the bare resource endpoint."""
    return msgspec.structs.replace(conf, base_url=base_url)

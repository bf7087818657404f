"""OpenAI legacy completions (POST /v1/completions) and embeddings (POST /v1/embeddings) wire schema."""

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from providers.schema.chat import Out, StreamOptions, Usage, Wire
from providers.schema.errors import ErrorDetail


class CompletionRequest(Wire):
    model: str
    prompt: str | list[Any]  # text, texts, token ids, or lists of token ids
    stream: bool | None | UnsetType = UNSET
    stream_options: StreamOptions | None | UnsetType = UNSET
    n: int | None | UnsetType = UNSET
    best_of: int | None | UnsetType = UNSET
    max_tokens: int | None | UnsetType = UNSET
    temperature: float | None | UnsetType = UNSET
    top_p: float | None | UnsetType = UNSET
    stop: str | list[str] | None | UnsetType = UNSET
    seed: int | None | UnsetType = UNSET
    logprobs: int | None | UnsetType = UNSET
    echo: bool | None | UnsetType = UNSET
    suffix: str | None | UnsetType = UNSET
    user: str | None | UnsetType = UNSET

    @property
    def is_stream(self) -> bool:
        return bool(self.stream)

    @property
    def output_cap(self) -> int | None:
        return self.max_tokens if isinstance(self.max_tokens, int) else None

    @property
    def wants_usage_chunk(self) -> bool:
        return isinstance(self.stream_options, StreamOptions) and self.stream_options.include_usage is True


class CompletionLogprobs(Out):
    tokens: list[str] | None = None
    token_logprobs: list[float | None] | None = None
    top_logprobs: list[dict[str, float] | None] | None = None
    text_offset: list[int] | None = None


class CompletionChoice(Out):
    index: int = 0
    text: str = ""
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class Completion(Out):
    """Both the whole response and a stream chunk (OpenAI uses the same shape for both)."""

    id: str = ""
    object: str = "text_completion"
    created: int = 0
    model: str = ""
    choices: list[CompletionChoice] = []
    usage: Usage | None | UnsetType = UNSET
    system_fingerprint: str | None | UnsetType = UNSET
    error: ErrorDetail | UnsetType = UNSET

    def carries_answer(self) -> bool:
        return any(c.text for c in self.choices)

    def shows_progress(self) -> bool:
        return self.carries_answer()


class EmbeddingRequest(Wire):
    model: str
    input: str | list[Any]  # text, texts, token ids, or lists of token ids
    encoding_format: str | UnsetType = UNSET
    dimensions: int | UnsetType = UNSET
    user: str | UnsetType = UNSET


class Embedding(Out):
    object: str = "embedding"
    index: int = 0
    embedding: list[float] | str = []


class EmbeddingUsage(Out):
    prompt_tokens: int = 0
    total_tokens: int = 0


class EmbeddingResponse(Out):
    object: str = "list"
    data: list[Embedding] = []
    model: str = ""
    usage: EmbeddingUsage | None = None
    error: ErrorDetail | UnsetType = UNSET


class ModelCard(Out):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "escalade"


class ModelList(Out):
    object: str = "list"
    data: list[ModelCard] = msgspec.field(default_factory=list)


JSONObject = dict[str, Any]

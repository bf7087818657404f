"""The provider seam: what every adapter implements, and the per-attempt context it is handed."""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import msgspec

from providers.schema.chat import ChatCompletion, ChatCompletionChunk, ChatRequest
from providers.schema.completions import Completion, CompletionRequest, EmbeddingRequest, EmbeddingResponse

T = TypeVar("T")


class Timeouts(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The four per-attempt timeouts plus the total cap over all attempts of one request."""

    connect_s: float = 2.0
    """TCP/TLS connect."""
    headers_s: float = 10.0
    """Request sent -> response headers, for streaming calls. A silent upstream is not retried."""
    first_token_s: float = 15.0
    """Request sent -> first chunk with content or a tool call (streaming)."""
    idle_s: float = 30.0
    """Longest gap between two chunks once streaming (and between two reads of a response body)."""
    total_s: float = 600.0
    """One deadline over every attempt, retry and fallback of a request, streaming included."""


@dataclass(slots=True, frozen=True)
class Inbound(Generic[T]):
    """A client request in both views: typed (validated) and raw (for faithful pass-through)."""

    typed: T
    raw: dict[str, Any]
    """The client's JSON body with deny-listed fields already removed."""


@dataclass(slots=True)
class Call:
    """Per-attempt context handed to an adapter."""

    request_id: str
    upstream_model: str
    timeouts: Timeouts
    deadline: float
    """Absolute `time.monotonic()` by which everything must be done."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Body fields the policy sets on this attempt (e.g. a rung's reasoning_effort)."""
    headers: dict[str, str] = field(default_factory=dict)
    """Extra upstream headers decided by the gateway (e.g. x-request-id, traceparent)."""
    has_fallback: bool = True
    """Another deployment could still answer if this attempt is slow (enables the first-token limit)."""


class Provider(Protocol):
    """One upstream API. Adapters do I/O only; translation lives in pure functions beside them."""

    name: str

    async def chat(self, inbound: Inbound[ChatRequest], call: Call) -> ChatCompletion: ...

    def chat_stream(self, inbound: Inbound[ChatRequest], call: Call) -> AsyncIterator[ChatCompletionChunk]: ...

    async def completion(self, inbound: Inbound[CompletionRequest], call: Call) -> Completion: ...

    def completion_stream(self, inbound: Inbound[CompletionRequest], call: Call) -> AsyncIterator[Completion]: ...

    async def embeddings(self, inbound: Inbound[EmbeddingRequest], call: Call) -> EmbeddingResponse: ...

    async def aclose(self) -> None: ...

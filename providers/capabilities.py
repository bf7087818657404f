"""What a request needs from a deployment, and what each provider type can give. Pure.

Routing skips a deployment that cannot serve a request (with the reason in the trace) instead of
sending it a request it would reject or, worse, silently answer without the feature.
"""

from typing import Literal

from msgspec import UNSET

from providers.schema.chat import (
    ChatRequest,
    ImagePart,
    ResponseFormatJSONSchema,
    UserMessage,
)

Capability = Literal["tools", "json_schema", "vision", "logprobs", "reasoning", "embeddings", "completions"]
ENDPOINTS: frozenset[str] = frozenset({"embeddings", "completions"})
"""Endpoint abilities: decided by the adapter (a model's declared list names features, not endpoints)."""
ALL: frozenset[str] = frozenset({"tools", "json_schema", "vision", "logprobs", "reasoning"}) | ENDPOINTS


HARD: frozenset[str] = frozenset({"tools", "json_schema", "vision", "logprobs", "embeddings", "completions"})
"""Needs a deployment must meet to be tried. `reasoning` is soft: a model without it answers directly."""


def required_by_chat(req: ChatRequest) -> frozenset[str]:
    """The capabilities a chat request cannot be served without (`reasoning` included; routing
    filters on HARD ones only)."""
    needs: set[str] = set()
    if req.tools not in (UNSET, None) and req.tools and req.tool_choice != "none":
        needs.add("tools")
    if isinstance(req.response_format, ResponseFormatJSONSchema):
        needs.add("json_schema")
    if req.logprobs is True:
        needs.add("logprobs")
    if isinstance(req.reasoning_effort, str) and req.reasoning_effort not in ("none", "minimal"):
        needs.add("reasoning")
    if any(isinstance(m, UserMessage) and _has_image(m) for m in req.messages):
        needs.add("vision")
    return frozenset(needs)


def _has_image(message: UserMessage) -> bool:
    return not isinstance(message.content, str) and any(isinstance(p, ImagePart) for p in message.content)


def missing(needs: frozenset[str], has: frozenset[str]) -> frozenset[str]:
    return needs - has

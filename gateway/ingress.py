"""Request bodies in: size limit, one decode into typed and raw views, deny-list, policy caps."""

import re
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import msgspec

from policies.schema import ServerConf
from providers.base import Inbound
from providers.errors import InvalidField, InvalidJSON, InvalidRequest, PayloadTooLarge
from providers.schema.codec import decode_json

T = TypeVar("T")

DENY_FIELDS: frozenset[str] = frozenset(
    {
        "api_base",
        "base_url",
        "api_key",
        "api_version",
        "api_type",
        "extra_headers",
        "extra_query",
        "user_config",
        "organization",
        "deployment_id",
        "custom_llm_provider",
        "azure_ad_token",
        "aws_access_key_id",
        "aws_secret_access_key",
        "vertex_credentials",
        "mock_response",
        "metadata_headers",
    }
)
"""Fields never forwarded upstream: each would let a client pick the upstream or its credentials."""

_FIELD_IN_MSG = re.compile(r"`\$\.?([^`]*)`")


async def read_body(chunks: AsyncIterator[bytes], content_length: str | None, limit: int) -> bytes:
    """Read the request body, refusing with 413 before (or while) reading past `limit` bytes."""
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        raise PayloadTooLarge(f"request body is {content_length} bytes; the limit is {limit}")
    parts: list[bytes] = []
    size = 0
    async for part in chunks:
        size += len(part)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        parts.append(part)
    return b"".join(parts)


def decode_inbound(body: bytes, decode_typed: Callable[[bytes], T]) -> Inbound[T]:
    """Decode the body once as JSON (raw view) and once as the typed request (validation)."""
    if not body:
        raise InvalidJSON("the request body is empty; send a JSON object")
    try:
        raw = decode_json(body)
    except msgspec.DecodeError as exc:
        raise InvalidJSON(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidJSON("the request body must be a JSON object")
    try:
        typed = decode_typed(body)
    except msgspec.ValidationError as exc:
        raise _field_error(str(exc)) from None
    for name in DENY_FIELDS.intersection(raw):
        del raw[name]
    return Inbound(typed=typed, raw=raw)


def _field_error(message: str) -> InvalidRequest:
    """msgspec's message -> an OpenAI-style error naming the parameter (`messages[0].role`)."""
    found = _FIELD_IN_MSG.search(message)
    param = found.group(1) if found else None
    missing = re.search(r"missing required field `([^`]+)`", message)
    if missing:
        name = f"{param}.{missing.group(1)}" if param else missing.group(1)
        return InvalidField(f"Missing required parameter: '{name}'.", param=name)
    text = message.split(" - at ")[0]
    return InvalidField(f"Invalid parameter '{param}': {text}." if param else f"{text}.", param=param)


def check_caps(typed: Any, server: ServerConf) -> None:
    """The policy's caps on `n`/`best_of` and on output tokens (OWASP API4: tokens are money)."""
    for name in ("n", "best_of"):
        value = getattr(typed, name, None)
        if isinstance(value, int) and not 1 <= value <= server.max_n:
            raise InvalidRequest(f"{name} must be between 1 and {server.max_n}", param=name, code="invalid_value")
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(typed, name, None)
        if not isinstance(value, int):
            continue
        if value < 1:
            raise InvalidRequest(f"{name} must be at least 1", param=name, code="invalid_value")
        if server.max_tokens is not None and value > server.max_tokens:
            raise InvalidRequest(
                f"{name} is {value}; this gateway allows at most {server.max_tokens}", param=name, code="invalid_value"
            )
    messages = getattr(typed, "messages", None)
    if messages is not None and not messages:
        raise InvalidRequest("messages must contain at least one message", param="messages", code="invalid_value")

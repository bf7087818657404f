"""Anthropic errors (HTTP status and `error.type`) as escalade's typed errors. Pure.

Error shapes and types: https://docs.claude.com/en/api/errors (read 2026-05). `overloaded_error`
(HTTP 529) means the API is busy for everyone: retryable, and a reason to fall back.
"""

import re

import msgspec

from providers.anthropic import wire
from providers.errors import (
    ContextLengthExceeded,
    GatewayError,
    InvalidRequest,
    UpstreamAuthError,
    UpstreamNotFound,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    scrub,
)

PROVIDER = "anthropic"

_CONTEXT_TOO_LONG = re.compile(
    r"prompt is too long|context (?:window|length)|exceeds? (?:the )?context|input length and `max_tokens` exceed",
    re.IGNORECASE,
)


def anthropic_error(
    status: int | None,
    kind: str,
    message: str,
    *,
    provider: str = PROVIDER,
    retry_after_s: float | None = None,
) -> GatewayError:
    """An Anthropic error (HTTP status and/or `error.type`) as escalade's typed error.

    The status is None for an `event: error` inside a stream; the type alone decides then.
    """
    code = status or 0
    text = f"{provider}: {scrub(message) or f'HTTP {code}'}"
    if kind in ("authentication_error", "permission_error") or code in (401, 403):
        return UpstreamAuthError(f"{provider}: the provider rejected escalade's credentials", provider=provider)
    if kind == "rate_limit_error" or code == 429:
        return UpstreamRateLimited(text, provider=provider, retry_after_s=retry_after_s)
    if kind == "overloaded_error" or code == 529:  # retryable: "the API is temporarily overloaded"
        return UpstreamUnavailable(text, provider=provider, retry_after_s=retry_after_s)
    if kind == "timeout_error" or code in (408, 504):
        return UpstreamTimeout(text, provider=provider)
    if kind in ("api_error", "billing_error") or code >= 500 or code == 402:
        return UpstreamUnavailable(text, provider=provider, retry_after_s=retry_after_s)
    if kind == "not_found_error" or code == 404:
        return UpstreamNotFound(text, provider=provider)
    if kind == "request_too_large" or code == 413:
        return UpstreamRejected(text, provider=provider, param="messages")
    if kind == "invalid_request_error" or 400 <= code < 500:
        if _CONTEXT_TOO_LONG.search(message):
            return ContextLengthExceeded(text, provider=provider, param="messages")
        return UpstreamRejected(text, provider=provider)
    if status is None:
        return UpstreamUnavailable(text, provider=provider)  # an in-stream error of a type not listed above
    return UpstreamProtocolError(text, provider=provider)


def error_from_body(status: int, body: bytes, *, provider: str, retry_after_s: float | None) -> GatewayError:
    """A non-200 response: the Anthropic error body when there is one, else the status alone."""
    try:
        info = wire.decode_error(body).error
    except msgspec.DecodeError:
        info = wire.ErrorInfo(type="", message=f"HTTP {status} from upstream")
    return anthropic_error(status, info.type, info.message, provider=provider, retry_after_s=retry_after_s)


def unsupported_endpoint(endpoint: str, *, provider: str) -> InvalidRequest:
    return InvalidRequest(
        f"{provider}: Anthropic does not offer {endpoint}; route this request to another deployment",
        param="model",
        code="unsupported_endpoint",
    )

"""Gemini errors -> escalade's error family. Pure.

Gemini answers errors as `{"error": {"code", "message", "status", "details"}}` (google.rpc.Status);
status names and their meaning from ai.google.dev/gemini-api/docs/troubleshooting (read 2026-06).
"""

from typing import Any

import msgspec

from providers.errors import (
    ContextLengthExceeded,
    GatewayError,
    UpstreamAuthError,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    scrub,
)
from providers.gemini import wire


def _retry_delay(details: list[dict[str, Any]]) -> float | None:
    """google.rpc.RetryInfo.retryDelay ("37s", "0.5s") from an error's details."""
    for detail in details:
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = str(detail.get("retryDelay", "")).removesuffix("s")
            try:
                return max(0.0, float(delay))
            except ValueError:
                return None
    return None


def _reasons(details: list[dict[str, Any]]) -> set[str]:
    return {str(d.get("reason")) for d in details if "reason" in d}


_AUTH = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED"})
_RETRYABLE = frozenset({"UNAVAILABLE", "INTERNAL", "UNKNOWN", "ABORTED", "CANCELLED"})
_CODE_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND"}
_CODE_STATUS |= {429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def error_from_status(
    error: wire.Status, *, status: int, provider: str = "gemini", retry_after_s: float | None = None
) -> GatewayError:
    """A Gemini error (HTTP status and google.rpc.Status) -> escalade's error family.

    Codes from ai.google.dev/gemini-api/docs/troubleshooting (read 2026-06). status=0 means the error
    came inside a 200 body or an SSE event.
    """
    kind = error.status or _CODE_STATUS.get(status or error.code, "")
    message = f"{provider}: {scrub(error.message or kind or f'HTTP {status}')}"
    if kind in _AUTH or "API_KEY_INVALID" in _reasons(error.details):
        # A bad key comes back as 400 INVALID_ARGUMENT with reason API_KEY_INVALID: still our key's fault.
        return UpstreamAuthError(f"{provider}: the provider rejected escalade's credentials", provider=provider)
    if kind == "RESOURCE_EXHAUSTED":
        delay = _retry_delay(error.details)
        wait = delay if delay is not None else retry_after_s
        return UpstreamRateLimited(message, provider=provider, retry_after_s=wait)
    if kind == "DEADLINE_EXCEEDED":
        return UpstreamTimeout(message, provider=provider)
    if kind == "NOT_FOUND":
        return UpstreamNotFound(message, provider=provider)
    if kind == "FAILED_PRECONDITION":
        # e.g. "User location is not supported", billing not enabled: the account, not the request.
        refused = f"{provider}: the provider refused this account: {scrub(error.message)}"
        return UpstreamAuthError(refused, provider=provider)
    if kind in ("INVALID_ARGUMENT", "OUT_OF_RANGE"):
        text = error.message.lower()
        if "token count" in text and "exceeds the maximum" in text:
            return ContextLengthExceeded(message, provider=provider)
        return UpstreamRejected(message, provider=provider)
    if kind in _RETRYABLE or status >= 500 or status == 0:
        return UpstreamUnavailable(message, provider=provider, retry_after_s=retry_after_s)
    return UpstreamRejected(message, provider=provider)


def error_from_body(
    status: int, body: bytes, *, provider: str = "gemini", retry_after_s: float | None = None
) -> GatewayError:
    """An HTTP error response -> the mapped error (an unreadable body still maps by status)."""
    try:
        decoded = wire.decode_error(body)
    except msgspec.DecodeError:
        decoded = None
    if isinstance(decoded, list):
        decoded = decoded[0] if decoded else None
    error = decoded.error if decoded is not None else wire.Status(code=status, message=f"HTTP {status} from upstream")
    return error_from_status(error, status=status, provider=provider, retry_after_s=retry_after_s)

"""The typed error family every layer raises; each error knows its HTTP status and OpenAI error shape.

Tree::

    GatewayError                      500 server_error
    ├── InvalidRequest                400 invalid_request_error
    │   ├── InvalidJSON               400 (body is not JSON)
    │   ├── InvalidField              422 (JSON, but a field has the wrong type or is missing)
    │   └── UpstreamRejected          400 (the upstream said 4xx; message scrubbed and passed on)
    │       └── ContextLengthExceeded 400 code=context_length_exceeded
    ├── PayloadTooLarge               413
    ├── Unauthorized                  401 (the client's gateway key)
    ├── Forbidden                     403
    ├── ModelNotFound                 404 (no such route)
    ├── NoEligibleRoute               503 (every candidate failed or was skipped)
    └── UpstreamError                 (something went wrong talking to an upstream)
        ├── UpstreamRateLimited       429, retryable, keeps Retry-After
        ├── UpstreamUnavailable       503, retryable (5xx, overloaded)
        ├── UpstreamConnectionError   502, retryable (refused, reset)
        ├── UpstreamTimeout           504, retryable unless it is a header/first-token timeout
        ├── UpstreamProtocolError     502, retryable before commit (bad JSON, unknown event, 200+error)
        ├── UpstreamAuthError         502, never retried on that provider (the provider key is bad)
        ├── UpstreamNotFound          502 (the upstream does not know the model: a policy mistake)
        └── UpstreamRedirect          502 (redirects are never followed)

OpenAI SDKs choose the exception class from the status code, so status codes are the contract;
the ``type`` and ``code`` strings are stable too.
"""

import re
from typing import ClassVar

from providers.schema.errors import ErrorBody, ErrorDetail

_KEYLIKE = re.compile(
    r"(?:sk|pk|rk|ak|api|key|token|bearer)[-_][A-Za-z0-9_\-]{6,}"  # sk-..., key_..., token-...
    r"|AIza[0-9A-Za-z_\-]{20,}"  # Google API keys
    r"|(?i:bearer)\s+[A-Za-z0-9._\-]{8,}"  # Authorization header values
    r"|[A-Za-z0-9_\-]{32,}",  # any long opaque token
)


def scrub(text: str) -> str:
    """Remove anything key-like from a message that may be shown to a client or logged."""
    return _KEYLIKE.sub("[redacted]", text)


class GatewayError(Exception):
    """Root of every error escalade turns into an OpenAI-shaped error body."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = None
    retryable: ClassVar[bool] = False
    """Worth another attempt on the same deployment."""
    fallback: ClassVar[bool] = False
    """Worth trying the next deployment of the route."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        provider: str | None = None,
        retry_after_s: float | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.provider = provider
        self.retry_after_s = retry_after_s
        if code is not None:
            self.code = code  # type: ignore[misc]

    @property
    def kind(self) -> str:
        """A short stable name for traces and metrics (`error.type`)."""
        return type(self).__name__

    def to_body(self) -> ErrorBody:
        return ErrorBody(error=ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code))

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is not None and self.status in (429, 503):
            return {"retry-after": str(max(1, round(self.retry_after_s)))}
        return {}


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class InvalidJSON(InvalidRequest):
    code = "invalid_json"


class InvalidField(InvalidRequest):
    status = 422
    code = "invalid_type"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class Unauthorized(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(GatewayError):
    status = 403
    type = "permission_error"
    code = "route_not_allowed"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NoEligibleRoute(GatewayError):
    status = 503
    type = "server_error"
    code = "no_eligible_deployment"


class UpstreamError(GatewayError):
    """Something went wrong talking to an upstream deployment."""

    status = 502
    type = "upstream_error"
    fallback = True


class UpstreamRejected(InvalidRequest):
    """The upstream refused the request with a 4xx: the client's request is at fault, not the upstream."""

    code = "upstream_rejected"


class ContextLengthExceeded(UpstreamRejected):
    code = "context_length_exceeded"
    fallback = True  # a larger-context deployment further down the route may take it


class UpstreamRateLimited(UpstreamError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    retryable = True


class UpstreamUnavailable(UpstreamError):
    status = 503
    code = "upstream_unavailable"
    retryable = True


class UpstreamConnectionError(UpstreamError):
    code = "upstream_connection_error"
    retryable = True


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"
    retryable = True


class UpstreamSilent(UpstreamTimeout):
    """The upstream accepted the request but sent no headers, no first token, or no byte for the idle timeout.

    Not retried on the same deployment (it would likely stay silent); the next one is tried.
    """

    retryable = False


class UpstreamProtocolError(UpstreamError):
    code = "upstream_invalid_response"
    retryable = True


class UpstreamAuthError(UpstreamError):
    """The provider refused escalade's own key. The client sees 502, never 401: its key is fine."""

    code = "upstream_auth_error"


class UpstreamRedirect(UpstreamError):
    code = "upstream_redirect"


class UpstreamNotFound(UpstreamError):
    """The upstream does not know the deployment's model or path: the policy is wrong, not the client."""

    code = "upstream_not_found"

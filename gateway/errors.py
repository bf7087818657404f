"""Exception handlers: every error leaves as OpenAI-shaped JSON; never a traceback, never a secret."""

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException

from gateway.instrument import note_error
from providers.errors import GatewayError, PayloadTooLarge
from providers.schema.codec import encode
from providers.schema.errors import ErrorBody, ErrorDetail

log = logging.getLogger("escalade.errors")


class ClientDisconnected(Exception):
    """The client went away before the answer; nothing is sent."""


_HTTP_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


def _response(
    request: Request[Any, Any, Any], status: int, body: ErrorBody, headers: dict[str, str]
) -> Response[bytes]:
    rid = request.scope.get("escalade_request_id")
    if rid:
        headers = {**headers, "x-request-id": rid}
    return Response(content=encode(body), status_code=status, media_type="application/json", headers=headers)


def gateway_error(request: Request[Any, Any, Any], exc: GatewayError) -> Response[bytes]:
    note_error(request.scope, exc.kind)
    if exc.status >= 500:
        log.warning("request failed: %s %s", exc.kind, exc.message)
    return _response(request, exc.status, exc.to_body(), exc.headers())


def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    """Litestar's own errors (unknown path, wrong method, its body limit) in OpenAI's shape."""
    status = exc.status_code
    if status == 413:
        return gateway_error(request, PayloadTooLarge("request body is too large"))
    kind = _HTTP_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    detail = exc.detail if status < 500 else "internal error"
    body = ErrorBody(error=ErrorDetail(message=str(detail), type=kind, param=None, code=None))
    return _response(request, status, body, {})


def unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """A bug. The client gets a generic 500 with the request id; the log gets the traceback."""
    log.error("unhandled error", exc_info=exc)
    note_error(request.scope, "InternalError")
    rid = request.scope.get("escalade_request_id", "")
    body = ErrorBody(
        error=ErrorDetail(message=f"internal error (request id {rid})", type="server_error", param=None, code=None)
    )
    return _response(request, 500, body, {})


def client_gone(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """The client disconnected before its answer: the upstream call was cancelled; nothing to send."""
    log.debug("client disconnected (request %s)", request.scope.get("escalade_request_id", ""))
    note_error(request.scope, "ClientDisconnected")
    return Response(content=b"", status_code=499)


HANDLERS: dict[Any, Any] = {
    GatewayError: gateway_error,
    HTTPException: http_error,
    ClientDisconnected: client_gone,
    Exception: unexpected_error,
}

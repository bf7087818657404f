"""Liveness and readiness, served on both listeners."""

from typing import Any

from litestar import Request, Response, get

from providers.schema.codec import encode


@get("/healthz")
async def healthz() -> Response[bytes]:
    """The process is up and serving HTTP."""
    return Response(content=b'{"status":"ok"}', media_type="application/json")


@get("/readyz")
async def readyz(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Ready to take traffic: a policy is loaded and the gateway is not shutting down."""
    state = request.app.state.gateway
    detail = {"status": "ready" if state.ready else "not_ready", "policy_version": state.runtime.version}
    return Response(content=encode(detail), media_type="application/json", status_code=200 if state.ready else 503)


ROUTES = [healthz, readyz]

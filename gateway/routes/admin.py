"""The admin listener: policy status and reload. Never mounted on the client listener."""

import hmac
import os
from typing import Any

from litestar import Request, Response, get, post

from gateway.explain import explain
from gateway.facts import MAX_COST_HEADER
from gateway.ingress import read_body
from gateway.reload import reload_now
from gateway.state import GatewayState
from providers.errors import Unauthorized
from providers.schema.codec import encode


def _state(request: Request[Any, Any, Any]) -> GatewayState:
    return request.app.state.gateway  # type: ignore[no-any-return]


def _check_admin(request: Request[Any, Any, Any]) -> None:
    env = _state(request).runtime.policy.server.admin_token_env
    if not env:
        return  # admin listener is loopback-only when no token is configured (enforced at startup)
    expected = os.environ.get(env, "")
    given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized("admin token required")


def _status_body(state: GatewayState) -> dict[str, Any]:
    s = state.status
    return {
        "path": s.path,
        "version": s.version,
        "loaded_at": s.loaded_at,
        "reloads": s.reloads,
        "rejected": s.rejected,
        "last_error": s.last_error,
        "last_error_at": s.last_error_at,
        "last_checked_at": s.last_checked_at,
        "routes": list(state.runtime.policy.routes),
    }


@get("/admin/policy")
async def policy_status(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The live policy version, and the last rejected candidate's problems (if any)."""
    _check_admin(request)
    return Response(content=encode(_status_body(_state(request))), media_type="application/json")


@post("/admin/policy/reload", status_code=200)
async def policy_reload(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Re-read the policy file now (the watcher does this by itself when the file changes)."""
    _check_admin(request)
    state = _state(request)
    loaded = await reload_now(state, force=True)
    body = {"loaded": loaded, **_status_body(state)}
    return Response(content=encode(body), media_type="application/json", status_code=200 if loaded else 422)


@post("/admin/route/explain", status_code=200)
async def route_explain(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Dry run: how the live policy and health would route the OpenAI request in the body (no upstream call)."""
    _check_admin(request)
    state = _state(request)
    server = state.runtime.policy.server
    body = await read_body(request.stream(), request.headers.get("content-length"), server.max_request_bytes)
    explanation = explain(
        state.runtime.policy,
        body,
        health=state.health,
        signals=state.signals,
        max_cost_header=request.headers.get(MAX_COST_HEADER),
    )
    return Response(content=encode(explanation), media_type="application/json")


ROUTES = [policy_status, policy_reload, route_explain]

"""Liveness and readiness, served on both listeners."""

import time
from typing import Any

from litestar import Request, Response, get

from gateway.state import GatewayState
from policies.router import plan
from policies.signals import readiness_only
from providers.errors import NoEligibleRoute
from providers.schema.codec import encode


@get("/healthz")
async def healthz() -> Response[bytes]:
    """The process is up and serving HTTP."""
    return Response(content=b'{"status":"ok"}', media_type="application/json")


@get("/readyz")
async def readyz(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Ready to take traffic: a policy is loaded, the gateway is not shutting down, and at least one
    route has a deployment it can use now (a route whose only deployments are on local engines that
    are still starting, or down, cannot). The body says which engines are up and which routes wait,
    and whether the state store is shared and reachable (a gateway whose Redis is down still serves,
    on its own state: `state.degraded` says so, and readiness stays OK).
    """
    state: GatewayState = request.app.state.gateway
    waiting = _routes_waiting(state)
    routes = state.runtime.policy.routes
    ready = state.ready and (not routes or len(waiting) < len(routes))
    detail: dict[str, Any] = {"status": "ready" if ready else "not_ready", "policy_version": state.runtime.version}
    if not state.ready:
        detail["reason"] = "shutting down"
    if len(state.engines):
        detail["engines"] = _engines(state)
    if waiting:
        detail["routes_waiting"] = waiting
    if state.keeper is not None:
        detail["state"] = state.keeper.status()  # a degraded shared store is reported, never "not ready"
    return Response(content=encode(detail), media_type="application/json", status_code=200 if ready else 503)


def _routes_waiting(state: GatewayState) -> dict[str, str]:
    """Routes that cannot serve now because of engine readiness (queue depth does not count here)."""
    if not state.signals:
        return {}
    signals = readiness_only(state.signals)
    waiting = {}
    for name in state.runtime.policy.routes:
        try:
            plan(state.runtime.policy, name, signals)
        except NoEligibleRoute as exc:
            waiting[name] = exc.message
    return waiting


def _engines(state: GatewayState) -> dict[str, Any]:
    now = time.time()
    out = {}
    for name, status in state.engines.statuses().items():
        load = status.load
        out[name] = {
            "state": status.phase.value,
            "ready": status.ready,
            "for_s": round(now - status.since, 1),
            "managed": status.owned,
            "restarts": status.restarts,
            "waiting": load.waiting if load else None,
            "running": load.running if load else None,
            "kv_cache_usage": load.kv_cache_usage if load else None,
        }
    return out


ROUTES = [healthz, readyz]

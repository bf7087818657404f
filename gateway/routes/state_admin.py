"""GET /admin/state on the admin listener: the state store and what it knows of each deployment."""

import time
from dataclasses import asdict
from typing import Any

from litestar import Request, Response, get

from gateway.routes.admin import _check_admin, _state
from providers.schema.codec import encode


@get("/admin/state")
async def state_status(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Backend (memory or redis, connected or degraded), and each deployment's circuit, cooldown and
    recent latency as routing sees them now."""
    _check_admin(request)
    state = _state(request)
    now = time.time()
    deployments = {}
    for name, health in state.health.items():
        entry = asdict(health)
        entry["cooldown_s"] = round(max(0.0, health.cooldown_until - now), 3)
        deployments[name] = entry
    body = {"store": state.keeper.status() if state.keeper is not None else None, "deployments": deployments}
    return Response(content=encode(body), media_type="application/json")


ROUTES = [state_status]

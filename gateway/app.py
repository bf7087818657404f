"""Litestar app factories: the client listener (OpenAI API) and the admin listener."""

from litestar import Litestar
from litestar.datastructures import State

from gateway.errors import HANDLERS
from gateway.routes import admin, health, openai, state_admin
from gateway.state import GatewayState


def create_app(state: GatewayState) -> Litestar:
    """The OpenAI-compatible API. No OpenAPI docs here: they belong to operators, not clients."""
    return Litestar(
        route_handlers=[*openai.ROUTES, *health.ROUTES],
        state=State({"gateway": state}),
        exception_handlers=HANDLERS,
        openapi_config=None,
        request_max_body_size=None,  # ingress enforces the policy's own limit, with an OpenAI-shaped 413
        logging_config=None,
    )


def create_admin_app(state: GatewayState) -> Litestar:
    return Litestar(
        route_handlers=[*admin.ROUTES, *state_admin.ROUTES, *health.ROUTES],
        state=State({"gateway": state}),
        exception_handlers=HANDLERS,
        openapi_config=None,
        logging_config=None,
    )

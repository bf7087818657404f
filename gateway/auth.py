"""Bearer-token auth: a client key -> the Principal it stands for. Keys are stored only as SHA-256."""

import hashlib
import hmac
from dataclasses import dataclass

from gateway.runtime import Runtime
from providers.errors import Forbidden, ModelNotFound, Unauthorized


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    routes: tuple[str, ...]

    def may_use(self, route: str) -> bool:
        return "*" in self.routes or route in self.routes


ANONYMOUS = Principal(name="anonymous", routes=("*",))


def authenticate(authorization: str | None, runtime: Runtime, *, loopback: bool) -> Principal:
    """Resolve the `Authorization: Bearer <key>` header.

    With no keys in the policy the gateway is open, but only on a loopback listener. Comparison is
    constant-time over every configured key (no early exit reveals which key nearly matched).
    """
    if not runtime.keys:
        if loopback:
            return ANONYMOUS
        raise Unauthorized("no API keys are configured and the listener is not loopback; add keys to the policy")
    token = _bearer(authorization)
    if token is None:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    digest = hashlib.sha256(token.encode()).hexdigest()
    found = None
    for key in runtime.keys:
        if hmac.compare_digest(digest, key.key_sha256) and found is None:
            found = key
    if found is None:
        raise Unauthorized("invalid API key")
    return Principal(name=found.name, routes=tuple(found.routes))


def authorize_route(principal: Principal, route: str, runtime: Runtime) -> None:
    if route not in runtime.policy.routes:
        raise ModelNotFound(f"the model `{route}` does not exist", param="model")
    if not principal.may_use(route):
        raise Forbidden(f"this key may not use the model `{route}`", param="model")


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()

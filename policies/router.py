"""Route planning: (route, request facts) -> the ordered deployments to try. Pure: no I/O, no clock."""

from dataclasses import dataclass, field
from typing import Any

from policies.schema import ModelConf, Policy, RouteConf


@dataclass(frozen=True, slots=True)
class Candidate:
    """One deployment to try, with the body fields the policy sets on it."""

    name: str
    model: ModelConf
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Plan:
    route: str
    strategy: str
    candidates: tuple[Candidate, ...]


def plan(policy: Policy, route_name: str) -> Plan:
    """The deployments a request to `route_name` tries, in order (strategy `priority`)."""
    route = policy.routes[route_name]
    overrides = _route_overrides(route)
    candidates = tuple(Candidate(name, policy.models[name], overrides) for name in _model_names(route))
    return Plan(route=route_name, strategy=route.strategy, candidates=candidates)


def _model_names(route: RouteConf) -> list[str]:
    names = list(route.models) or [m for rung in route.rungs for m in rung.models]
    return list(dict.fromkeys(names))  # keep order, drop repeats


def _route_overrides(route: RouteConf) -> dict[str, Any]:
    return {"reasoning_effort": route.reasoning_effort} if route.reasoning_effort is not None else {}


def routes_for_key(policy: Policy, allowed: tuple[str, ...]) -> list[str]:
    """Route names a key may use, in policy order."""
    if "*" in allowed:
        return list(policy.routes)
    return [name for name in policy.routes if name in allowed]

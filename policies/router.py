"""Route planning: (route, request facts) -> the ordered deployments to try. Pure: no I/O, no clock."""

from dataclasses import dataclass, field
from typing import Any

from policies.health import NO_HEALTH, Health, health_skip_reason
from policies.schema import ModelConf, Policy, RouteConf
from policies.signals import NO_SIGNALS, Signals, retry_after_s, skip_reason
from policies.strategies import Facts, Rand, Unfit, hedge_after_s, order, unfit
from providers.capabilities import ENDPOINTS, HARD
from providers.errors import InvalidRequest, NoEligibleRoute
from providers.registry import adapter_capabilities


@dataclass(frozen=True, slots=True)
class Candidate:
    """One deployment to try, with the body fields the policy sets on it."""

    name: str
    model: ModelConf
    overrides: dict[str, Any] = field(default_factory=dict)
    rung: int = 0
    """Cascade rung this candidate belongs to (0 for routes without rungs)."""


@dataclass(frozen=True, slots=True)
class Plan:
    route: str
    strategy: str
    candidates: tuple[Candidate, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    """(deployment, why) for each deployment ruled out: by live signals or health, or for this request."""
    hedge_after_s: float | None = None
    """Start the second candidate when the first has produced no token after this long (None: no hedge)."""


def plan(
    policy: Policy,
    route_name: str,
    signals: Signals = NO_SIGNALS,
    needs: frozenset[str] = frozenset(),
    health: Health = NO_HEALTH,
    now: float = 0.0,
    facts: Facts | None = None,
    rand: Rand | None = None,
) -> Plan:
    """The deployments a request to `route_name` tries, in the order the route's strategy gives.

    A deployment that lacks a capability the request needs (`needs`: tools, vision, json_schema,
    logprobs, embeddings, completions), is not local on a `data_residency: local` route, or (with
    `facts`, the request's estimated size and the client's cost cap) whose context window is too small
    or whose estimated cost is over the cap, is skipped; when none is left, the request is refused (400)
    naming why. `signals` are the gateway's live view of its local engines: a deployment whose engine
    is not ready, or whose queue is deeper than the model's `max_queue`, is skipped; when that leaves
    nothing, NoEligibleRoute (503) says why, with a Retry-After. `health` (with `now`, wall clock) rules
    out deployments whose circuit is open or that cool down, and feeds lowest_latency and hedging.
    `rand` is the strategies' random source (None: the expected order, without draws).
    """
    route = policy.routes[route_name]
    screened = screen(policy, route, signals, needs, health, now, facts)
    candidates, skipped, unable = screened.candidates, list(screened.skipped), screened.unable
    if unable and not candidates and not skipped:
        raise _refusal(route_name, unable)
    skipped.extend((name, why.reason) for name, why in unable)
    if skipped and not candidates:
        why = "; ".join(f"{name}: {reason}" for name, reason in dict.fromkeys(skipped))
        providers = {policy.models[name].provider for name, _ in skipped}
        raise NoEligibleRoute(
            f"route {route_name} has no deployment that can take a request now ({why})",
            retry_after_s=retry_after_s(signals, providers),
        )
    ordered = order(route, candidates, health=health, facts=facts, rand=rand)
    hedge = hedge_after_s(route.hedge, health.get(ordered[0].name)) if len(ordered) > 1 else None
    if hedge is not None and ordered[1].rung != ordered[0].rung:
        hedge = None  # a cascade's next rung is an escalation, not an alternative to race
    return Plan(
        route=route_name,
        strategy=route.strategy,
        candidates=tuple(ordered),
        skipped=tuple(skipped),
        hedge_after_s=hedge,
    )


@dataclass(frozen=True, slots=True)
class Screened:
    candidates: tuple[Candidate, ...]
    """Eligible, in route order."""
    skipped: tuple[tuple[str, str], ...]
    """Ruled out for now by live signals or health."""
    unable: tuple[tuple[str, Unfit], ...]
    """Ruled out for this request whatever their health."""


def screen(
    policy: Policy,
    route: RouteConf,
    signals: Signals = NO_SIGNALS,
    needs: frozenset[str] = frozenset(),
    health: Health = NO_HEALTH,
    now: float = 0.0,
    facts: Facts | None = None,
) -> Screened:
    """Sort a route's deployments into eligible, skipped for now (signals, health) and unable (this request)."""
    hard_needs = needs & HARD
    candidates: list[Candidate] = []
    skipped: list[tuple[str, str]] = []
    unable: list[tuple[str, Unfit]] = []
    for candidate in _candidates(policy, route):
        lacking = hard_needs - capabilities_of(policy, candidate.model)
        misfit = Unfit(f"cannot serve {', '.join(sorted(lacking))}", "unsupported") if lacking else None
        misfit = misfit or unfit(candidate, route, facts)
        if misfit is not None:
            unable.append((candidate.name, misfit))
            continue
        reason = skip_reason(candidate.model, signals) if signals else None
        if reason is None and health:
            reason = health_skip_reason(candidate.name, health, now)
        if reason is None:
            candidates.append(candidate)
        else:
            skipped.append((candidate.name, reason))
    return Screened(tuple(candidates), tuple(skipped), tuple(unable))


def _refusal(route_name: str, unable: tuple[tuple[str, Unfit], ...]) -> InvalidRequest:
    """The 400 for a request no deployment of the route can serve; its code says why when all agree."""
    why = "; ".join(f"{name}: {misfit.reason}" for name, misfit in unable)
    codes = {misfit.code for _, misfit in unable}
    code = codes.pop() if len(codes) == 1 else "unsupported"
    param = "messages" if code == "context_length_exceeded" else "model"
    return InvalidRequest(f"no deployment of route {route_name} can serve this request ({why})", param=param, code=code)


def capabilities_of(policy: Policy, model: ModelConf) -> frozenset[str]:
    """A deployment's capabilities, never more than its adapter can translate: the features the policy
    declares for it (all of them when it declares none) plus the endpoints its adapter serves."""
    adapter = adapter_capabilities(policy.providers[model.provider])
    return adapter & (frozenset(model.capabilities) | ENDPOINTS) if model.capabilities else adapter


def _candidates(policy: Policy, route: RouteConf) -> list[Candidate]:
    """The route's models in order; with rungs, each rung's reasoning_effort rides on its models."""
    overrides = _route_overrides(route)
    if route.models:
        return [Candidate(name, policy.models[name], overrides) for name in dict.fromkeys(route.models)]
    seen: set[tuple[str, str | None]] = set()
    result: list[Candidate] = []
    for number, rung in enumerate(route.rungs):
        effort = rung.reasoning_effort if rung.reasoning_effort is not None else route.reasoning_effort
        rung_overrides = {**overrides, "reasoning_effort": effort} if effort is not None else overrides
        for name in rung.models:
            if (name, effort) not in seen:  # keep order, drop repeats
                seen.add((name, effort))
                result.append(Candidate(name, policy.models[name], rung_overrides, rung=number))
    return result


def _route_overrides(route: RouteConf) -> dict[str, Any]:
    return {"reasoning_effort": route.reasoning_effort} if route.reasoning_effort is not None else {}


def routes_for_key(policy: Policy, allowed: tuple[str, ...]) -> list[str]:
    """Route names a key may use, in policy order."""
    if "*" in allowed:
        return list(policy.routes)
    return [name for name in policy.routes if name in allowed]

"""Explain a routing decision without calling any upstream: the route and strategy a sample request gets,
the deployments it would try in order with their estimated cost and latency, and why each other one is
out. `POST /admin/route/explain` and `escalade check POLICY --explain REQUEST.json` both show `explain()`.
"""

import time
from collections.abc import Callable
from typing import Any

import msgspec

from gateway.facts import request_facts
from gateway.ingress import check_caps, decode_inbound
from policies.cost import Size, estimate_cost
from policies.health import NO_HEALTH, Health, ModelHealth
from policies.router import Candidate, plan, screen
from policies.schema import Policy
from policies.signals import NO_SIGNALS, Signals
from policies.strategies import cost_cap, latency_s
from providers.capabilities import required_by_chat
from providers.errors import GatewayError, InvalidJSON, ModelNotFound
from providers.schema.codec import decode_chat_request, decode_completion_request, decode_embedding_request

_OPERATIONS: dict[str, tuple[str, Callable[[bytes], Any], Callable[[Any], frozenset[str]]]] = {
    "messages": ("chat", decode_chat_request, required_by_chat),
    "prompt": ("text_completion", decode_completion_request, lambda _: frozenset({"completions"})),
    "input": ("embeddings", decode_embedding_request, lambda _: frozenset({"embeddings"})),
}
"""The field that tells which endpoint a sample body is for -> (operation, decoder, what it needs)."""


def explain(
    policy: Policy,
    body: bytes,
    *,
    health: Health = NO_HEALTH,
    signals: Signals = NO_SIGNALS,
    now: float | None = None,
    max_cost_header: str | None = None,
) -> dict[str, Any]:
    """The routing decision for `body` (an OpenAI chat, completion or embedding request) as JSON-ready data.

    A sample the gateway would refuse before routing (not JSON, invalid fields, unknown route) raises its
    GatewayError; a request that routing refuses (nothing eligible, cost cap, context) is explained, with
    the error the client would get under `error`. Random choices are shown as their expected order.
    """
    operation, decode, needs_of = _operation(body)
    typed = decode_inbound(body, decode).typed
    check_caps(typed, policy.server)
    route_name = typed.model
    route = policy.routes.get(route_name)
    if route is None:
        raise ModelNotFound(f"the model `{route_name}` does not exist", param="model")
    facts = request_facts(len(body), typed, max_cost_header)
    needs = needs_of(typed)
    now = time.time() if now is None else now
    error: dict[str, Any] | None = None
    try:
        decided = plan(policy, route_name, signals, needs, health, now, facts)
        candidates, skipped, hedge = decided.candidates, decided.skipped, decided.hedge_after_s
    except GatewayError as exc:
        error = {"status": exc.status, "type": exc.type, "code": exc.code, "message": exc.message}
        screened = screen(policy, route, signals, needs, health, now, facts)
        candidates, hedge = (), None
        skipped = (*screened.skipped, *((name, why.reason) for name, why in screened.unable))
    strategies = {route.strategy, *(rung.strategy for rung in route.rungs)}
    weight_of = {c.name: route.weights.get(c.name, 1.0) for c in candidates} if "weighted" in strategies else {}
    per_rung: dict[int, float] = {}
    for c in candidates:
        per_rung[c.rung] = per_rung.get(c.rung, 0.0) + max(0.0, weight_of.get(c.name, 0.0))
    listed = [_candidate(c, health, facts.size, facts.stream) | _share(c, weight_of, per_rung) for c in candidates]
    return {
        "route": route_name,
        "strategy": route.strategy,
        "request": {
            "operation": operation,
            "stream": facts.stream,
            "needs": sorted(needs),
            "estimated_prompt_tokens": facts.size.prompt_tokens,
            "estimated_output_tokens": facts.size.output_tokens,
            "max_cost_usd": cost_cap(route, facts),
        },
        "candidates": listed,
        "skipped": [{"deployment": name, "reason": reason} for name, reason in skipped],
        "hedge_after_s": hedge,
        "context_fallback": route.context_fallback,
        "notes": _notes(strategies, route.explore),
        "error": error,
    }


def _operation(body: bytes) -> tuple[str, Callable[[bytes], Any], Callable[[Any], frozenset[str]]]:
    try:
        raw = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise InvalidJSON(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidJSON("the request body must be a JSON object")
    for field, found in _OPERATIONS.items():
        if field in raw:
            return found
    return _OPERATIONS["messages"]  # decoding then names the missing field


def _candidate(c: Candidate, health: Health, size: Size, stream: bool) -> dict[str, Any]:
    h = health.get(c.name)
    entry: dict[str, Any] = {
        "deployment": c.name,
        "provider": c.model.provider,
        "model": c.model.model,
        "rung": c.rung,
        "estimated_cost_usd": round(estimate_cost(c.model.price, size), 8),
        "estimated_latency_s": latency_s(h, stream),
        "latency": _figures(h),
        "context_window": c.model.context_window,
    }
    if c.overrides:
        entry["overrides"] = c.overrides
    return entry


def _share(c: Candidate, weight_of: dict[str, float], per_rung: dict[int, float]) -> dict[str, Any]:
    """weighted: the candidate's weight and the share of its rung's (or route's) traffic it goes first for."""
    if not weight_of:
        return {}
    weight, total = weight_of[c.name], per_rung[c.rung]
    return {"weight": weight, "share": round(weight / total, 4) if weight > 0 and total > 0 else 0.0}


def _figures(h: ModelHealth | None) -> dict[str, Any] | None:
    if h is None:
        return None
    return {
        "samples": h.samples,
        "ttft_p50_s": h.ttft_p50_s,
        "ttft_p95_s": h.ttft_p95_s,
        "total_p50_s": h.total_p50_s,
        "error_rate": h.error_rate,
        "circuit": h.circuit,
    }


def _notes(used: set[str], explore: float) -> list[str]:
    notes = []
    if "weighted" in used:
        notes.append("weighted: live requests draw their order at random by weight (share); shown by weight")
    if "lowest_latency" in used:
        notes.append(
            f"lowest_latency: {explore:.0%} of live requests try another deployment first (explore); "
            "deployments without recent figures come after measured ones"
        )
    if "lowest_cost" in used:
        notes.append("lowest_cost: estimated from the body's size (about 4 bytes a token) and the output cap")
    return notes

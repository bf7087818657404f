"""Routing strategies: the order a route's eligible deployments are tried in, and what rules one out for
THIS request. Pure: the request's facts, live health and a random source are inputs; no clock, no I/O.

- priority: the route's order.
- weighted: a random order drawn by `route.weights` (a missing weight is 1); a deployment weighted 0 is a
  standby, tried only after all the others.
- lowest_cost: the cheapest estimate for this request first (policies.cost); route order on ties.
- lowest_latency: the lowest recent latency first (TTFT p50 for a stream, total p50 for a unary call,
  stretched by the error rate); unmeasured deployments after measured ones, in route order. With
  probability `route.explore` another deployment (an unmeasured one if any) goes first, so a model
  that recovered, or was never measured, gets traffic and fresh figures again.

A cascade route orders each rung's models by that rung's own strategy; rungs keep their order.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import TYPE_CHECKING

from policies.cost import Size, estimate_cost, request_size
from policies.health import Health, ModelHealth
from policies.schema import HedgeConf, RouteConf

if TYPE_CHECKING:
    from policies.router import Candidate

Rand = Callable[[], float]
"""Uniform floats in [0, 1) (e.g. `random.random`). None where a strategy needs one: the expected order,
without draws (weighted: by weight; lowest_latency: no exploration)."""

MIN_SAMPLES = 3
"""Fewer recent samples than this: the deployment's latency counts as unknown."""
MIN_SUCCESS = 0.1
"""Floor of the success rate a latency is divided by, so a failing deployment stays finite (and last)."""


@dataclass(frozen=True, slots=True)
class Facts:
    """What routing knows about a request before any call."""

    size: Size
    stream: bool = False
    choices: int = 1
    """`n`: the output estimate covers every choice, a context window holds one."""
    max_cost_usd: float | None = None
    """The client's own cap (header `x-escalade-max-cost-usd`); it can only narrow the route's."""

    @property
    def context_tokens(self) -> int:
        """Tokens one choice needs in the context window: the prompt plus its output cap."""
        return self.size.prompt_tokens + self.size.output_tokens // max(1, self.choices)


NOMINAL = Facts(size=request_size(4000, None))
"""A typical request (about 1,000 prompt tokens, the default output cap): what `escalade check` orders by."""


@dataclass(frozen=True, slots=True)
class Unfit:
    """Why a deployment cannot take this request at all, and the error code when none can."""

    reason: str
    code: str


def cost_cap(route: RouteConf, facts: Facts | None) -> float | None:
    """The tighter of the route's `max_cost_usd` and the client's cap (None: no cap)."""
    caps = [c for c in (route.max_cost_usd, facts.max_cost_usd if facts else None) if c is not None]
    return min(caps) if caps else None


def unfit(candidate: "Candidate", route: RouteConf, facts: Facts | None) -> Unfit | None:
    """Why `candidate` cannot serve this request whatever its health: data residency, context window, cost cap.

    Without facts (no request, e.g. `escalade check`) only data residency is checked.
    """
    model = candidate.model
    if route.data_residency == "local" and not model.local:
        return Unfit("not local: true, and the route's data_residency is local", "data_residency")
    if facts is None:
        return None
    if model.context_window is not None and facts.context_tokens > model.context_window:
        return Unfit(
            f"context window {model.context_window} < about {facts.size.prompt_tokens} prompt + "
            f"{facts.context_tokens - facts.size.prompt_tokens} output tokens",
            "context_length_exceeded",
        )
    cap = cost_cap(route, facts)
    if cap is not None:
        cost = estimate_cost(model.price, facts.size)
        if cost > cap:
            return Unfit(f"estimated cost ${cost:.6f} is over the cap ${cap:g}", "cost_cap_exceeded")
    return None


def latency_s(health: ModelHealth | None, stream: bool) -> float | None:
    """The latency a request would likely see on a deployment, or None when unknown: the recent TTFT p50
    for a stream (total p50 if no TTFT), the total p50 for a unary call (TTFT p50 if no total), divided by
    the recent success rate (a deployment failing half its calls costs about twice its latency)."""
    if health is None or health.samples < MIN_SAMPLES:
        return None
    first, second = (health.ttft_p50_s, health.total_p50_s) if stream else (health.total_p50_s, health.ttft_p50_s)
    base = first if first is not None else second
    if base is None:
        return None
    return base / max(MIN_SUCCESS, 1.0 - (health.error_rate or 0.0))


# ---------------------------------------------------------------- ordering


Order = Callable[[RouteConf, list["Candidate"], Health, Facts, Rand | None], list["Candidate"]]


def order(
    route: RouteConf,
    candidates: Sequence["Candidate"],
    *,
    health: Health,
    facts: Facts | None = None,
    rand: Rand | None = None,
) -> list["Candidate"]:
    """`candidates` (eligible, in route order) in the order to try them, by the route's strategy; a
    cascade's rungs stay in order, each ordered by its own strategy."""
    facts = facts or NOMINAL
    if not route.rungs:
        return STRATEGIES[route.strategy](route, list(candidates), health, facts, rand)
    ordered: list[Candidate] = []
    for rung, group in groupby(candidates, key=lambda c: c.rung):
        ordered.extend(STRATEGIES[route.rungs[rung].strategy](route, list(group), health, facts, rand))
    return ordered


def by_priority(route: RouteConf, cands: list["Candidate"], health: Health, facts: Facts, rand: Rand | None) -> list:
    return cands


def by_weight(route: RouteConf, cands: list["Candidate"], health: Health, facts: Facts, rand: Rand | None) -> list:
    """Draw without replacement, each pick in proportion to its weight; weight 0 goes last (standby)."""
    live = [(c, route.weights.get(c.name, 1.0)) for c in cands]
    standby = [c for c, w in live if w <= 0]
    live = [(c, w) for c, w in live if w > 0]
    if rand is None:
        return [c for c, _ in sorted(live, key=lambda cw: -cw[1])] + standby
    drawn: list[Candidate] = []
    while live:
        point = rand() * sum(w for _, w in live)
        pick = len(live) - 1  # float rounding can leave `point` at the very top
        for i, (_, w) in enumerate(live):
            if point < w:
                pick = i
                break
            point -= w
        drawn.append(live.pop(pick)[0])
    return drawn + standby


def by_cost(route: RouteConf, cands: list["Candidate"], health: Health, facts: Facts, rand: Rand | None) -> list:
    return sorted(cands, key=lambda c: estimate_cost(c.model.price, facts.size))  # stable: route order on ties


def by_latency(route: RouteConf, cands: list["Candidate"], health: Health, facts: Facts, rand: Rand | None) -> list:
    known = [(c, latency_s(health.get(c.name), facts.stream)) for c in cands]
    measured = sorted(((c, s) for c, s in known if s is not None), key=lambda cs: cs[1])
    ranked = [c for c, _ in measured] + [c for c, s in known if s is None]
    if rand is None or len(ranked) < 2 or route.explore <= 0 or rand() >= route.explore:
        return ranked
    unmeasured = [c for c in ranked[1:] if latency_s(health.get(c.name), facts.stream) is None]
    pool = unmeasured or ranked[1:]
    pick = pool[min(int(rand() * len(pool)), len(pool) - 1)]
    return [pick] + [c for c in ranked if c is not pick]


STRATEGIES: dict[str, Order] = {
    "priority": by_priority,
    "weighted": by_weight,
    "lowest_cost": by_cost,
    "lowest_latency": by_latency,
}
"""Strategy name -> how it orders one group of candidates (a route, or one cascade rung)."""


# ---------------------------------------------------------------- after the plan: hedging, context fallback


def hedge_after_s(conf: HedgeConf | None, first: ModelHealth | None) -> float | None:
    """Seconds to wait for the first candidate's first token before starting the next one; None: no hedge.

    `after_s` when set, else the first candidate's recent TTFT p95 (no hedge until it has MIN_SAMPLES);
    never below `min_after_s`.
    """
    if conf is None:
        return None
    if conf.after_s is not None:
        return max(conf.after_s, conf.min_after_s)
    if first is None or first.samples < MIN_SAMPLES or first.ttft_p95_s is None:
        return None
    return max(first.ttft_p95_s, conf.min_after_s)


def larger_context(candidate: "Candidate", failed: "Candidate") -> bool:
    """After `failed` answered "context length exceeded": is `candidate` worth trying? Only if it declares
    a context window larger than the failed one's (any declared window when the failed one declared none)."""
    window = candidate.model.context_window
    if window is None:
        return False
    return failed.model.context_window is None or window > failed.model.context_window

"""Routing strategies and request filters through policies.router.plan (pure: health, facts and the random
source are inputs)."""

import random

import msgspec
import pytest

from policies.cost import Size, request_size
from policies.health import ModelHealth
from policies.loader import PolicyError, parse_policy
from policies.router import Candidate, plan
from policies.schema import HedgeConf, Policy, RouteConf, RungConf
from policies.strategies import MIN_SAMPLES, Facts, hedge_after_s, larger_context, latency_s, order
from providers.errors import InvalidRequest, NoEligibleRoute

POLICY = parse_policy(
    """
providers:
  oai: {type: openai, base_url: "http://127.0.0.1:1/v1"}
  box: {type: vllm, base_url: "http://127.0.0.1:2/v1"}
models:
  big:   {provider: oai, model: big,   price: {input_per_mtok: 3.0, output_per_mtok: 15.0}, context_window: 200000}
  mid:   {provider: oai, model: mid,   price: {input_per_mtok: 0.5, output_per_mtok: 2.0}, context_window: 32000}
  # cheap to read, dear to write; and the reverse
  reader: {provider: oai, model: reader, price: {input_per_mtok: 0.1, output_per_mtok: 20.0}}
  writer: {provider: oai, model: writer, price: {input_per_mtok: 5.0, output_per_mtok: 0.5}}
  local: {provider: box, model: local, context_window: 8000, local: true}
  twin:  {provider: box, model: twin, local: true}
routes:
  prio:    {models: [big, mid, local]}
  cheap:   {strategy: lowest_cost, models: [big, mid, local]}
  capped:  {strategy: lowest_cost, models: [big, mid], max_cost_usd: 0.01}
  rw:      {strategy: lowest_cost, models: [reader, writer]}
  fast:    {strategy: lowest_latency, models: [big, mid, local], explore: 0.1}
  still:   {strategy: lowest_latency, models: [big, mid, local], explore: 0}
  split:   {strategy: weighted, models: [big, mid, local], weights: {big: 3, mid: 1, local: 0}}
  even:    {strategy: weighted, models: [big, mid]}
  private: {models: [local, twin], data_residency: local}
  hedged:  {models: [big, mid], hedge: {min_after_s: 0.2}}
"""
)


def names(p) -> list[str]:
    return [c.name for c in p.candidates]


def facts(prompt: int = 1000, output: int = 100, **kw) -> Facts:
    return Facts(size=Size(prompt_tokens=prompt, output_tokens=output), **kw)


def measured(p50: float, *, samples: int = 20, total: float | None = None, err: float = 0.0, p95: float | None = None):
    return ModelHealth(samples=samples, ttft_p50_s=p50, ttft_p95_s=p95, total_p50_s=total, error_rate=err)


class Seq:
    """A scripted random source: returns the given floats in order."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)

    def __call__(self) -> float:
        return self.values.pop(0)


# ---------------------------------------------------------------- priority and lowest_cost


def test_priority_keeps_the_route_order():
    assert names(plan(POLICY, "prio", facts=facts(), rand=random.random)) == ["big", "mid", "local"]


def test_lowest_cost_orders_by_this_requests_estimate_with_route_order_on_ties():
    # local is free; big and mid priced: mid cheaper
    assert names(plan(POLICY, "cheap", facts=facts())) == ["local", "mid", "big"]
    tie = msgspec.structs.replace(POLICY.models["mid"], price=POLICY.models["big"].price)
    p = msgspec.structs.replace(POLICY, models={**POLICY.models, "mid": tie})
    assert names(plan(p, "cheap", facts=facts())) == ["local", "big", "mid"]


def test_lowest_cost_depends_on_the_request_shape():
    # a long prompt with a short answer favours the cheap reader; the reverse favours the writer
    assert names(plan(POLICY, "rw", facts=facts(prompt=50_000, output=10))) == ["reader", "writer"]
    assert names(plan(POLICY, "rw", facts=facts(prompt=10, output=5_000))) == ["writer", "reader"]


def test_cost_cap_skips_what_is_over_it_and_says_why():
    # big: 1000*3 + 1000*15 = 0.018 > 0.01; mid: 0.0025
    p = plan(POLICY, "capped", facts=facts(1000, 1000))
    assert names(p) == ["mid"]
    [(name, why)] = p.skipped
    assert name == "big" and "estimated cost $0.018000 is over the cap $0.01" in why


def test_cost_cap_header_narrows_but_never_widens():
    assert names(plan(POLICY, "capped", facts=facts(1000, 1000, max_cost_usd=1.0))) == ["mid"]
    with pytest.raises(InvalidRequest) as info:
        plan(POLICY, "capped", facts=facts(1000, 1000, max_cost_usd=0.001))
    assert info.value.status == 400 and info.value.code == "cost_cap_exceeded"
    assert (
        "big: estimated cost $0.018000" in info.value.message and "mid: estimated cost $0.002500" in info.value.message
    )
    assert "cap $0.001" in info.value.message


def test_header_cap_applies_to_routes_without_one():
    p = plan(POLICY, "cheap", facts=facts(1000, 1000, max_cost_usd=0.005))
    assert names(p) == ["local", "mid"]


def test_without_facts_order_uses_a_nominal_request_and_no_cap():
    assert names(plan(POLICY, "capped")) == ["mid", "big"]


# ---------------------------------------------------------------- lowest_latency


def test_lowest_latency_orders_by_ttft_for_streams_and_total_for_unary():
    health = {
        "big": measured(0.2, total=3.0),
        "mid": measured(0.5, total=1.0),
        "local": measured(0.9, total=2.0),
    }
    assert names(plan(POLICY, "still", health=health, facts=facts(stream=True))) == ["big", "mid", "local"]
    assert names(plan(POLICY, "still", health=health, facts=facts(stream=False))) == ["mid", "local", "big"]


def test_unknown_latency_comes_after_measured_in_route_order():
    health = {"local": measured(0.9), "mid": measured(0.3, samples=MIN_SAMPLES - 1)}
    assert names(plan(POLICY, "still", health=health, facts=facts())) == ["local", "big", "mid"]
    assert names(plan(POLICY, "still", facts=facts())) == ["big", "mid", "local"]  # nothing known: route order


def test_latency_ties_keep_route_order():
    health = {name: measured(0.5) for name in ("big", "mid", "local")}
    assert names(plan(POLICY, "still", health=health, facts=facts())) == ["big", "mid", "local"]


def test_error_rate_stretches_latency():
    health = {"big": measured(0.3, err=0.5), "mid": measured(0.5)}  # 0.3 / 0.5 = 0.6 > 0.5
    assert names(plan(POLICY, "still", health=health, facts=facts())) == ["mid", "big", "local"]
    assert latency_s(measured(1.0, err=1.0), stream=True) == pytest.approx(10.0)  # finite, and last


def test_exploration_rate_matches_route_explore_and_prefers_unmeasured():
    health = {"big": measured(0.2), "mid": measured(0.4)}  # local unmeasured
    rng = random.Random(7)
    firsts = [
        plan(POLICY, "fast", health=health, facts=facts(), rand=rng.random).candidates[0].name for _ in range(20_000)
    ]
    assert firsts.count("big") / len(firsts) == pytest.approx(0.9, abs=0.01)
    assert firsts.count("local") / len(firsts) == pytest.approx(0.1, abs=0.01)  # exploration goes to the unknown
    assert "mid" not in firsts


def test_exploration_spreads_over_the_others_when_all_are_measured():
    health = {"big": measured(0.2), "mid": measured(0.4), "local": measured(0.6)}
    rng = random.Random(11)
    firsts = [
        plan(POLICY, "fast", health=health, facts=facts(), rand=rng.random).candidates[0].name for _ in range(20_000)
    ]
    assert firsts.count("mid") / len(firsts) == pytest.approx(0.05, abs=0.01)
    assert firsts.count("local") / len(firsts) == pytest.approx(0.05, abs=0.01)


def test_exploring_moves_one_candidate_first_and_keeps_the_rest_ranked():
    health = {"big": measured(0.2), "mid": measured(0.4), "local": measured(0.6)}
    # first draw < explore (0.1): explore; second draw picks the last of [mid, local]
    assert names(plan(POLICY, "fast", health=health, facts=facts(), rand=Seq(0.05, 0.99))) == ["local", "big", "mid"]
    assert names(plan(POLICY, "fast", health=health, facts=facts(), rand=Seq(0.5))) == ["big", "mid", "local"]


def test_no_exploration_without_a_random_source_or_with_explore_zero():
    health = {"big": measured(0.2)}
    assert names(plan(POLICY, "fast", health=health, facts=facts())) == ["big", "mid", "local"]
    assert names(plan(POLICY, "still", health=health, facts=facts(), rand=Seq(0.0, 0.0))) == ["big", "mid", "local"]


# ---------------------------------------------------------------- weighted


def test_weighted_shares_follow_the_weights_and_weight_zero_is_a_standby():
    rng = random.Random(3)
    orders = [tuple(names(plan(POLICY, "split", facts=facts(), rand=rng.random))) for _ in range(20_000)]
    firsts = [o[0] for o in orders]
    assert firsts.count("big") / len(firsts) == pytest.approx(0.75, abs=0.01)
    assert firsts.count("mid") / len(firsts) == pytest.approx(0.25, abs=0.01)
    assert all(o[-1] == "local" for o in orders)  # weight 0: never first, still a last-resort fallback


def test_weighted_without_weights_is_uniform_and_without_rand_is_by_weight():
    rng = random.Random(5)
    firsts = [plan(POLICY, "even", facts=facts(), rand=rng.random).candidates[0].name for _ in range(10_000)]
    assert firsts.count("big") / len(firsts) == pytest.approx(0.5, abs=0.02)
    assert names(plan(POLICY, "split", facts=facts())) == ["big", "mid", "local"]


def test_weighted_draw_is_exact_on_boundaries():
    # total 4: [0, 3) -> big, [3, 4) -> mid
    assert names(plan(POLICY, "split", rand=Seq(0.74, 0.0)))[0] == "big"
    assert names(plan(POLICY, "split", rand=Seq(0.75, 0.0)))[0] == "mid"
    assert names(plan(POLICY, "split", rand=Seq(0.9999999999, 0.0)))[0] == "mid"


def test_all_weights_zero_keeps_route_order():
    route = RouteConf(strategy="weighted", models=["big", "mid"], weights={"big": 0, "mid": 0})
    cands = [Candidate(n, POLICY.models[n]) for n in ("big", "mid")]
    assert [c.name for c in order(route, cands, health={}, rand=random.random)] == ["big", "mid"]


# ---------------------------------------------------------------- cascade rungs


def test_cascade_rungs_keep_their_order_and_each_is_ordered_by_its_strategy():
    route = RouteConf(
        strategy="cascade",
        rungs=[
            RungConf(models=["local"]),
            RungConf(models=["big", "mid"], strategy="lowest_cost"),
            RungConf(models=["big", "mid"], strategy="lowest_latency"),
        ],
        explore=0,
    )
    cands = [
        Candidate("local", POLICY.models["local"], rung=0),
        Candidate("big", POLICY.models["big"], rung=1),
        Candidate("mid", POLICY.models["mid"], rung=1),
        Candidate("big", POLICY.models["big"], rung=2),
        Candidate("mid", POLICY.models["mid"], rung=2),
    ]
    health = {"big": measured(0.1), "mid": measured(0.9)}
    got = [(c.rung, c.name) for c in order(route, cands, health=health, facts=facts(), rand=random.random)]
    assert got == [(0, "local"), (1, "mid"), (1, "big"), (2, "big"), (2, "mid")]


# ---------------------------------------------------------------- filters: context window, data residency


def test_context_window_filters_on_prompt_plus_output_cap():
    p = plan(POLICY, "cheap", facts=Facts(size=request_size(4 * 30_000, 1000)))  # ~31k tokens
    assert names(p) == ["mid", "big"]
    assert p.skipped == (("local", "context window 8000 < about 30000 prompt + 1000 output tokens"),)
    # n choices: the window holds one choice's output, the cost covers all of them
    p = plan(POLICY, "cheap", facts=Facts(size=request_size(4 * 7_000, 500, n=4), choices=4))
    assert "local" in names(p)


def test_context_too_long_for_every_deployment_is_a_400_context_length_exceeded():
    with pytest.raises(InvalidRequest) as info:
        plan(POLICY, "cheap", facts=Facts(size=request_size(4 * 250_000, 100)))
    assert info.value.code == "context_length_exceeded" and info.value.param == "messages"


def test_data_residency_is_enforced_at_plan_time_too():
    # the loader refuses such a policy; a policy built another way must still never leave the box
    raw = msgspec.to_builtins(POLICY)
    raw["routes"]["private"]["models"] = ["big", "local"]
    unchecked = msgspec.convert(raw, Policy)
    p = plan(unchecked, "private", facts=facts())
    assert names(p) == ["local"] and "data_residency is local" in dict(p.skipped)["big"]
    raw["routes"]["private"]["models"] = ["big"]
    with pytest.raises(InvalidRequest) as info:
        plan(msgspec.convert(raw, Policy), "private", facts=facts())
    assert info.value.code == "data_residency"


def test_request_filters_and_live_health_together_give_503_not_400():
    health = {"mid": ModelHealth(circuit="open", why="5 failures")}
    with pytest.raises(NoEligibleRoute) as info:
        plan(POLICY, "capped", health=health, facts=facts(1000, 1000))
    assert "mid: circuit open (5 failures)" in info.value.message and "big: estimated cost" in info.value.message


# ---------------------------------------------------------------- hedging delay, context fallback


def test_hedge_delay_explicit_or_from_recent_ttft_p95():
    assert hedge_after_s(None, measured(0.5, p95=2.0)) is None
    assert hedge_after_s(HedgeConf(after_s=0.3), None) == 0.3
    assert hedge_after_s(HedgeConf(after_s=0.01, min_after_s=0.05), None) == 0.05
    assert hedge_after_s(HedgeConf(), None) is None  # nothing measured yet: no hedge
    assert hedge_after_s(HedgeConf(), measured(0.5, p95=2.0, samples=MIN_SAMPLES - 1)) is None
    assert hedge_after_s(HedgeConf(), measured(0.5, p95=2.0)) == 2.0
    assert hedge_after_s(HedgeConf(min_after_s=3.0), measured(0.5, p95=2.0)) == 3.0


def test_plan_carries_the_hedge_delay_of_the_first_candidate():
    health = {"big": measured(0.1, p95=0.4)}
    assert plan(POLICY, "hedged", health=health).hedge_after_s == 0.4
    assert plan(POLICY, "hedged").hedge_after_s is None
    assert plan(POLICY, "prio", health=health).hedge_after_s is None


def test_context_fallback_only_to_a_larger_declared_window():
    big, mid, local, twin = (Candidate(n, POLICY.models[n]) for n in ("big", "mid", "local", "twin"))
    assert larger_context(big, mid) and not larger_context(mid, big) and not larger_context(mid, mid)
    assert not larger_context(twin, local)  # no declared window: unknown, not tried
    assert larger_context(local, twin)  # the failed one declared none: any declared window may help


# ---------------------------------------------------------------- the loader


def _problems(routes: str) -> str:
    text = f"""
providers: {{oai: {{type: openai, base_url: "http://127.0.0.1:1/v1"}}}}
models: {{a: {{provider: oai, model: a}}, b: {{provider: oai, model: b}}}}
routes:
{routes}
"""
    with pytest.raises(PolicyError) as info:
        parse_policy(text)
    return str(info.value)


def test_loader_accepts_the_new_strategies():
    for strategy in ("weighted", "lowest_cost", "lowest_latency"):
        parse_policy(
            f"""
providers: {{oai: {{type: openai, base_url: "http://127.0.0.1:1/v1"}}}}
models: {{a: {{provider: oai, model: a}}}}
routes: {{r: {{strategy: {strategy}, models: [a]}}}}
"""
        )


def test_loader_checks_weights_rungs_caps_and_hedges():
    assert "`c` is not one of this route's models" in _problems(
        "  r: {strategy: weighted, models: [a, b], weights: {c: 1}}"
    )
    assert "weights apply only to strategy weighted" in _problems("  r: {models: [a, b], weights: {a: 1}}")
    assert "Expected `float` >= 0" in _problems("  r: {strategy: weighted, models: [a, b], weights: {a: -1}}")
    assert "a rung orders its models by one of" in _problems(
        "  r: {strategy: priority, rungs: [{models: [a], strategy: cascade}]}"
    )
    assert "`$.routes.r.max_cost_usd`" in _problems("  r: {models: [a], max_cost_usd: -1}")
    assert "hedging needs a second model" in _problems("  r: {models: [a], hedge: {after_s: 1}}")


def test_loader_names_the_line_of_a_bad_weight():
    problem = _problems("  r: {strategy: weighted, models: [a, b], weights: {c: 1}}")
    assert "`$.routes.r.weights`" in problem and "(line " in problem

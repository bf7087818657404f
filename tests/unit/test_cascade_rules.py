"""The pure side of cascades: what the loader accepts, rung grouping, budget arithmetic, what a gated
rung is asked for and what the client gets back, and the x-escalade-gate header."""

import math

import pytest
import yaml

from policies.cascade import (
    GATE_TOP_LOGPROBS,
    Step,
    can_follow,
    client_logprobs,
    combine,
    cost_limit,
    escalations,
    gate_header,
    gate_overrides,
    left_of,
    rungs_of,
    within,
)
from policies.cost import Size
from policies.gate import Verdict
from policies.loader import PolicyError, parse_policy
from policies.router import plan
from providers.schema.chat import ChatRequest, ChoiceLogprobs, TokenLogprob, TopLogprob

BASE = {
    "providers": {"local": {"type": "vllm", "base_url": "http://127.0.0.1:8000/v1"},
                  "claude": {"type": "anthropic", "api_key_env": "K"},
                  "remote": {"type": "openai", "api_key_env": "K"}},
    "models": {
        "small": {"provider": "local", "model": "s", "capabilities": ["logprobs", "tools"]},
        "plain": {"provider": "local", "model": "p", "capabilities": ["tools"]},
        "sonnet": {"provider": "claude", "model": "c"},
        "big": {"provider": "remote", "model": "b", "price": {"input_per_mtok": 2.0, "output_per_mtok": 10.0}},
        "bigger": {"provider": "remote", "model": "bb", "price": {"input_per_mtok": 10.0, "output_per_mtok": 50.0}},
    },
}  # fmt: skip


def policy_with(**routes):
    return parse_policy(yaml.safe_dump({**BASE, "routes": routes}))


def problems(**routes) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        policy_with(**routes)
    return caught.value.problems


LADDER = {
    "strategy": "cascade",
    "rungs": [
        {"models": ["small"], "reasoning_effort": "none"},
        {"models": ["small"], "reasoning_effort": "high"},
        {"models": ["big", "bigger"]},
    ],
    "gate": {"checks": ["empty", "truncated"], "min_score": 0.6},
}


# ---------------------------------------------------------------- the loader


def test_a_cascade_route_loads():
    route = policy_with(auto=LADDER).routes["auto"]
    assert route.strategy == "cascade" and len(route.rungs) == 3 and route.gate.min_score == 0.6


@pytest.mark.parametrize(
    ("change", "path", "words"),
    [
        ({"rungs": []}, "$.routes.auto.rungs", "needs rungs"),
        ({"models": ["big"]}, "$.routes.auto.models", "not in `models`"),
        ({"gate": None}, "$.routes.auto.gate", "needs a gate"),
        ({"rungs": [{"models": []}, {"models": ["big"]}]}, "$.routes.auto.rungs[0].models", "at least one model"),
        ({"rungs": [{"models": ["small"], "strategy": "cascade"}, {"models": ["big"]}]},
         "$.routes.auto.rungs[0].strategy", "orders its models by one of"),
        ({"gate": {"shadow": {"rate": 0.1}}}, "$.routes.auto.gate.shadow.log", "log file"),
    ],
)  # fmt: skip
def test_cascade_shape_rules(change, path, words):
    route = {k: v for k, v in {**LADDER, **change}.items() if v is not None}
    found = [p for p in problems(auto=route) if f"`{path}`" in p]
    assert found and words in found[0], problems(auto=route)


def test_rungs_and_a_gate_need_strategy_cascade():
    found = problems(auto={"rungs": [{"models": ["small"]}]}, other={"models": ["big"], "gate": {"checks": ["empty"]}})
    assert any("`$.routes.auto.rungs`" in p and "strategy: cascade" in p for p in found)
    assert any("`$.routes.other.gate`" in p and "only to `strategy: cascade`" in p for p in found)


def test_min_score_needs_logprobs_on_every_gated_rung_but_not_the_last():
    route = {**LADDER, "rungs": [{"models": ["plain"]}, {"models": ["sonnet"]}, {"models": ["sonnet"]}]}
    found = problems(auto=route)
    assert len(found) == 2
    assert "`$.routes.auto.rungs[0].models`" in found[0] and "model `plain` has no logprobs" in found[0]
    assert "`$.routes.auto.rungs[1].models`" in found[1] and "`sonnet`" in found[1]  # anthropic: no logprobs
    # checks only (no min_score): any model may sit on any rung
    policy_with(auto={**route, "gate": {"checks": ["empty"]}})


# ---------------------------------------------------------------- rungs


def test_rungs_group_the_plan_in_order_and_drop_emptied_rungs():
    policy = policy_with(auto=LADDER)
    rungs = rungs_of(plan(policy, "auto"))
    expected = [(0, ["small"]), (1, ["small"]), (2, ["big", "bigger"])]
    assert [(r.number, [c.name for c in r.candidates]) for r in rungs] == expected
    assert [r.candidates[0].overrides.get("reasoning_effort") for r in rungs] == ["none", "high", None]
    needs_vision = rungs_of(plan(policy, "auto", needs=frozenset({"vision"})))  # the local model lacks vision
    assert [(r.number, [c.name for c in r.candidates]) for r in needs_vision] == [(2, ["big", "bigger"])]


# ---------------------------------------------------------------- budget arithmetic


def test_a_cap_only_narrows():
    assert cost_limit(None, None) is None
    assert cost_limit(0.02, None) == 0.02
    assert cost_limit(0.02, 5.0) == 0.02  # the request cannot widen the route's cap
    assert cost_limit(0.02, 0.001, None) == 0.001
    assert left_of(None, 3.0) is None and left_of(0.01, 0.004) == pytest.approx(0.006) and left_of(0.01, 1) == 0.0


def test_candidates_and_rungs_within_what_is_left():
    rungs = rungs_of(plan(policy_with(auto=LADDER), "auto"))
    size = Size(prompt_tokens=1000, output_tokens=1000)  # big: $0.012, bigger: $0.06
    remote = rungs[2].candidates
    assert [c.name for c in within(remote, size, None)] == ["big", "bigger"]
    assert [c.name for c in within(remote, size, 0.02)] == ["big"]
    assert within(remote, size, 0.011) == ()
    assert [c.name for c in within(remote, size, 0.012)] == ["big"]  # exactly the estimate fits
    assert can_follow(rungs[1:], size, 0.0)  # a free local rung can always follow
    assert not can_follow(rungs[2:], size, 0.011)
    assert can_follow(rungs[2:], size, None)


# ---------------------------------------------------------------- logprobs: for the gate, shown as the client asked


def req(**fields) -> ChatRequest:
    return ChatRequest(model="auto", messages=[], **fields)


def test_a_gated_rung_asks_for_logprobs_and_the_margin():
    assert gate_overrides(req()) == {"logprobs": True, "top_logprobs": GATE_TOP_LOGPROBS}
    assert gate_overrides(req(logprobs=True, top_logprobs=2))["top_logprobs"] == GATE_TOP_LOGPROBS
    assert gate_overrides(req(logprobs=True, top_logprobs=12))["top_logprobs"] == 12


def logprobs(k: int) -> ChoiceLogprobs:
    tops = [TopLogprob(token=f"t{j}", logprob=-float(j)) for j in range(k)]
    return ChoiceLogprobs(content=[TokenLogprob(token="a", logprob=-0.1, top_logprobs=list(tops)) for _ in range(3)])


def test_the_client_gets_logprobs_only_as_it_asked():
    assert client_logprobs(logprobs(5), req()) is None
    assert client_logprobs(logprobs(5), req(logprobs=False)) is None
    shown = client_logprobs(logprobs(5), req(logprobs=True, top_logprobs=2))
    assert [len(t.top_logprobs) for t in shown.content] == [2, 2, 2]
    assert [len(t.top_logprobs) for t in client_logprobs(logprobs(5), req(logprobs=True)).content] == [0, 0, 0]
    assert client_logprobs(None, req(logprobs=True)) is None


# ---------------------------------------------------------------- verdicts and headers


def test_the_gate_header_names_every_rung():
    steps = [
        Step(0, "fail", "small", 0.41234, ("json_schema", "truncated")),
        Step(1, "error", why="UpstreamTimeout"),
        Step(2, "pass", "small", 0.9),
        Step(3, "skip", why="budget"),
    ]
    assert gate_header(steps) == (
        "rung=0 fail score=0.412 failed=json_schema,truncated; rung=1 error=UpstreamTimeout; "
        "rung=2 pass score=0.900; rung=3 skip=budget"
    )
    assert gate_header([Step(0, "fail", "s", None, ("empty",)), Step(1, "answer", "big")]) == (
        "rung=0 fail score=none failed=empty; rung=1 answer"
    )
    assert escalations(steps) == 2
    assert all(ch.isascii() and ch not in "\r\n" for ch in gate_header(steps))


def test_choices_are_combined_by_their_weakest():
    good = Verdict(passed=True, score=0.9, failed=(), features={"a": 1.0})
    weak = Verdict(passed=False, score=0.3, failed=("empty",), features={"a": 0.2})
    both = combine([good, weak])
    assert (both.passed, both.score, tuple(both.failed), both.features) == (False, 0.3, ("empty",), {"a": 0.2})
    assert combine([good]) is good
    unscored = combine([good, Verdict(passed=True, score=None, failed=(), features={})])
    assert unscored.passed and unscored.score is None
    assert not math.isnan(combine([good, good]).score)

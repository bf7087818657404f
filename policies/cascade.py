"""Cascade arithmetic: a plan's rungs, the cost cap a request runs under, what a gated rung is asked
for, and how the answer's headers describe the ladder. Pure: no I/O, no clock.

The executor (gateway/cascade.py) walks the rungs; every decision it takes that can be stated without
I/O is a function here, with unit tests.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from policies.cost import Size, estimate_cost
from policies.gate import Verdict
from policies.router import Candidate, Plan
from providers.errors import InvalidRequest
from providers.schema.chat import ChatRequest, ChoiceLogprobs

GATE_TOP_LOGPROBS = 5
"""Alternatives per token a gated rung is asked for: enough for the top-1/top-2 margin."""


class CostCapExceeded(InvalidRequest):
    """No rung of a cascade fits what is left of the request's cost cap (the route's max_cost_usd, the
    request's own x-escalade-max-cost-usd), as planning refuses a request no deployment fits. A key's
    spent budget is a 429 instead (gateway/store/admission.py)."""

    code = "cost_cap_exceeded"


@dataclass(frozen=True, slots=True)
class Rung:
    number: int
    """The rung's index in the route's `rungs:` (0 is the first)."""
    candidates: tuple[Candidate, ...]


def rungs_of(plan: Plan) -> list[Rung]:
    """The plan's candidates grouped by rung, in rung order. A rung that lost every deployment in
    planning (capabilities, health, engine signals) is absent; within a rung the plan's order holds."""
    grouped: dict[int, list[Candidate]] = {}
    for candidate in plan.candidates:
        grouped.setdefault(candidate.rung, []).append(candidate)
    return [Rung(number, tuple(candidates)) for number, candidates in sorted(grouped.items())]


# ---------------------------------------------------------------- budget


def cost_limit(*caps: float | None) -> float | None:
    """The tightest of the caps that are set (None: no cap). Each cap can only narrow the others."""
    given = [cap for cap in caps if cap is not None]
    return min(given) if given else None


def left_of(limit: float | None, spent: float) -> float | None:
    """USD still available under `limit` after `spent` (None: no cap)."""
    return None if limit is None else max(0.0, limit - spent)


def within(candidates: Sequence[Candidate], size: Size, left: float | None) -> tuple[Candidate, ...]:
    """The candidates whose estimated cost for a request of `size` fits in `left` USD, in order."""
    if left is None:
        return tuple(candidates)
    return tuple(c for c in candidates if estimate_cost(c.model.price, size) <= left + 1e-12)


def can_follow(rungs: Sequence[Rung], size: Size, left: float | None) -> bool:
    """Whether any of `rungs` has a candidate that fits in `left` USD: if none does, the rung before
    them is the last that can run, and its answer is returned without gating."""
    return any(within(rung.candidates, size, left) for rung in rungs)


def estimate(candidate: Candidate, size: Size) -> float:
    return estimate_cost(candidate.model.price, size)


# ---------------------------------------------------------------- what a gated rung is asked for


def gate_overrides(req: ChatRequest) -> dict[str, Any]:
    """Body fields for a gated rung: token logprobs and enough alternatives for the margin, or more
    when the client asked for more."""
    asked = req.top_logprobs if isinstance(req.top_logprobs, int) and req.logprobs is True else 0
    return {"logprobs": True, "top_logprobs": max(GATE_TOP_LOGPROBS, asked)}


def with_gate_overrides(candidate: Candidate, overrides: dict[str, Any]) -> Candidate:
    return replace(candidate, overrides={**candidate.overrides, **overrides})


def client_logprobs(logprobs: ChoiceLogprobs | None, req: ChatRequest) -> ChoiceLogprobs | None:
    """A gated rung's logprobs as the client asked for them: none unless it asked (the gate asked for
    its own use), and at most the client's top_logprobs alternatives per token."""
    if logprobs is None or req.logprobs is not True:
        return None
    keep = req.top_logprobs if isinstance(req.top_logprobs, int) else 0
    for tokens in (logprobs.content, logprobs.refusal):
        for token in tokens if isinstance(tokens, list) else ():
            if len(token.top_logprobs) > keep:
                token.top_logprobs = token.top_logprobs[:keep]
    return logprobs


# ---------------------------------------------------------------- verdicts and what the headers say

Action = Literal["pass", "fail", "error", "skip", "answer"]
"""pass/fail: the gate's verdict on a rung's answer; error: the rung failed (after its own retries and
fallback); skip: the rung could not run (its cost does not fit the budget); answer: the rung answered
without a gate (the last rung that could run)."""


@dataclass(frozen=True, slots=True)
class Step:
    """What happened at one rung. Headers, the trace (and metrics) are all read from these."""

    rung: int
    action: Action
    deployment: str | None = None
    score: float | None = None
    failed: tuple[str, ...] = ()
    why: str | None = None
    """error: the error's kind; skip: why the rung did not run."""
    cost_usd: float | None = None


def combine(verdicts: Sequence[Verdict]) -> Verdict:
    """One verdict over every choice of an answer (n > 1): it passes when each choice passes; its score
    is the lowest, its failed checks are all of theirs."""
    if len(verdicts) == 1:
        return verdicts[0]
    scores = [v.score for v in verdicts]
    failed = tuple(dict.fromkeys(check for v in verdicts for check in v.failed))
    score = None if any(s is None for s in scores) else min(s for s in scores if s is not None)
    weakest = min(verdicts, key=lambda v: math.inf if v.score is None else v.score)
    return Verdict(passed=all(v.passed for v in verdicts), score=score, failed=failed, features=weakest.features)


def escalations(steps: Sequence[Step]) -> int:
    """Rungs that were tried and passed over: their answer failed the gate, or they failed."""
    return sum(1 for step in steps if step.action in ("fail", "error"))


def gate_header(steps: Sequence[Step]) -> str:
    """x-escalade-gate: one entry per rung, `;`-separated, e.g.
    `rung=0 fail score=0.412 failed=json_schema,truncated; rung=1 skip=budget; rung=2 answer`."""
    return "; ".join(_entry(step) for step in steps)


def _entry(step: Step) -> str:
    head = f"rung={step.rung}"
    if step.action in ("error", "skip"):
        return f"{head} {step.action}={step.why or 'unknown'}"
    if step.action == "answer":
        return f"{head} answer"
    score = "none" if step.score is None else f"{step.score:.3f}"
    text = f"{head} {step.action} score={score}"
    return f"{text} failed={','.join(step.failed)}" if step.failed else text

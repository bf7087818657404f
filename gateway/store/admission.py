"""Admission by virtual key: budgets (`keys[].budget`) and rates (`keys[].rpm`, `keys[].tpm`).

- `admit` runs before a request is planned. A key whose spend in the current period reached its
  budget gets 429 `budget_exceeded` with a Retry-After until the period ends; with a shared store that
  is unreachable (or not read yet) the spend is unknown and the request gets 503
  `budget_store_unavailable`: money fails closed. A key over its rpm, or whose tpm bucket is full,
  gets 429 `rate_limit_exceeded` with a Retry-After (GCRA, policies/ratelimit.py). Keys without
  budget or limits cost nothing here.
- `settle` runs once an answer's usage is known (after a unary answer, at the end of a stream, also a
  cut one): its cost goes to the key's spend, its tokens to the key's tpm.
- `budget_left` is the question the cascade asks before escalating: USD this key may still spend in
  the current period (None: the key has no budget).

Spend is checked, not reserved: requests admitted together may together pass the budget by what they
cost, and a replica sees other replicas' spend one sync interval late. Tokens are post-paid the same
way. Requests per minute are exact across replicas (one atomic script in Redis).
"""

import time
from dataclasses import dataclass, field
from typing import Any

from gateway.state import GatewayState
from policies.schema import KeyConf
from policies.spend import period_end
from providers.errors import GatewayError


class BudgetExceeded(GatewayError):
    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"


class BudgetUnknown(GatewayError):
    status = 503
    type = "server_error"
    code = "budget_store_unavailable"


class KeyRateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


@dataclass(slots=True)
class _Index:
    """Keys that have a budget or limits, by name, for the live policy version."""

    version: str = ""
    keys: dict[str, KeyConf] = field(default_factory=dict)


_index = _Index()


def key_conf(state: GatewayState, name: str) -> KeyConf | None:
    """The key's policy entry when it has a budget, an rpm or a tpm; else None."""
    runtime = state.runtime
    if _index.version != runtime.version:
        _index.keys = {k.name: k for k in runtime.keys if k.budget is not None or k.rpm or k.tpm}
        _index.version = runtime.version
    return _index.keys.get(name)


async def admit(state: GatewayState, key: str) -> None:
    """Refuse the request when the key's budget is spent or it is over its rate limits."""
    conf = key_conf(state, key)
    if conf is None or state.store is None:
        return
    if conf.budget is not None:
        check_budget(state, key)
    if conf.rpm or conf.tpm:
        wait = await state.store.admit(key, conf.rpm, conf.tpm)
        if wait > 0:
            raise KeyRateLimited(
                f"this key is over its rate limit ({_limits(conf)}); retry in {wait:.1f}s", retry_after_s=wait
            )


def settle(state: GatewayState, key: str, usd: float | None, usage: Any) -> None:
    """Count an answer against the key: its cost toward the budget, its tokens toward the tpm."""
    conf = key_conf(state, key)
    if conf is None or state.store is None:
        return
    if conf.budget is not None and usd and usd > 0:
        state.store.record_spend(key, usd)
    if conf.tpm and usage:
        tokens = (getattr(usage, "prompt_tokens", 0) or 0) + (getattr(usage, "completion_tokens", 0) or 0)
        state.store.add_tokens(key, tokens, conf.tpm)


def budget_left(state: GatewayState, key: str) -> float | None:
    """USD the key may still spend this period (0 when spent); None when it has no budget.
    Raises BudgetUnknown when its spend cannot be known now."""
    conf = key_conf(state, key)
    if conf is None or conf.budget is None:
        return None
    budget = conf.budget
    spent = state.store.spent(key, budget.period) if state.store is not None else 0.0
    if spent is None:
        retry = max(1.0, 2 * state.runtime.policy.state.sync_interval_s)
        raise BudgetUnknown("the budget store is unreachable; try again shortly", retry_after_s=retry)
    return max(0.0, budget.usd - spent)


def check_budget(state: GatewayState, key: str) -> None:
    """Refuse the request when the key's budget for the current period is spent."""
    left = budget_left(state, key)
    if left is None or left > 0:
        return
    conf = key_conf(state, key)
    assert conf is not None and conf.budget is not None
    now = state.store.clock() if state.store is not None else time.time()
    raise BudgetExceeded(
        f"this key's budget of ${conf.budget.usd:g} per {conf.budget.period} is spent",
        retry_after_s=period_end(conf.budget.period, now) - now,
    )


def _limits(conf: KeyConf) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in (("requests/min", conf.rpm), ("tokens/min", conf.tpm)) if n)

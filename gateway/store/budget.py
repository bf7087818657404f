"""Virtual-key budgets (`keys[].budget`: USD per day, week or month): the admission check and the charge.

- `check_budget` runs before a request is planned: a key whose spend in the current period reached its
  budget gets 429 `budget_exceeded` with a Retry-After until the period ends. With a shared store
  that is unreachable (or not yet read) the spend is unknown and the request gets 503
  `budget_store_unavailable`: money fails closed.
- `charge` adds what an answer cost (from its usage and the deployment's price) once it is known:
  after a unary answer, at the end of a stream (also a cut one: the tokens produced are billed).
- `budget_left` is the question the cascade asks before escalating: USD this key may still spend in
  the current period (None: the key has no budget).

Spend is checked, not reserved: requests admitted together may together pass the budget by what they
cost, and a replica sees other replicas' spend one sync interval late.
"""

import time
from dataclasses import dataclass

from gateway.state import GatewayState
from policies.schema import Budget
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


@dataclass(slots=True)
class _Index:
    version: str = ""
    budgets: dict[str, Budget] | None = None


_index = _Index()


def key_budget(state: GatewayState, key: str) -> Budget | None:
    runtime = state.runtime
    if _index.version != runtime.version or _index.budgets is None:
        _index.budgets = {k.name: k.budget for k in runtime.keys if k.budget is not None}
        _index.version = runtime.version
    return _index.budgets.get(key)


def budget_left(state: GatewayState, key: str) -> float | None:
    """USD the key may still spend this period (0 when spent); None when it has no budget.
    Raises BudgetUnknown when its spend cannot be known now."""
    budget = key_budget(state, key)
    if budget is None:
        return None
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
    budget = key_budget(state, key)
    assert budget is not None
    now = state.store.clock() if state.store is not None else time.time()
    raise BudgetExceeded(
        f"this key's budget of ${budget.usd:g} per {budget.period} is spent",
        retry_after_s=period_end(budget.period, now) - now,
    )


def charge(state: GatewayState, key: str, usd: float | None) -> None:
    """Add an answer's cost to the key's spend (only keys with a budget are tracked)."""
    if usd and usd > 0 and state.store is not None and key_budget(state, key) is not None:
        state.store.record_spend(key, usd)

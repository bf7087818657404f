"""Retry, backoff and fallback decisions after a failed attempt. Pure: time and randomness are inputs."""

from dataclasses import dataclass
from typing import Literal

from policies.schema import RetriesConf
from providers.errors import GatewayError

Action = Literal["retry", "fallback", "fail"]


@dataclass(frozen=True, slots=True)
class Step:
    action: Action
    wait_s: float = 0.0
    reason: str = ""


def full_jitter(attempt: int, conf: RetriesConf, rand: float) -> float:
    """AWS "full jitter": uniform in [0, min(max, base * 2**(attempt-1))]; `rand` is in [0, 1)."""
    return rand * min(conf.backoff_max_s, conf.backoff_base_s * 2 ** (attempt - 1))


def next_step(
    error: GatewayError, *, attempt: int, conf: RetriesConf, now: float, deadline: float, rand: float
) -> Step:
    """What to do after attempt number `attempt` (1-based) on one deployment failed with `error`.

    - retry the same deployment after `wait_s` when the error is retryable, attempts remain,
      any Retry-After is within the cap, and the wait ends before the deadline;
    - otherwise fall back to the next deployment when the error allows it;
    - otherwise fail: the error goes to the client (e.g. an upstream 400 about the request itself).
    """
    if now >= deadline:
        return Step("fail", reason="deadline")
    if error.retryable and attempt < conf.attempts:
        if error.retry_after_s is not None:
            if error.retry_after_s > conf.retry_after_cap_s:
                return Step("fallback", reason="retry_after_over_cap")
            wait = error.retry_after_s
        else:
            wait = full_jitter(attempt, conf, rand)
        if now + wait < deadline:
            return Step("retry", wait_s=wait, reason=error.kind)
        return Step("fallback", reason="retry_after_past_deadline")
    if error.fallback:
        return Step("fallback", reason=error.kind)
    return Step("fail", reason=error.kind)

"""policies/retry.py: what to do after a failed attempt (retry, fall back, or fail), and the backoff."""

import pytest

from policies.retry import Step, full_jitter, next_step
from policies.schema import RetriesConf
from providers.errors import (
    ContextLengthExceeded,
    GatewayError,
    UpstreamAuthError,
    UpstreamConnectionError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamRedirect,
    UpstreamRejected,
    UpstreamSilent,
    UpstreamTimeout,
    UpstreamUnavailable,
)

CONF = RetriesConf(attempts=3, backoff_base_s=0.1, backoff_max_s=2.0, retry_after_cap_s=10.0)
NOW = 1000.0
DEADLINE = NOW + 60.0


def step(
    error: GatewayError, *, attempt: int = 1, now: float = NOW, deadline: float = DEADLINE, rand: float = 0.5
) -> Step:
    return next_step(error, attempt=attempt, conf=CONF, now=now, deadline=deadline, rand=rand)


# ---------------------------------------------------------------- full_jitter


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.6), (6, 2.0), (20, 2.0)],
)
def test_full_jitter_is_uniform_up_to_the_capped_exponential(attempt: int, ceiling: float) -> None:
    assert full_jitter(attempt, CONF, 0.0) == 0.0
    assert full_jitter(attempt, CONF, 0.5) == pytest.approx(ceiling / 2)
    top = full_jitter(attempt, CONF, 0.999999)
    assert ceiling * 0.99 < top < ceiling


def test_full_jitter_never_leaves_its_bounds() -> None:
    for attempt in range(1, 12):
        for i in range(100):
            wait = full_jitter(attempt, CONF, i / 100)
            assert 0.0 <= wait < min(CONF.backoff_max_s, CONF.backoff_base_s * 2 ** (attempt - 1)) + 1e-12


# ---------------------------------------------------------------- next_step: retry


@pytest.mark.parametrize(
    "error",
    [
        UpstreamUnavailable("503"),
        UpstreamConnectionError("refused"),
        UpstreamTimeout("idle"),
        UpstreamProtocolError("bad json"),
        UpstreamRateLimited("429"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_retryable_error_with_attempts_left_retries_after_jitter(error: GatewayError) -> None:
    got = step(error, attempt=2, rand=0.25)
    assert got.action == "retry"
    assert got.wait_s == pytest.approx(0.25 * 0.2)
    assert 0.0 <= got.wait_s < 0.2
    assert got.reason == type(error).__name__


@pytest.mark.parametrize("retry_after", [0.0, 0.25, 4.0, 10.0])
def test_retry_after_is_honoured_exactly_up_to_the_cap(retry_after: float) -> None:
    got = step(UpstreamRateLimited("429", retry_after_s=retry_after), rand=0.9)
    assert got == Step("retry", wait_s=retry_after, reason="UpstreamRateLimited")


def test_retry_after_over_the_cap_falls_back_at_once() -> None:
    got = step(UpstreamRateLimited("429", retry_after_s=10.01))
    assert got.action == "fallback"
    assert got.wait_s == 0.0
    assert got.reason == "retry_after_over_cap"


def test_retry_after_that_ends_past_the_deadline_falls_back() -> None:
    got = step(UpstreamUnavailable("503", retry_after_s=5.0), now=NOW, deadline=NOW + 4.0)
    assert got.action == "fallback"
    assert got.reason == "retry_after_past_deadline"


def test_jitter_that_ends_past_the_deadline_falls_back() -> None:
    # attempt 2 -> wait = 0.9 * 0.2 = 0.18 s; only 0.1 s left
    got = step(UpstreamUnavailable("503"), attempt=2, now=NOW, deadline=NOW + 0.1, rand=0.9)
    assert got.action == "fallback"


def test_wait_ending_exactly_at_the_deadline_is_too_late() -> None:
    got = step(UpstreamRateLimited("429", retry_after_s=2.0), now=NOW, deadline=NOW + 2.0)
    assert got.action == "fallback"


# ---------------------------------------------------------------- next_step: fallback and fail


@pytest.mark.parametrize(
    "error",
    [UpstreamUnavailable("503"), UpstreamRateLimited("429", retry_after_s=1.0), UpstreamConnectionError("reset")],
    ids=lambda e: type(e).__name__,
)
def test_attempts_exhausted_falls_back(error: GatewayError) -> None:
    got = step(error, attempt=CONF.attempts)
    assert got.action == "fallback"
    assert got.wait_s == 0.0


@pytest.mark.parametrize(
    "error",
    [
        UpstreamSilent("no headers within 10s"),
        UpstreamAuthError("bad provider key"),
        UpstreamRedirect("307"),
        ContextLengthExceeded("too long", param="messages"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_non_retryable_errors_go_straight_to_the_next_deployment(error: GatewayError) -> None:
    got = step(error, attempt=1)
    assert got.action == "fallback"
    assert got.reason == type(error).__name__


@pytest.mark.parametrize(
    "error",
    [UpstreamRejected("temperature must be <= 2", param="temperature"), GatewayError("bug")],
    ids=lambda e: type(e).__name__,
)
def test_clients_own_error_fails_without_retry_or_fallback(error: GatewayError) -> None:
    for attempt in (1, CONF.attempts):
        got = step(error, attempt=attempt)
        assert got.action == "fail"
        assert got.reason == type(error).__name__


@pytest.mark.parametrize(
    "error",
    [UpstreamUnavailable("503"), UpstreamSilent("silent"), UpstreamRejected("bad")],
    ids=lambda e: type(e).__name__,
)
@pytest.mark.parametrize("late", [0.0, 0.001, 30.0])
def test_at_or_past_the_deadline_fails(error: GatewayError, late: float) -> None:
    got = step(error, now=DEADLINE + late)
    assert got == Step("fail", reason="deadline")


def test_single_attempt_policy_never_retries() -> None:
    conf = RetriesConf(attempts=1)
    got = next_step(UpstreamUnavailable("503"), attempt=1, conf=conf, now=NOW, deadline=DEADLINE, rand=0.0)
    assert got.action == "fallback"

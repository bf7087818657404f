"""Windowed latency statistics and the retry budget (pure, clock injected)."""

import pytest

from policies.health import Outcome
from policies.retry_budget import WINDOW_S, RetryLedger, retry_allowed
from policies.schema import RetryBudgetConf
from policies.spend import period_end, period_id
from policies.stats import BIN_GROWTH, RECENT_SAMPLES, Tally, bin_of, bin_value, percentile, slice_s, summarize, window_slices


def attempt(ttft: float, ok: bool = True, tokens: int | None = None, stream: bool = False, at: float = 0.0) -> Outcome:
    if not ok:
        return Outcome(route="r", deployment="d", ok=False, status=503, error_kind="UpstreamUnavailable",
                       total_s=ttft, at=at)
    return Outcome(route="r", deployment="d", ok=True, ttft_s=ttft, total_s=None if stream else ttft,
                   output_tokens=tokens, at=at)


def close(value: float | None, expected: float) -> bool:
    return value is not None and abs(value - expected) <= expected * (BIN_GROWTH - 1)


def test_bins_are_within_five_percent():
    for seconds in (0.0021, 0.05, 0.8, 3.3, 42.0, 590.0):
        assert close(bin_value(bin_of(seconds)), seconds), seconds


def test_percentiles_of_a_known_distribution():
    tally = Tally()
    for ms in range(1, 101):  # 10 ms .. 1000 ms
        tally.add(attempt(ms / 100))
    s = summarize([tally])
    assert s.samples == 100
    assert close(s.ttft_p50_s, 0.50) and close(s.ttft_p95_s, 0.95)
    assert close(s.total_p50_s, 0.50) and s.error_rate == 0.0


def test_error_rate_tokens_per_second_and_streams():
    tally = Tally()
    tally.add(attempt(2.0, tokens=100))  # unary: 100 tokens in 2 s
    tally.add(attempt(0.2, stream=True))  # stream commit: a TTFT, no total yet
    tally.add(Outcome(route="r", deployment="d", ok=True, phase="end", total_s=2.0, output_tokens=300))
    tally.add(attempt(1.0, ok=False))
    tally.add(Outcome(route="r", deployment="d", ok=False, phase="end", status=504, error_kind="UpstreamTimeout",
                      total_s=9.0))
    s = summarize([tally])
    assert s.samples == 2  # the unary answer and the stream's commit
    assert s.tokens_per_s == pytest.approx(100.0)  # (100 + 300) tokens / (2 + 2) s
    assert s.error_rate == pytest.approx(2 / 3)  # a failed attempt and a cut stream, over 3 attempts
    assert close(s.total_p95_s, 2.0)  # the cut stream's 9 s is not an answer's duration


def test_client_errors_and_rate_limits_are_not_errors_of_the_deployment():
    tally = Tally()
    tally.add(Outcome(route="r", deployment="d", ok=False, status=400, error_kind="UpstreamRejected"))
    tally.add(Outcome(route="r", deployment="d", ok=False, status=429, error_kind="UpstreamRateLimited"))
    assert summarize([tally]).error_rate == 0.0


def test_tallies_merge_through_their_counters():
    a, b = Tally(), Tally()
    for x in (0.1, 0.2, 0.3):
        a.add(attempt(x, tokens=10))
    b.add(attempt(5.0, ok=False))
    wire = {k.encode(): str(v).encode() for k, v in a.counters().items()}
    back = Tally.from_counters(wire)
    assert back == a
    assert summarize([back, b]) == summarize([a, b])
    assert summarize([]).samples == 0 and summarize([]).ttft_p50_s is None


def test_window_slices():
    assert slice_s(60) == 2 and slice_s(1) == 1 and slice_s(600) == 20
    assert list(window_slices(now=100, window_s=60)) == list(range(20, 51))


def test_a_busy_deployment_is_judged_on_its_newest_slices():
    """Enough recent samples hide the older ones, so a slowdown shows at once; a quiet deployment
    (few samples) is judged on the whole window."""
    old, new = Tally(), Tally()
    for _ in range(RECENT_SAMPLES * 3):
        old.add(attempt(0.1))
    for _ in range(RECENT_SAMPLES):
        new.add(attempt(2.0))
    assert summarize([old, new]).ttft_p50_s == pytest.approx(2.0, rel=0.05)
    few = Tally()
    few.add(attempt(2.0))
    assert summarize([old, few]).ttft_p50_s == pytest.approx(0.1, rel=0.05)
    assert percentile({}, 0.5) is None


def test_retry_budget_ratio_plus_floor():
    conf = RetryBudgetConf(ratio=0.2, min_per_s=0.0)
    assert not retry_allowed(first_attempts=4, retries=0, conf=conf)
    assert retry_allowed(first_attempts=5, retries=0, conf=conf)
    assert not retry_allowed(first_attempts=5, retries=1, conf=conf)
    floor = RetryBudgetConf(ratio=0.0, min_per_s=0.5)
    assert retry_allowed(0, 4, floor, window_s=10) and not retry_allowed(0, 5, floor, window_s=10)


def test_retry_ledger_spends_and_refills_over_the_window():
    conf = RetryBudgetConf(ratio=0.5, min_per_s=0.0)
    ledger = RetryLedger()
    for _ in range(4):
        ledger.first_attempt("d", now=100.0)
    assert ledger.try_retry("d", conf, now=100.5) and ledger.try_retry("d", conf, now=100.6)
    assert not ledger.try_retry("d", conf, now=101.0)  # 2 retries = 0.5 x 4 first attempts
    assert ledger.counts("d", now=101.0) == (4, 2)
    assert not ledger.try_retry("other", conf, now=101.0)  # per deployment
    assert ledger.counts("d", now=100.0 + WINDOW_S) == (0, 0)  # the window moved past them


def test_budget_periods_are_utc_calendar_periods():
    t = 1743465600.0 - 1  # 2025-03-31 23:59:59 UTC, a Monday
    assert period_id("day", t) == "2025-03-31" and period_id("month", t) == "2025-03"
    assert period_id("week", t) == "2025-W14"
    assert period_end("day", t) == 1743465600.0 and period_end("month", t) == 1743465600.0
    assert period_end("week", t) == 1743465600.0 + 6 * 86400

"""The circuit breaker state machine and the cooldowns an answer imposes (pure, clock injected)."""

from policies.breaker import (
    CLOSED,
    MAX_RETRY_AFTER_S,
    RATE_LIMIT_PAUSE_S,
    BreakerState,
    Event,
    cooldown,
    event_of,
    later,
    phase,
    record,
    record_all,
    verdict,
)
from policies.health import Outcome
from policies.schema import BreakerConf, ResilienceConf

CONF = BreakerConf(consecutive_failures=3, failure_ratio=0.5, window=10, min_requests=6, open_s=30, half_open_probes=1)


def fail(at: float = 100.0) -> Event:
    return Event(failed=True, started=at, what="UpstreamUnavailable 503")


def ok(at: float = 100.0) -> Event:
    return Event(failed=False, started=at)


def outcome(ok: bool = False, status: int | None = 503, kind: str | None = "UpstreamUnavailable", **kw) -> Outcome:
    return Outcome(route="r", deployment="d", ok=ok, status=None if ok else status,
                   error_kind=None if ok else kind, at=kw.pop("at", 100.0), **kw)


def test_opens_after_consecutive_failures_and_says_why():
    state = record_all(CLOSED, [fail(), fail()], CONF, now=100)
    assert phase(state, 100) == "closed" and state.consecutive == 2
    state = record(state, fail(), CONF, now=100)
    assert phase(state, 100) == "open" and state.until == 130 and state.episode == 1
    assert "3 failures in a row" in state.why and "503" in state.why


def test_a_success_resets_the_run_of_failures():
    state = record_all(CLOSED, [fail(), fail(), ok(), fail(), fail()], CONF, now=100)
    assert phase(state, 100) == "closed" and state.consecutive == 2


def test_opens_on_failure_ratio_once_min_requests_were_seen():
    alternating = [fail(), ok()] * 2 + [fail()]  # 3 of 5 failed, but only 5 < min_requests 6 seen
    state = record_all(CLOSED, alternating, CONF, now=100)
    assert phase(state, 100) == "closed"
    state = record(state, ok(), CONF, now=100)  # 6 seen, 3 failed = 0.5, but a success never opens
    assert phase(state, 100) == "closed"
    state = record(state, fail(), CONF, now=100)  # 4 of 7
    assert phase(state, 100) == "open" and "4 of the last 7 attempts failed" in state.why


def test_the_ratio_window_slides():
    state = record_all(CLOSED, [fail(), fail(), ok()] + [ok()] * 9, CONF, now=100)
    assert state.recent == "0" * 10  # the two early failures left the window of 10


def test_min_requests_above_window_is_capped_at_window():
    conf = BreakerConf(consecutive_failures=99, failure_ratio=0.5, window=4, min_requests=20)
    state = record_all(CLOSED, [fail(), ok(), fail(), ok(), fail()], conf, now=1)
    assert phase(state, 1) == "open"


def test_open_goes_half_open_after_open_s_and_ignores_late_results():
    state = record_all(CLOSED, [fail()] * 3, CONF, now=100)
    assert record(state, ok(at=99), CONF, now=110) is state  # an attempt from before it opened
    assert phase(state, 129.9) == "open" and phase(state, 130) == "half_open"


def test_half_open_probe_success_closes_with_a_clean_window():
    state = record_all(CLOSED, [fail()] * 3, CONF, now=100)
    assert record(state, ok(at=120), CONF, now=131) is state  # began while open: not the probe
    closed = record(state, ok(at=130.5), CONF, now=131)
    assert closed == CLOSED and phase(closed, 131) == "closed"


def test_half_open_probe_failure_reopens_for_another_open_s():
    state = record_all(CLOSED, [fail()] * 3, CONF, now=100)
    again = record(state, fail(at=131), CONF, now=132)
    assert phase(again, 132) == "open" and again.until == 162 and again.episode == 2
    assert again.why.startswith("probe failed")


def test_state_round_trips_through_its_encoding():
    state = record_all(CLOSED, [fail(), ok(), fail()], CONF, now=5)
    assert BreakerState.decode(state.encode()) == state
    assert BreakerState.decode(None) == CLOSED and BreakerState.decode(b"garbage") == CLOSED


def test_what_counts_as_a_failure():
    assert verdict(outcome(status=503)) == "failure"
    assert verdict(outcome(status=504, kind="UpstreamSilent")) == "failure"
    assert verdict(outcome(status=502, kind="UpstreamConnectionError")) == "failure"
    assert verdict(outcome(status=502, kind="UpstreamProtocolError")) == "failure"
    # the request's own fault: the upstream answered, so it counts as alive
    for status, kind in [(400, "UpstreamRejected"), (404, "UpstreamRejected"), (422, "InvalidField"),
                         (400, "ContextLengthExceeded")]:
        assert verdict(outcome(status=status, kind=kind)) == "success", (status, kind)
    # cooldowns instead of breaking
    assert verdict(outcome(status=429, kind="UpstreamRateLimited")) == "neutral"
    assert verdict(outcome(status=502, kind="UpstreamAuthError")) == "neutral"
    assert verdict(outcome(ok=True)) == "success"


def test_stream_end_counts_only_when_cut():
    assert verdict(outcome(ok=True, phase="end")) == "neutral"
    assert verdict(outcome(status=504, kind="UpstreamTimeout", phase="end")) == "failure"


def test_event_start_time_is_end_minus_elapsed():
    event = event_of(outcome(status=503, total_s=2.0, at=50.0))
    assert event is not None and event.failed and event.started == 48.0
    assert event_of(outcome(status=429, kind="UpstreamRateLimited")) is None


RES = ResilienceConf(auth_cooldown_s=300)


def test_retry_after_on_429_and_503_cools_down():
    c = cooldown(outcome(status=429, kind="UpstreamRateLimited", retry_after_s=7, at=10), RES)
    assert c is not None and c.until == 17 and c.why == "Retry-After 7s on a 429"
    c = cooldown(outcome(status=503, retry_after_s=2, at=10), RES)
    assert c is not None and c.until == 12
    assert cooldown(outcome(status=503, at=10), RES) is None  # no Retry-After: the breaker handles 503s


def test_429_without_retry_after_pauses_briefly_and_huge_retry_after_is_capped():
    c = cooldown(outcome(status=429, kind="UpstreamRateLimited", at=10), RES)
    assert c is not None and c.until == 10 + RATE_LIMIT_PAUSE_S
    c = cooldown(outcome(status=429, kind="UpstreamRateLimited", retry_after_s=10**7, at=0), RES)
    assert c is not None and c.until == MAX_RETRY_AFTER_S


def test_rejected_provider_key_cools_down_for_auth_cooldown():
    c = cooldown(outcome(status=502, kind="UpstreamAuthError", at=10), RES)
    assert c is not None and c.until == 310 and "rejected escalade's key" in c.why
    assert cooldown(outcome(ok=True), RES) is None


def test_a_shorter_cooldown_never_cuts_a_longer_one_short():
    c = cooldown(outcome(status=502, kind="UpstreamAuthError", at=10), RES)
    short = cooldown(outcome(status=429, kind="UpstreamRateLimited", retry_after_s=1, at=20), RES)
    assert later(c, short) is c and later(short, c) is c and later(None, short) is short

"""Per-key rpm/tpm as GCRA (pure, clock injected)."""

import pytest

from policies.ratelimit import PERIOD_S, add_tokens, admit


def test_rpm_allows_a_minute_of_burst_then_the_steady_rate():
    tat, now = 0.0, 1000.0
    for _ in range(6):
        wait, tat = admit(tat, 0.0, now, rpm=6, tpm=None)
        assert wait == 0
    wait, same = admit(tat, 0.0, now, rpm=6, tpm=None)
    assert wait == pytest.approx(10.0) and same == tat  # one request per 10 s; nothing taken
    wait, tat = admit(tat, 0.0, now + 10, rpm=6, tpm=None)
    assert wait == 0


def test_tpm_is_post_paid():
    now = 1000.0
    tpm_tat = add_tokens(0.0, now, tokens=150, tpm=100)  # one answer used 1.5 minutes of tokens
    assert tpm_tat == pytest.approx(now + 90)
    wait, _ = admit(0.0, tpm_tat, now, rpm=None, tpm=100)
    assert wait == pytest.approx(30.0)
    assert admit(0.0, tpm_tat, now + 30.01, rpm=None, tpm=100)[0] == 0
    assert admit(0.0, now + PERIOD_S - 1, now, rpm=None, tpm=100)[0] == 0  # room left: admitted


def test_a_denied_limit_takes_nothing_from_the_other():
    now = 1000.0
    full_tpm = now + PERIOD_S + 5
    wait, rpm_tat = admit(0.0, full_tpm, now, rpm=60, tpm=1000)
    assert wait == pytest.approx(5.0) and rpm_tat == 0.0
    assert admit(0.0, 0.0, now, rpm=None, tpm=None) == (0.0, 0.0)

"""Per-key request and token rates (`keys[].rpm`, `keys[].tpm`) as GCRA. Pure: time is an input.

GCRA keeps one number per limit, the "theoretical arrival time" (TAT): when the key's bucket would be
empty again. Each request moves it on by one emission interval (60 s / rpm); a request is admitted
while the TAT stays within one period (60 s) of now, so a key may burst a whole minute's worth, then
goes at the steady rate. Tokens are post-paid: a request is admitted while the token bucket has room,
and the answer's tokens (from its usage) are added when they are known, so a request that crosses the
limit completes and the next ones wait (as Envoy AI Gateway and APISIX do). The Redis store runs the
same arithmetic in one Lua script so that both limits are checked and taken atomically.
"""

PERIOD_S = 60.0


def interval(per_minute: float) -> float:
    """Seconds of the period one request (or one token) uses."""
    return PERIOD_S / per_minute


def admit(rpm_tat: float, tpm_tat: float, now: float, rpm: int | None, tpm: int | None) -> tuple[float, float]:
    """(wait_s, new rpm TAT). wait_s 0: admitted, and the new TAT must be stored; else the seconds to
    wait before the key may send again (nothing is taken)."""
    wait = 0.0
    new_rpm_tat = rpm_tat
    if rpm:
        new_rpm_tat = max(rpm_tat, now) + interval(rpm)
        if new_rpm_tat - now > PERIOD_S:
            wait = new_rpm_tat - now - PERIOD_S
    if tpm and tpm_tat - now >= PERIOD_S:
        wait = max(wait, tpm_tat - now - PERIOD_S, interval(tpm))
    return (wait, rpm_tat) if wait > 0 else (0.0, new_rpm_tat)


def add_tokens(tpm_tat: float, now: float, tokens: int, tpm: int) -> float:
    """The token TAT after an answer used `tokens`."""
    return max(tpm_tat, now) + tokens * interval(tpm)

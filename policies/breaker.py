"""The circuit breaker of one deployment, and the cooldowns an answer can impose. Pure: time is an input.

What counts (`verdict`):
- failure: the deployment's fault. 5xx, timeouts (an upstream silent before its first token too),
  connection errors, invalid responses, redirects, an upstream that does not know the model, and a
  committed stream cut after its first token.
- success: the upstream answered. A 2xx, and also a 4xx about the request itself (400, 404 of a
  route, 413, 422, context length): the deployment is up, the client's request was at fault.
- neutral: 429 and a rejected provider key (401/403). They are not the deployment being broken;
  they set a cooldown instead (`cooldown`): the Retry-After of a 429 (a short pause when it has
  none), the long `auth_cooldown_s` for a rejected key. A 503 with Retry-After is a failure AND
  cools down for its Retry-After.

The state machine (`record`, `phase`):
- closed: every counted attempt goes into a window of the last `window` results. The circuit opens
  after `consecutive_failures` failures in a row, or when at least `failure_ratio` of the window
  failed once `min_requests` results (at most `window`) are in it.
- open: nothing is tried for `open_s`; results that still arrive (attempts that began before it
  opened) change nothing.
- half-open (an open circuit whose `open_s` has passed): `half_open_probes` requests may probe it
  (who probes is claimed atomically by the store, `episode` names the claims). The first counted
  result of an attempt that began after the circuit went half-open decides: success closes it with a
  clean window, failure opens it for another `open_s`.

The state is a small immutable value so the store can keep it anywhere (a dict, or one Redis string
updated with compare-and-set) and this module stays the one place that decides.
"""

import json
from dataclasses import dataclass, replace
from typing import Literal

from policies.health import Circuit, Outcome
from policies.schema import BreakerConf, ResilienceConf

Verdict = Literal["failure", "success", "neutral"]

RATE_LIMIT_PAUSE_S = 1.0
"""Cooldown after a 429 that carried no Retry-After: a burst does not all land on a rate-limited deployment."""
MAX_RETRY_AFTER_S = 3600.0
"""A longer Retry-After cools the deployment down for this long (then it is tried again)."""

_COOLDOWN_ONLY = frozenset({"UpstreamRateLimited", "UpstreamAuthError"})


def verdict(outcome: Outcome) -> Verdict:
    """How one Outcome counts for the breaker (and for the error rate routing reads)."""
    if outcome.phase == "end":
        # The attempt already counted at the commit point; only a cut stream adds something.
        return "failure" if not outcome.ok and _is_fault(outcome) else "neutral"
    if outcome.ok:
        return "success"
    if outcome.error_kind in _COOLDOWN_ONLY or outcome.status == 429:
        return "neutral"
    return "failure" if _is_fault(outcome) else "success"


def _is_fault(outcome: Outcome) -> bool:
    """The upstream's fault: escalade maps those to 5xx (a 4xx is about the request)."""
    return outcome.status is None or outcome.status >= 500


def started_at(outcome: Outcome) -> float:
    """Wall clock when the attempt began (`at` is when it ended)."""
    elapsed = outcome.total_s if outcome.total_s is not None else outcome.ttft_s
    return outcome.at - (elapsed or 0.0)


@dataclass(frozen=True, slots=True)
class Cooldown:
    until: float
    """Wall clock before which the deployment is not tried."""
    why: str


def cooldown(outcome: Outcome, conf: ResilienceConf) -> Cooldown | None:
    """The cooldown an Outcome imposes on its deployment, if any."""
    if outcome.ok or outcome.phase == "end":
        return None
    if outcome.error_kind == "UpstreamAuthError":
        return Cooldown(outcome.at + conf.auth_cooldown_s, "the provider rejected escalade's key")
    after = outcome.retry_after_s
    if outcome.status in (429, 503) and after is not None and after > 0:
        after = min(after, MAX_RETRY_AFTER_S)
        return Cooldown(outcome.at + after, f"Retry-After {after:g}s on a {outcome.status}")
    if outcome.status == 429 or outcome.error_kind == "UpstreamRateLimited":
        return Cooldown(outcome.at + RATE_LIMIT_PAUSE_S, "rate limited (429)")
    return None


def later(a: Cooldown | None, b: Cooldown | None) -> Cooldown | None:
    """Of two cooldowns the one that ends later: a new, shorter one never cuts an existing one short."""
    if a is None:
        return b
    if b is None:
        return a
    return b if b.until > a.until else a


@dataclass(frozen=True, slots=True)
class BreakerState:
    """One deployment's breaker. `recent` holds the window as a string of "1" (failure) and "0"."""

    open: bool = False
    until: float = 0.0
    """While open: when it turns half-open."""
    episode: int = 0
    """Counts openings: names the probe claims of each half-open spell."""
    consecutive: int = 0
    recent: str = ""
    why: str | None = None

    def encode(self) -> str:
        return json.dumps([int(self.open), self.until, self.episode, self.consecutive, self.recent, self.why])

    @classmethod
    def decode(cls, text: str | bytes | None) -> "BreakerState":
        """The state a store kept; a missing or unreadable one is a fresh closed breaker."""
        if not text:
            return CLOSED
        try:
            is_open, until, episode, consecutive, recent, why = json.loads(text)
            return cls(bool(is_open), float(until), int(episode), int(consecutive), str(recent), why)
        except (ValueError, TypeError):
            return CLOSED


CLOSED = BreakerState()


def phase(state: BreakerState, now: float) -> Circuit:
    if not state.open:
        return "closed"
    return "open" if now < state.until else "half_open"


@dataclass(frozen=True, slots=True)
class Event:
    """A counted result, as the breaker needs it."""

    failed: bool
    started: float
    """Wall clock when the attempt began."""
    what: str = ""
    """What failed (error kind), for the reason shown in skip messages."""


def event_of(outcome: Outcome) -> Event | None:
    """The breaker event of an Outcome, or None when it does not count."""
    v = verdict(outcome)
    if v == "neutral":
        return None
    what = outcome.error_kind or "error"
    if outcome.status is not None:
        what = f"{what} {outcome.status}"
    return Event(failed=v == "failure", started=started_at(outcome), what=what if v == "failure" else "")


def record(state: BreakerState, event: Event, conf: BreakerConf, now: float) -> BreakerState:
    """The breaker after one counted result."""
    current = phase(state, now)
    if current == "open":
        return state  # an attempt that began before the circuit opened
    if current == "half_open":
        if event.started < state.until:
            return state  # not the probe: it began before the half-open spell
        if event.failed:
            return _open(state, conf, now, f"probe failed: {event.what}")
        return CLOSED
    recent = (state.recent + ("1" if event.failed else "0"))[-conf.window :]
    consecutive = state.consecutive + 1 if event.failed else 0
    if event.failed and consecutive >= conf.consecutive_failures:
        return _open(state, conf, now, f"{consecutive} failures in a row, last {event.what}")
    failures = recent.count("1")
    if (
        event.failed
        and len(recent) >= min(conf.min_requests, conf.window)
        and failures >= conf.failure_ratio * len(recent)
    ):
        return _open(state, conf, now, f"{failures} of the last {len(recent)} attempts failed, last {event.what}")
    return replace(state, consecutive=consecutive, recent=recent)


def record_all(state: BreakerState, events: list[Event], conf: BreakerConf, now: float) -> BreakerState:
    for event in events:
        state = record(state, event, conf, now)
    return state


def _open(state: BreakerState, conf: BreakerConf, now: float, why: str) -> BreakerState:
    return BreakerState(open=True, until=now + conf.open_s, episode=state.episode + 1, why=why)

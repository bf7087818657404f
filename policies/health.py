"""What the gateway has seen of each deployment, as pure values routing reads.

Two records flow here:
- `Outcome`: one upstream attempt as dispatch saw it (success or typed failure, timings, tokens).
  The gateway hands every Outcome to its observers (the state store, metrics); nothing here does I/O.
- `ModelHealth`: the store's current summary of one deployment (circuit, cooldown, recent latency),
  published as a whole `Health` mapping that `router.plan()` reads without locking or awaiting.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Circuit = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """One upstream attempt, or the end of a committed stream (`phase="end"`)."""

    route: str
    deployment: str
    ok: bool
    phase: Literal["attempt", "end"] = "attempt"
    """attempt: the attempt's result (for a stream: reached its commit point or failed before it).
    end: a committed stream finished (ok) or was cut after its commit point (not ok)."""
    error_kind: str | None = None
    """GatewayError.kind when not ok."""
    status: int | None = None
    """The HTTP status escalade maps the failure to, when not ok."""
    retry_after_s: float | None = None
    ttft_s: float | None = None
    """Seconds from the attempt's start to its first token (streams: the commit point; unary: the whole call)."""
    total_s: float | None = None
    """Seconds from the attempt's start to the last byte (None for a stream's attempt phase)."""
    output_tokens: int | None = None
    input_tokens: int | None = None
    at: float = 0.0
    """Wall clock (time.time()) when the attempt ended."""


@dataclass(frozen=True, slots=True)
class ModelHealth:
    """One deployment's live summary. Latency figures are over the recent window (`resilience.latency_window_s`,
    fleet-wide with the Redis store); None when unknown. Computed by policies.stats and policies.breaker."""

    circuit: Circuit = "closed"
    cooldown_until: float = 0.0
    """Wall clock (time.time()) before which the deployment is not tried (Retry-After, auth failure)."""
    why: str | None = None
    """Why the circuit is open or the deployment cools down: said in skip reasons."""
    samples: int = 0
    """Successful attempts in the window (each has a TTFT): how much the latency figures rest on."""
    ttft_p50_s: float | None = None
    """Time to first token of successful attempts: a stream's commit point, a unary call's whole call."""
    ttft_p95_s: float | None = None
    total_p50_s: float | None = None
    """Whole answers: unary calls, and streams that ended normally."""
    total_p95_s: float | None = None
    tokens_per_s: float | None = None
    """Output tokens over seconds, summed over whole answers that reported usage."""
    error_rate: float | None = None
    """Failed attempts (5xx, timeouts, connection errors, cut streams) over all attempts; a 4xx about the
    request or a 429 is not an error of the deployment. None without attempts in the window."""


Health = Mapping[str, ModelHealth]
"""Deployment name -> its health. A deployment without an entry has no history: healthy, unknown latency."""

NO_HEALTH: Health = {}


def health_skip_reason(name: str, health: Health, now: float) -> str | None:
    """Why deployment `name` must not be tried now (open circuit, cooldown), or None when it may be.

    A half-open circuit is eligible: whether this request may be its probe is decided at dispatch time.
    """
    h = health.get(name)
    if h is None:
        return None
    if h.circuit == "open":
        return f"circuit open ({h.why})" if h.why else "circuit open"
    if h.cooldown_until > now:
        left = h.cooldown_until - now
        return f"cooling down for {left:.1f}s ({h.why})" if h.why else f"cooling down for {left:.1f}s"
    return None

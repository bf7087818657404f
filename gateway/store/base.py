"""The Store interface every state backend implements, and the snapshot both build.

A store keeps what the gateway learns from upstream answers (latency statistics, circuit breakers,
cooldowns) and what keys spend. It is an observer (it is called with every Outcome, never awaits:
work that needs I/O is queued and done by its background loop) and it publishes the routing
snapshot, a whole `Health` mapping, through the `publish` callback whenever it changes.
"""

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from policies.breaker import BreakerState, Cooldown, phase
from policies.health import Health, ModelHealth, Outcome
from policies.retry_budget import RetryLedger
from policies.schema import Policy, RetryBudgetConf
from policies.spend import Period
from policies.stats import Summary, Tally, summarize

PolicySource = Callable[[], Policy]
"""Returns the live policy (hot reload may swap it at any time)."""
Publish = Callable[[Health], None]
Clock = Callable[[], float]


class Store(Protocol):
    backend: str
    clock: Clock
    """Wall clock (time.time, or a test's)."""

    def __call__(self, outcome: Outcome) -> None:
        """Observe one Outcome (quick, never awaits)."""

    async def start(self) -> None:
        """Connect and start the background loop (a store that cannot connect starts degraded)."""

    async def stop(self) -> None:
        """Push what is buffered (best effort) and stop the loop."""

    async def sync(self) -> None:
        """Push buffered observations, pull the fleet's, publish the snapshot (the loop does this)."""

    def health(self) -> Health:
        """The last published snapshot."""

    def half_open(self, deployment: str) -> bool:
        """The deployment's circuit waits for a probe: a request must claim the probe to try it."""

    async def claim_probe(self, deployment: str) -> bool:
        """Claim one of the deployment's half-open probes (atomic across replicas)."""

    def first_attempt(self, deployment: str) -> None:
        """A request's first attempt on a deployment (the retry budget's base)."""

    def allow_retry(self, deployment: str) -> bool:
        """Whether the retry budget allows one more retry on the deployment now (counts it if so)."""

    def spent(self, key: str, period: Period) -> float | None:
        """USD spent by a virtual key in the current period; None when unknown (shared store unreachable)."""

    def record_spend(self, key: str, usd: float) -> None:
        """Add what an answer cost to the key's spend (every period)."""

    async def admit(self, key: str, rpm: int | None, tpm: int | None) -> float:
        """Take one request from the key's rpm and check its tpm has room, atomically across replicas:
        0 when admitted, else the seconds to wait (nothing is taken)."""

    def add_tokens(self, key: str, tokens: int, tpm: int) -> None:
        """Count an answer's tokens against the key's tpm (post-paid)."""

    def status(self) -> dict[str, Any]:
        """What /readyz and the admin API show: backend, connected or degraded and why, buffered work."""


def model_health(breaker: BreakerState, cooldown: Cooldown | None, summary: Summary, now: float) -> ModelHealth:
    circuit = phase(breaker, now)
    until = cooldown.until if cooldown is not None and cooldown.until > now else 0.0
    why = breaker.why if circuit != "closed" else (cooldown.why if until else None)
    return ModelHealth(
        circuit=circuit,
        cooldown_until=until,
        why=why,
        samples=summary.samples,
        ttft_p50_s=summary.ttft_p50_s,
        ttft_p95_s=summary.ttft_p95_s,
        total_p50_s=summary.total_p50_s,
        total_p95_s=summary.total_p95_s,
        tokens_per_s=summary.tokens_per_s,
        error_rate=summary.error_rate,
    )


def build_health(
    deployments: Iterable[str],
    breakers: Mapping[str, BreakerState],
    cooldowns: Mapping[str, Cooldown],
    tallies: Mapping[str, Iterable[Tally]],
    now: float,
) -> dict[str, ModelHealth]:
    """The snapshot: an entry for each deployment the store knows anything about."""
    out: dict[str, ModelHealth] = {}
    closed = BreakerState()
    for name in deployments:
        breaker = breakers.get(name, closed)
        cooldown = cooldowns.get(name)
        summary = summarize(tallies.get(name, ()))
        if breaker == closed and (cooldown is None or cooldown.until <= now) and summary == Summary():
            continue
        out[name] = model_health(breaker, cooldown, summary, now)
    return out


def retry_allowed(snapshot: Health, retries: RetryLedger, deployment: str, conf: RetryBudgetConf, now: float) -> bool:
    """Whether `deployment` may be retried now: never a probe (or an attempt its circuit opened under),
    else as its retry budget allows (each replica keeps its own budget: a retry never waits for Redis)."""
    entry = snapshot.get(deployment)
    if entry is not None and entry.circuit != "closed":
        return False
    return retries.try_retry(deployment, conf, now)

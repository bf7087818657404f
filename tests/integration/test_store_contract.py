"""The Store contract: every backend (memory, and Redis on a real redis-server) behaves the same.

Each test drives a store with Outcomes and an injected clock, lets it sync (a no-op for memory, a
push and pull for Redis) and checks the routing snapshot, probe claims, retry budget and spend.
"""

import itertools
import time
from collections.abc import AsyncIterator, Callable

import pytest

from gateway.store import build_store
from gateway.store.base import Store
from policies.breaker import RATE_LIMIT_PAUSE_S
from policies.health import Health, Outcome
from policies.schema import BreakerConf, Budget, KeyConf, ModelConf, Policy, ResilienceConf, RetryBudgetConf, StateConf

BACKENDS = ["memory", "redis"]
KEYS = ("team-a", "team-b")
"""Keys with a budget: the ones whose spend a store always knows (a Redis store pulls them)."""
_prefixes = itertools.count()


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def policy(backend: str, prefix: str, **resilience) -> Policy:
    conf = {
        "breaker": BreakerConf(consecutive_failures=3, failure_ratio=0.5, window=10, min_requests=6, open_s=10,
                               half_open_probes=1),
        "retry_budget": RetryBudgetConf(ratio=0.5, min_per_s=0.0),
        "auth_cooldown_s": 300.0,
        "latency_window_s": 60.0,
        **resilience,
    }
    return Policy(
        state=StateConf(backend=backend, key_prefix=prefix, sync_interval_s=0.05),
        models={name: ModelConf(provider="mock", model="ok") for name in ("a", "b")},
        keys=[KeyConf(name=name, key_sha256=f"{n:064}", budget=Budget(usd=1)) for n, name in enumerate(KEYS)],
        resilience=ResilienceConf(**conf),
    )


class Harness:
    """A store under test with its clock and what it published."""

    def __init__(self, store: Store, clock: Clock, published: list[Health]) -> None:
        self.store, self.clock, self.published = store, clock, published

    def ok(self, name: str = "a", ttft: float = 0.1, tokens: int = 10) -> None:
        self.store(Outcome(route="r", deployment=name, ok=True, ttft_s=ttft, total_s=ttft, output_tokens=tokens,
                           at=self.clock()))

    def fail(self, name: str = "a", status: int = 503, kind: str = "UpstreamUnavailable", **kw) -> None:
        self.store(Outcome(route="r", deployment=name, ok=False, status=status, error_kind=kind, total_s=0.01,
                           at=self.clock(), **kw))

    async def health(self) -> Health:
        await self.store.sync()
        return self.store.health()


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    if request.param == "redis":
        request.getfixturevalue("redis_server")
    return request.param


@pytest.fixture
async def make(backend: str, request, monkeypatch) -> AsyncIterator[Callable[..., Harness]]:
    started: list[Store] = []
    prefix = f"contract{next(_prefixes)}-{time.monotonic_ns()}"
    if backend == "redis":
        monkeypatch.setenv("REDIS_URL", request.getfixturevalue("redis_server").url)

    async def start(clock: Clock | None = None, **resilience) -> Harness:
        clock = clock or Clock()
        live = policy(backend, prefix, **resilience)
        published: list[Health] = []
        store = build_store(live.state, lambda: live, published.append, clock)
        await store.start()
        started.append(store)
        return Harness(store, clock, published)

    yield start
    for store in started:
        await store.stop()


async def test_a_new_store_knows_nothing(make):
    h = await make()
    assert await h.health() == {}
    assert h.store.spent("team-a", "day") == 0.0
    assert not h.store.half_open("a") and await h.store.claim_probe("a")  # closed: no claim needed


async def test_latency_statistics(make):
    h = await make()
    for ms in range(1, 101):
        h.ok(ttft=ms / 100, tokens=ms)
    h.fail()
    entry = (await h.health())["a"]
    assert entry.samples == 100 and entry.circuit == "closed"
    assert entry.ttft_p50_s == pytest.approx(0.5, rel=0.05) and entry.ttft_p95_s == pytest.approx(0.95, rel=0.05)
    assert entry.total_p50_s == pytest.approx(0.5, rel=0.05)
    assert entry.tokens_per_s == pytest.approx(100.0)
    assert entry.error_rate == pytest.approx(1 / 101)
    assert h.published and h.published[-1] == h.store.health()


async def test_statistics_cover_only_the_window(make):
    h = await make(latency_window_s=10.0)
    h.ok(ttft=5.0)
    h.clock.advance(30)
    h.ok(ttft=0.2)
    entry = (await h.health())["a"]
    assert entry.samples == 1 and entry.ttft_p50_s == pytest.approx(0.2, rel=0.05)


async def test_consecutive_failures_open_the_circuit(make):
    h = await make()
    for _ in range(3):
        h.fail()
    entry = (await h.health())["a"]
    assert entry.circuit == "open" and "3 failures in a row" in entry.why
    assert "b" not in h.store.health()
    assert not await h.store.claim_probe("a")  # open: nobody may try it


async def test_half_open_lets_one_probe_through_and_its_success_closes(make):
    h = await make()
    for _ in range(3):
        h.fail()
    await h.health()
    h.clock.advance(10.5)
    assert (await h.health())["a"].circuit == "half_open" and h.store.half_open("a")
    assert await h.store.claim_probe("a")
    assert not await h.store.claim_probe("a")  # half_open_probes: 1
    h.ok()
    assert (await h.health())["a"].circuit == "closed"


async def test_a_failed_probe_reopens(make):
    h = await make()
    for _ in range(3):
        h.fail()
    await h.health()
    h.clock.advance(10.5)
    await h.health()
    assert await h.store.claim_probe("a")
    h.fail()
    entry = (await h.health())["a"]
    assert entry.circuit == "open" and entry.why.startswith("probe failed")
    h.clock.advance(10.5)
    await h.health()
    assert await h.store.claim_probe("a")  # a new half-open spell has its own probe


async def test_failure_ratio_opens_the_circuit(make):
    h = await make()
    for step in "ssfsfsf":
        h.fail() if step == "f" else h.ok()
    assert (await h.health())["a"].circuit == "closed"  # 3 of 7 failed
    h.fail()
    entry = (await h.health())["a"]
    assert entry.circuit == "open" and "4 of the last 8 attempts failed" in entry.why


async def test_client_errors_do_not_count(make):
    h = await make()
    for _ in range(5):
        h.fail(status=400, kind="UpstreamRejected")
    entry = (await h.health())["a"]
    assert entry.circuit == "closed" and entry.error_rate == 0.0


async def test_429_cools_down_for_retry_after_without_breaking(make):
    h = await make()
    for _ in range(5):
        h.fail(status=429, kind="UpstreamRateLimited", retry_after_s=4.0)
    entry = (await h.health())["a"]
    assert entry.circuit == "closed" and entry.cooldown_until == pytest.approx(h.clock() + 4.0)
    assert "Retry-After 4s" in entry.why
    h.clock.advance(4.1)
    assert (await h.health())["a"].cooldown_until == 0.0


async def test_429_without_retry_after_pauses_briefly(make):
    h = await make()
    h.fail(status=429, kind="UpstreamRateLimited")
    assert (await h.health())["a"].cooldown_until == pytest.approx(h.clock() + RATE_LIMIT_PAUSE_S)


async def test_rejected_provider_key_cools_down_long(make):
    h = await make()
    h.fail(status=502, kind="UpstreamAuthError")
    entry = (await h.health())["a"]
    assert entry.cooldown_until == pytest.approx(h.clock() + 300.0) and "rejected escalade's key" in entry.why
    h.fail(status=429, kind="UpstreamRateLimited", retry_after_s=1.0)  # a shorter one does not cut it short
    assert (await h.health())["a"].cooldown_until == pytest.approx(h.clock() + 300.0)


async def test_retry_budget(make):
    h = await make()
    for _ in range(4):
        h.store.first_attempt("a")
    assert h.store.allow_retry("a") and h.store.allow_retry("a")
    assert not h.store.allow_retry("a")  # ratio 0.5 of 4 first attempts
    h.clock.advance(11)
    assert not h.store.allow_retry("a")  # the window moved on: no first attempts to lean on


async def test_spend_per_key_and_period(make):
    h = await make()
    h.store.record_spend("team-a", 0.25)
    h.store.record_spend("team-a", 0.5)
    h.store.record_spend("team-b", 1.0)
    await h.store.sync()
    assert h.store.spent("team-a", "day") == pytest.approx(0.75)
    assert h.store.spent("team-a", "month") == pytest.approx(0.75)
    assert h.store.spent("team-b", "week") == pytest.approx(1.0)
    h.clock.advance(86400 * 32)
    await h.store.sync()
    assert h.store.spent("team-a", "day") == 0.0 and h.store.spent("team-a", "month") == 0.0


async def test_rpm_admits_a_minute_of_burst_then_the_steady_rate(make):
    h = await make()
    assert [await h.store.admit("team-a", 3, None) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = await h.store.admit("team-a", 3, None)
    assert wait == pytest.approx(20.0, abs=0.01)  # 60 s / 3 requests
    assert await h.store.admit("team-b", 3, None) == 0.0  # per key
    h.clock.advance(20.01)
    assert await h.store.admit("team-a", 3, None) == 0.0
    assert await h.store.admit("team-a", 3, None) > 0


async def test_tpm_counts_answers_tokens(make):
    h = await make()
    assert await h.store.admit("team-a", None, 100) == 0.0
    h.store.add_tokens("team-a", 150, 100)  # 1.5 minutes' worth
    await h.store.sync()
    assert await h.store.admit("team-a", None, 100) == pytest.approx(30.0, abs=0.01)
    h.clock.advance(30.01)
    assert await h.store.admit("team-a", None, 100) == 0.0

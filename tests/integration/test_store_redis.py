"""What only the Redis store does: several replicas share one state, and a Redis outage degrades to
local state and catches up. Against a real redis-server."""

import asyncio
import itertools
import logging
import time

import pytest
import redis as redis_sync

from gateway.store.redis import RedisStore
from policies.health import Outcome
from policies.schema import BreakerConf, Budget, KeyConf, ModelConf, Policy, ResilienceConf, StateConf
from tests.support.redis import free_port

_prefixes = itertools.count()


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def make_policy(prefix: str) -> Policy:
    return Policy(
        state=StateConf(backend="redis", key_prefix=prefix, sync_interval_s=0.05),
        models={name: ModelConf(provider="mock", model="ok") for name in ("a", "b")},
        keys=[KeyConf(name="team", key_sha256="0" * 64, budget=Budget(usd=10))],
        resilience=ResilienceConf(
            breaker=BreakerConf(consecutive_failures=3, window=10, min_requests=6, open_s=10, half_open_probes=1)
        ),
    )


@pytest.fixture
async def fleet(redis_server):
    """Replicas sharing one Redis (one prefix per test), each with its own clock."""
    prefix = f"fleet{next(_prefixes)}-{time.monotonic_ns()}"
    policy = make_policy(prefix)
    stores: list[RedisStore] = []

    async def replica(url: str | None = None, clock: Clock | None = None) -> RedisStore:
        store = RedisStore(lambda: policy, url or redis_server.url, clock=clock or Clock(), prefix=prefix)
        await store.start()
        stores.append(store)
        return store

    replica.prefix = prefix  # type: ignore[attr-defined]
    yield replica
    for store in stores:
        await store.stop()


def fail(store: RedisStore, name: str = "a", **kw) -> None:
    store(Outcome(route="r", deployment=name, ok=False, status=503, error_kind="UpstreamUnavailable", total_s=0.01,
                  at=store.clock(), **kw))


def ok(store: RedisStore, name: str = "a", ttft: float = 0.1) -> None:
    store(Outcome(route="r", deployment=name, ok=True, ttft_s=ttft, total_s=ttft, output_tokens=5, at=store.clock()))


async def test_a_circuit_opened_by_one_replica_is_open_for_all(fleet):
    a, b = await fleet(), await fleet()
    for _ in range(3):
        fail(a)
    await a.sync()
    await b.sync()
    entry = b.health()["a"]
    assert entry.circuit == "open" and "3 failures in a row" in entry.why


async def test_failures_seen_by_different_replicas_add_up(fleet):
    a, b = await fleet(), await fleet()
    fail(a)
    fail(a)
    await a.sync()
    fail(b)  # the third failure in a row, fleet-wide
    await b.sync()
    await a.sync()
    assert a.health()["a"].circuit == "open" and b.health()["a"].circuit == "open"


async def test_latency_seen_by_one_replica_is_seen_by_all(fleet):
    a, b = await fleet(), await fleet()
    for _ in range(10):
        ok(a, ttft=0.4)
    for _ in range(10):
        ok(b, ttft=0.8)
    await a.sync()
    await b.sync()
    await a.sync()
    for store in (a, b):
        entry = store.health()["a"]
        assert entry.samples == 20
        assert entry.ttft_p50_s == pytest.approx(0.4, rel=0.05) and entry.ttft_p95_s == pytest.approx(0.8, rel=0.05)


async def test_only_one_replica_gets_the_half_open_probe(fleet):
    clock = Clock()
    stores = [await fleet(clock=clock) for _ in range(3)]
    for _ in range(3):
        fail(stores[0])
    await stores[0].sync()
    clock.now += 10.5
    for store in stores:
        await store.sync()
        assert store.half_open("a")
    claims = [await store.claim_probe("a") for store in stores for _ in range(2)]
    assert claims.count(True) == 1
    winner = stores[claims.index(True) // 2]
    ok(winner)  # the probe succeeded
    await winner.sync()
    for store in stores:
        await store.sync()
        assert store.health()["a"].circuit == "closed"


async def test_cooldowns_and_spend_are_shared(fleet):
    a, b = await fleet(), await fleet()
    a(Outcome(route="r", deployment="b", ok=False, status=429, error_kind="UpstreamRateLimited", retry_after_s=30,
              at=a.clock()))
    a.record_spend("team", 0.5)
    b.record_spend("team", 0.25)
    await a.sync()
    await b.sync()
    await a.sync()
    assert b.health()["b"].cooldown_until == pytest.approx(a.clock() + 30)
    assert a.spent("team", "day") == pytest.approx(0.75) and b.spent("team", "month") == pytest.approx(0.75)


async def test_every_key_expires(fleet, redis_server):
    a = await fleet()
    for _ in range(3):
        fail(a)
    ok(a, name="b")
    a(Outcome(route="r", deployment="b", ok=False, status=502, error_kind="UpstreamAuthError", at=a.clock()))
    a.record_spend("team", 1.0)
    await a.sync()
    a.clock.now += 10.5
    await a.sync()
    assert await a.claim_probe("a")
    client = redis_sync.Redis.from_url(redis_server.url)
    keys = list(client.scan_iter(f"{fleet.prefix}:*"))
    kinds = {k.decode().split(":")[2] for k in keys}
    assert kinds == {"lat", "brk", "probe", "cool", "spend"}
    assert all(client.pttl(k) > 0 for k in keys), [(k, client.pttl(k)) for k in keys]
    client.close()


async def test_redis_outage_degrades_to_local_state_then_catches_up(fleet, own_redis, caplog):
    caplog.set_level(logging.INFO, logger="escalade.state")
    a = await fleet(own_redis.url)
    ok(a)
    await a.sync()
    assert a.status()["connected"] and "degraded" not in a.status()
    own_redis.kill()
    for _ in range(3):
        fail(a)  # seen while Redis is down: this replica's own breaker opens
    for _ in range(5):
        ok(a, name="b", ttft=0.3)
    a.record_spend("team", 2.0)
    await a.sync()
    status = a.status()
    assert not status["connected"] and "cannot reach Redis" in status["degraded"]
    assert status["buffered"]["breaker_results"] == 8 and status["buffered"]["spend_entries"] == 3
    assert a.health()["a"].circuit == "open"  # local state keeps routing
    assert a.spent("team", "day") is None  # unknown: budgets fail closed
    own_redis.start()
    await a.sync()
    assert a.status()["connected"] and a.status()["buffered"]["slices"] == 0
    b = await fleet(own_redis.url)  # a replica that only knows what reached Redis
    assert b.health()["a"].circuit == "open" and b.health()["b"].samples == 5
    assert b.spent("team", "day") == pytest.approx(2.0)
    assert "cannot reach Redis" in caplog.text and "Redis reachable" in caplog.text


async def test_a_store_that_starts_without_redis_serves_locally(fleet, caplog):
    port = free_port()  # nothing listens there
    a = await fleet(f"redis://:hunter2-secret@127.0.0.1:{port}/0")
    assert not a.status()["connected"]
    for _ in range(3):
        fail(a)
    assert a.health()["a"].circuit == "open"
    assert "hunter2" not in str(a.status()) and "hunter2" not in caplog.text


async def test_concurrent_pushes_lose_no_breaker_result(fleet):
    stores = [await fleet() for _ in range(4)]
    for store in stores[:3]:
        fail(store)  # one failure each; three in a row open the circuit
    await asyncio.gather(*(store.sync() for store in stores[:3]))  # racing compare-and-sets
    await stores[3].sync()
    assert stores[3].health()["a"].circuit == "open"


async def test_rpm_is_exact_across_replicas_under_concurrency(fleet):
    stores = [await fleet() for _ in range(4)]
    waits = await asyncio.gather(*(store.admit("team", 10, None) for _ in range(15) for store in stores))
    assert sum(1 for w in waits if w == 0) == 10  # 60 concurrent requests, 4 replicas, rpm 10


async def test_rate_limits_fall_back_to_local_while_redis_is_down(fleet, own_redis):
    a = await fleet(own_redis.url)
    assert await a.admit("team", 2, None) == 0.0
    own_redis.kill()
    assert await a.admit("team", 2, None) == 0.0  # this replica's own limiter, starting afresh
    assert await a.admit("team", 2, None) == 0.0
    assert await a.admit("team", 2, None) > 0
    assert not a.status()["connected"]

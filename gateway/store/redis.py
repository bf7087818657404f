"""The Redis store: every replica shares latency statistics, circuit breakers, cooldowns and key spend.

Each replica observes its own Outcomes into a local ledger (the memory store's) and into buffers;
every `state.sync_interval_s` (at once when a breaker or cooldown changed) it pushes the buffers and
pulls the fleet's view, from which it publishes the routing snapshot:

- statistics: counters of time slices, summed by every replica (HINCRBY);
- breakers: one state per deployment, changed only by compare-and-set: a replica reads it, applies
  its new results with policies.breaker, and writes it back if nobody changed it meanwhile (else it
  reads again). The breaker logic runs in Python, in one place; Redis only makes the update atomic;
- half-open probes: claimed with an atomic INCR on a key of that half-open spell;
- cooldowns: only ever extended (a script keeps the later end);
- spend: INCRBYFLOAT per key and period.

When Redis is unreachable the replica keeps serving on its local ledger (its own statistics,
breakers and probe claims), says so in /readyz, and keeps its buffers (bounded: statistics older
than the window, breaker results older than `open_s` and ended cooldowns are dropped; spend is kept).
When Redis answers again it pushes them and goes back to the fleet's view. Spend is unknown while
Redis is unreachable, so budgeted keys are refused then (see gateway.store.admission).

The Redis URL (it may hold a password) is never logged or shown; errors are named by their type.
"""

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.store.base import Clock, PolicySource, Publish, build_health, retry_allowed
from gateway.store.keys import Keys, breaker_ttl_s, spend_ttl_s
from gateway.store.ledger import PERIODS, Ledger
from policies import ratelimit
from policies.breaker import CLOSED, BreakerState, Cooldown, Event, event_of, later, phase, record_all
from policies.health import Health, ModelHealth, Outcome
from policies.schema import Policy, ResilienceConf
from policies.spend import Period, period_id
from policies.stats import Tally, slice_index, slice_s, window_slices

log = logging.getLogger("escalade.state")

OP_TIMEOUT_S = 1.0
"""Socket timeout of one Redis call."""
SYNC_TIMEOUT_S = 3.0
"""A whole push-and-pull longer than this counts as Redis being unreachable."""
PROBE_TIMEOUT_S = 0.25
"""A probe claim is on the request path: past this, the local ledger decides."""
DEGRADED_RETRY_S = 1.0
"""While Redis is unreachable, how often to try again (at least)."""
MAX_EVENTS = 1000
"""Breaker results kept per deployment while they cannot be pushed."""
CAS_ATTEMPTS = 8
UNREACHABLE = (RedisError, OSError, TimeoutError)

_CAS = """
local current = redis.call('GET', KEYS[1])
if (current == false and ARGV[1] == '') or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""

_EXTEND = """
local current = redis.call('GET', KEYS[1])
if current then
  local bar = string.find(current, '|', 1, true)
  if bar and tonumber(string.sub(current, 1, bar - 1)) >= tonumber(ARGV[1]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[2], 'PX', ARGV[3])
return 1
"""

_ADMIT = """
local now = tonumber(ARGV[1])
local rpm_step = tonumber(ARGV[2])
local tpm_step = tonumber(ARGV[3])
local period = tonumber(ARGV[4])
local wait = 0
local rpm_tat = now
if rpm_step > 0 then
  rpm_tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now) + rpm_step
  if rpm_tat - now > period then
    wait = rpm_tat - now - period
  end
end
if tpm_step > 0 then
  local tpm_tat = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), now)
  if tpm_tat - now >= period then
    wait = math.max(wait, tpm_tat - now - period, tpm_step)
  end
end
if wait > 0 then
  return tostring(wait)
end
if rpm_step > 0 then
  redis.call('SET', KEYS[1], string.format('%.17g', rpm_tat), 'PX', math.ceil((rpm_tat - now + period) * 1000))
end
return '0'
"""

_ADD_TOKENS = """
local now = tonumber(ARGV[1])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now) + tonumber(ARGV[2])
redis.call('SET', KEYS[1], string.format('%.17g', tat), 'PX', math.ceil((tat - now + tonumber(ARGV[3])) * 1000))
return 1
"""

_CLAIM = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return n
"""


@dataclass(slots=True)
class Buffers:
    """Observations not yet pushed. Bounded by construction (see `trim`)."""

    tallies: dict[tuple[str, int, int], Tally] = field(default_factory=dict)
    events: dict[str, list[Event]] = field(default_factory=dict)
    cooldowns: dict[str, Cooldown] = field(default_factory=dict)
    spend: dict[tuple[str, str], float] = field(default_factory=dict)
    tokens: dict[tuple[str, int], int] = field(default_factory=dict)
    """(key, its tpm) -> tokens of answers not yet counted in Redis."""

    def add(self, outcome: Outcome, cooldown: Cooldown | None, conf: ResilienceConf, now: float) -> None:
        length = slice_s(conf.latency_window_s)
        slot = (outcome.deployment, length, slice_index(outcome.at or now, length))
        tally = self.tallies.get(slot)
        if tally is None:
            tally = self.tallies[slot] = Tally()
        tally.add(outcome)
        event = event_of(outcome)
        if event is not None:
            events = self.events.setdefault(outcome.deployment, [])
            events.append(event)
            if len(events) > MAX_EVENTS:
                del events[: len(events) - MAX_EVENTS]
        if cooldown is not None:
            kept = later(self.cooldowns.get(outcome.deployment), cooldown)
            assert kept is not None
            self.cooldowns[outcome.deployment] = kept

    def take(self) -> "Buffers":
        taken = Buffers(self.tallies, self.events, self.cooldowns, self.spend, self.tokens)
        self.tallies, self.events, self.cooldowns, self.spend, self.tokens = {}, {}, {}, {}, {}
        return taken

    def restore(self, taken: "Buffers") -> None:
        """Put back what a failed push took (newer observations stay after the older ones)."""
        for slot, tally in taken.tallies.items():
            mine = self.tallies.get(slot)
            if mine is None:
                self.tallies[slot] = tally
            else:
                tally.merge(mine)
                self.tallies[slot] = tally
        for name, events in taken.events.items():
            merged = events + self.events.get(name, [])
            self.events[name] = merged[-MAX_EVENTS:]
        for name, cooldown in taken.cooldowns.items():
            kept = later(cooldown, self.cooldowns.get(name))
            assert kept is not None
            self.cooldowns[name] = kept
        for slot, usd in taken.spend.items():
            self.spend[slot] = self.spend.get(slot, 0.0) + usd
        for slot, tokens in taken.tokens.items():
            self.tokens[slot] = self.tokens.get(slot, 0) + tokens

    def trim(self, conf: ResilienceConf, now: float) -> None:
        """Drop what would be stale by the time it is pushed."""
        oldest_slice = window_slices(now, conf.latency_window_s).start
        length = slice_s(conf.latency_window_s)
        for slot in [s for s in self.tallies if s[2] < oldest_slice or s[1] != length]:
            del self.tallies[slot]
        oldest = now - conf.breaker.open_s
        for name in list(self.events):
            fresh = [e for e in self.events[name] if e.started >= oldest]
            if fresh:
                self.events[name] = fresh
            else:
                del self.events[name]
        for name in [n for n, c in self.cooldowns.items() if c.until <= now]:
            del self.cooldowns[name]

    def size(self) -> dict[str, int]:
        return {
            "slices": len(self.tallies),
            "breaker_results": sum(len(e) for e in self.events.values()),
            "cooldowns": len(self.cooldowns),
            "spend_entries": len(self.spend),
            "token_counts": len(self.tokens),
        }


@dataclass(slots=True)
class Fleet:
    """The fleet's state as last pulled."""

    breakers: dict[str, BreakerState]
    cooldowns: dict[str, Cooldown]
    tallies: dict[str, list[Tally]]
    spend: dict[tuple[str, str], float]
    spend_keys: frozenset[str]
    at: float


def _ignore(_: Health) -> None:
    return None


class RedisStore:
    backend = "redis"

    def __init__(
        self,
        policy: PolicySource,
        url: str,
        publish: Publish = _ignore,
        clock: Clock = time.time,
        *,
        prefix: str = "escalade",
    ) -> None:
        self._policy = policy
        self._publish_to = publish
        self.clock = clock
        self.keys = Keys(prefix)
        try:
            self._client = redis.Redis.from_url(
                url,
                socket_timeout=OP_TIMEOUT_S,
                socket_connect_timeout=OP_TIMEOUT_S,
                retry=Retry(NoBackoff(), 1),  # one retry: a pooled connection may have died with a restart
                health_check_interval=0,
            )
        except ValueError:
            raise ValueError("the Redis URL of state.redis_url_env is not a valid redis:// URL") from None
        self._cas = self._client.register_script(_CAS)
        self._extend = self._client.register_script(_EXTEND)
        self._claim = self._client.register_script(_CLAIM)
        self._admit = self._client.register_script(_ADMIT)
        self._add_tokens = self._client.register_script(_ADD_TOKENS)
        self.local = Ledger()
        self._buffers = Buffers()
        self._spend_keys: set[str] = set()
        self._fleet: Fleet | None = None
        self._connected = False
        self._down_since: float | None = None
        self._error: str | None = None
        self._synced_at: float | None = None
        self._snapshot: dict[str, ModelHealth] = {}
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # ------------------------------------------------------------ observer

    def __call__(self, outcome: Outcome) -> None:
        conf = self._policy().resilience
        now = self.clock()
        change = self.local.observe(outcome, conf, now)
        self._buffers.add(outcome, self.local.cooldowns.get(outcome.deployment) if change.cooldown else None, conf, now)
        if change:
            self._wake.set()  # the fleet should know now, not at the next tick
            self._publish()  # a cooldown applies here at once; while degraded, so does the local breaker

    # ------------------------------------------------------------ life cycle

    async def start(self) -> None:
        await self.sync()
        self._task = asyncio.create_task(self._run(), name="escalade-state-redis")

    async def stop(self) -> None:
        self._closing = True
        if self._task is not None:
            self._wake.set()
            try:
                async with asyncio.timeout(SYNC_TIMEOUT_S + 1):
                    await self._task
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        if self._connected:
            await self.sync()  # push what is buffered (best effort)
        with contextlib.suppress(*UNREACHABLE):
            await self._client.aclose()

    async def _run(self) -> None:
        while not self._closing:
            interval = self._policy().state.sync_interval_s
            if not self._connected:
                interval = max(interval, DEGRADED_RETRY_S)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            if self._closing:
                return
            self._wake.clear()
            try:
                await self.sync()
            except Exception:  # the loop must outlive any surprise
                log.exception("state sync failed")
            await asyncio.sleep(min(interval, 0.02))  # a burst of changes coalesces

    # ------------------------------------------------------------ sync

    async def sync(self) -> None:
        async with self._lock:
            policy = self._policy()
            try:
                async with asyncio.timeout(SYNC_TIMEOUT_S):
                    await self._exchange(policy)
            except UNREACHABLE as exc:
                self._went_down(exc)
            else:
                if not self._connected:
                    was = f" after {self.clock() - self._down_since:.1f}s" if self._down_since else ""
                    log.info("state: Redis reachable%s; sharing state with the fleet", was)
                self._connected, self._down_since, self._error = True, None, None
                self._synced_at = self.clock()
            self._publish()

    def _went_down(self, exc: BaseException) -> None:
        if self._connected or self._error is None:
            log.warning(
                "state: cannot reach Redis (%s); serving on this replica's own state until it answers",
                type(exc).__name__,
            )
        if self._down_since is None:
            self._down_since = self.clock()
        self._connected = False
        self._error = f"cannot reach Redis ({type(exc).__name__})"

    async def _exchange(self, policy: Policy) -> None:
        conf = policy.resilience
        now = self.clock()
        self._buffers.trim(conf, now)
        taken = self._buffers.take()
        try:
            await self._push_counters(taken, conf, now)
        except BaseException:
            self._buffers.restore(taken)
            raise
        taken.tallies, taken.cooldowns, taken.spend, taken.tokens = {}, {}, {}, {}
        try:
            await self._push_breakers(taken, conf, now)
        except BaseException:
            self._buffers.restore(taken)
            raise
        self._fleet = await self._pull(policy, now)

    async def _push_counters(self, taken: Buffers, conf: ResilienceConf, now: float) -> None:
        if not (taken.tallies or taken.cooldowns or taken.spend or taken.tokens):
            return
        pipe = self._client.pipeline(transaction=True)
        ttl_ms = int((conf.latency_window_s + 2 * slice_s(conf.latency_window_s)) * 1000)
        for (name, length, index), tally in taken.tallies.items():
            key = self.keys.latency(name, length, index)
            for counter, value in tally.counters().items():
                if counter == "s":
                    pipe.hincrbyfloat(key, counter, value)
                else:
                    pipe.hincrby(key, counter, int(value))
            pipe.pexpire(key, ttl_ms)
        for name, cooldown in taken.cooldowns.items():
            ttl = max(1, int((cooldown.until - now) * 1000) + 1000)
            await self._extend(
                keys=[self.keys.cooldown(name)], args=[repr(cooldown.until), cooldown.why, ttl], client=pipe
            )
        for (key, slot), usd in taken.spend.items():
            name = self.keys.spend(key, slot)
            pipe.incrbyfloat(name, usd)
            pipe.expire(name, spend_ttl_s(slot))
        for (key, tpm), tokens in taken.tokens.items():
            args = [repr(now), repr(tokens * ratelimit.interval(tpm)), repr(ratelimit.PERIOD_S)]
            await self._add_tokens(keys=[self.keys.rate(key, "tpm")], args=args, client=pipe)
        await pipe.execute()

    async def _push_breakers(self, taken: Buffers, conf: ResilienceConf, now: float) -> None:
        """Apply each deployment's new results to its shared breaker, by compare-and-set: read all, write
        all (one round trip each), and read again only those another replica changed meanwhile."""
        ttl_ms = int(breaker_ttl_s(conf.breaker.open_s) * 1000)
        for _ in range(CAS_ATTEMPTS):
            names = list(taken.events)
            if not names:
                return
            raws = await self._client.mget([self.keys.breaker(name) for name in names])
            pipe = self._client.pipeline(transaction=False)
            writes = []
            for name, raw in zip(names, raws, strict=True):
                current = BreakerState.decode(raw)
                new = record_all(current, taken.events[name], conf.breaker, now)
                if new == current:
                    del taken.events[name]
                    continue
                await self._cas(keys=[self.keys.breaker(name)], args=[raw or b"", new.encode(), ttl_ms], client=pipe)
                writes.append(name)
            if writes:
                for name, written in zip(writes, await pipe.execute(), strict=True):
                    if written:
                        del taken.events[name]
        for name in list(taken.events):
            log.warning("state: breaker of %s kept changing under %d updates; results dropped", name, CAS_ATTEMPTS)
            del taken.events[name]

    async def _pull(self, policy: Policy, now: float) -> Fleet:
        names = list(policy.models)
        conf = policy.resilience
        length = slice_s(conf.latency_window_s)
        window = window_slices(now, conf.latency_window_s)
        self._spend_keys.update(k.name for k in policy.keys if k.budget is not None)
        spend_keys = sorted(self._spend_keys)
        spend_slots = [(key, f"{p}:{period_id(p, now)}") for key in spend_keys for p in PERIODS]
        pipe = self._client.pipeline(transaction=False)
        for name in names:
            pipe.get(self.keys.breaker(name))
            pipe.get(self.keys.cooldown(name))
            for index in window:
                pipe.hgetall(self.keys.latency(name, length, index))
        for key, slot in spend_slots:
            pipe.get(self.keys.spend(key, slot))
        replies = iter(await pipe.execute())
        breakers: dict[str, BreakerState] = {}
        cooldowns: dict[str, Cooldown] = {}
        tallies: dict[str, list[Tally]] = {}
        for name in names:
            breaker = BreakerState.decode(next(replies))
            if breaker != CLOSED:
                breakers[name] = breaker
            cooldown = _decode_cooldown(next(replies))
            if cooldown is not None:
                cooldowns[name] = cooldown
            slices = [Tally.from_counters(raw) for raw in (next(replies) for _ in window) if raw]
            if slices:
                tallies[name] = slices
        spend = {}
        for slot in spend_slots:
            raw = next(replies)
            spend[slot] = float(raw) if raw else 0.0
        return Fleet(breakers, cooldowns, tallies, spend, frozenset(self._spend_keys), now)

    # ------------------------------------------------------------ snapshot

    def _publish(self) -> None:
        snapshot = self._build()
        if snapshot != self._snapshot:
            self._snapshot = snapshot
            self._publish_to(snapshot)

    def _build(self) -> dict[str, ModelHealth]:
        policy = self._policy()
        now = self.clock()
        if not self._connected or self._fleet is None:
            return self.local.health(policy.models, policy.resilience, now)
        self.local.prune(policy.resilience, now)
        fleet = self._fleet
        cooldowns = dict(fleet.cooldowns)
        for name, mine in self.local.cooldowns.items():  # ours may be newer than the last pull
            kept = later(cooldowns.get(name), mine)
            assert kept is not None
            cooldowns[name] = kept
        return build_health(policy.models, fleet.breakers, cooldowns, fleet.tallies, now)

    def health(self) -> Health:
        return self._snapshot

    # ------------------------------------------------------------ request path

    def half_open(self, deployment: str) -> bool:
        entry = self._snapshot.get(deployment)
        return entry is not None and entry.circuit == "half_open"

    async def claim_probe(self, deployment: str) -> bool:
        conf = self._policy().resilience.breaker
        now = self.clock()
        fleet = self._fleet
        if not self._connected or fleet is None:
            return self.local.claim_probe(deployment, conf.half_open_probes, conf.open_s, now)
        breaker = fleet.breakers.get(deployment, CLOSED)
        current = phase(breaker, now)
        if current != "half_open":
            return current == "closed"
        key = self.keys.probe(deployment, breaker.episode)
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                claims = await self._claim(keys=[key], args=[int(conf.open_s * 1000)])
        except UNREACHABLE as exc:
            self._went_down(exc)
            self._wake.set()
            return self.local.claim(deployment, breaker.episode, conf.half_open_probes, conf.open_s, now)
        return int(claims) <= conf.half_open_probes

    def first_attempt(self, deployment: str) -> None:
        self.local.retries.first_attempt(deployment, self.clock())

    def allow_retry(self, deployment: str) -> bool:
        conf = self._policy().resilience.retry_budget
        return retry_allowed(self._snapshot, self.local.retries, deployment, conf, self.clock())

    def spent(self, key: str, period: Period) -> float | None:
        fleet = self._fleet
        if not self._connected or fleet is None:
            return None
        if key not in fleet.spend_keys:
            self._spend_keys.add(key)  # not pulled yet (keys with a budget always are): from the next sync on
            self._wake.set()
            return None
        slot = (key, f"{period}:{period_id(period, self.clock())}")
        # A period that began after the last pull has no fleet figure yet: it starts from nothing.
        return fleet.spend.get(slot, 0.0) + self._buffers.spend.get(slot, 0.0)

    def record_spend(self, key: str, usd: float) -> None:
        if usd <= 0:
            return
        now = self.clock()
        self._spend_keys.add(key)
        self.local.add_spend(key, usd, now)
        for period in PERIODS:
            slot = (key, f"{period}:{period_id(period, now)}")
            self._buffers.spend[slot] = self._buffers.spend.get(slot, 0.0) + usd

    async def admit(self, key: str, rpm: int | None, tpm: int | None) -> float:
        now = self.clock()
        if not self._connected:
            return self.local.admit(key, rpm, tpm, now)
        steps = [ratelimit.interval(rpm) if rpm else 0.0, ratelimit.interval(tpm) if tpm else 0.0]
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                wait = await self._admit(
                    keys=[self.keys.rate(key, "rpm"), self.keys.rate(key, "tpm")],
                    args=[repr(now), *(repr(step) for step in steps), repr(ratelimit.PERIOD_S)],
                )
        except UNREACHABLE as exc:
            self._went_down(exc)
            self._wake.set()
            return self.local.admit(key, rpm, tpm, now)
        return float(wait)

    def add_tokens(self, key: str, tokens: int, tpm: int) -> None:
        if tokens <= 0:
            return
        self.local.add_tokens(key, tokens, tpm, self.clock())
        slot = (key, tpm)
        self._buffers.tokens[slot] = self._buffers.tokens.get(slot, 0) + tokens

    def status(self) -> dict[str, Any]:
        now = self.clock()
        status: dict[str, Any] = {"backend": self.backend, "shared": True, "connected": self._connected}
        if not self._connected:
            since = f" for {now - self._down_since:.1f}s" if self._down_since is not None else ""
            status["degraded"] = (
                f"{self._error or 'not connected yet'}{since}: serving on this replica's own state "
                "(circuits and latency are local; keys with a budget are refused until Redis answers)"
            )
        if self._synced_at is not None:
            status["synced_s_ago"] = round(now - self._synced_at, 3)
        status["buffered"] = self._buffers.size()
        return status


def _decode_cooldown(raw: bytes | None) -> Cooldown | None:
    if not raw:
        return None
    until, _, why = raw.decode(errors="replace").partition("|")
    try:
        return Cooldown(float(until), why)
    except ValueError:
        return None

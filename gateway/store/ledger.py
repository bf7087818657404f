"""What one process knows on its own: statistics, breakers, cooldowns, probe claims and spend.

The memory store is this ledger. The Redis store keeps one too, fed with the same Outcomes, and serves
from it while Redis is unreachable (circuits and statistics stay local; nothing is lost but the fleet).
Every decision is made by policies.breaker / policies.stats; the ledger only holds their inputs.
"""

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.store.base import build_health
from policies import ratelimit
from policies.breaker import CLOSED, BreakerState, Cooldown, cooldown, event_of, later, phase, record
from policies.health import ModelHealth, Outcome
from policies.retry_budget import RetryLedger
from policies.schema import ResilienceConf
from policies.spend import Period, period_id
from policies.stats import Tally, slice_index, slice_s, window_slices

PERIODS: tuple[Period, ...] = ("day", "week", "month")


@dataclass(frozen=True, slots=True)
class Change:
    """What one observation changed that routing must see at once."""

    breaker: bool = False
    cooldown: bool = False

    def __bool__(self) -> bool:
        return self.breaker or self.cooldown


NO_CHANGE = Change()


class Ledger:
    def __init__(self) -> None:
        self.tallies: dict[str, dict[int, Tally]] = {}
        self.breakers: dict[str, BreakerState] = {}
        self.cooldowns: dict[str, Cooldown] = {}
        self.probes: dict[tuple[str, int], tuple[int, float]] = {}
        """(deployment, episode) -> (claims, expires at)."""
        self.spend: dict[tuple[str, str], float] = {}
        """(key, period id) -> USD."""
        self.retries = RetryLedger()
        self.rates: dict[tuple[str, str], float] = {}
        """(key, "rpm" or "tpm") -> GCRA theoretical arrival time."""

    # ------------------------------------------------------------ observations

    def observe(self, outcome: Outcome, conf: ResilienceConf, now: float) -> Change:
        name = outcome.deployment
        length = slice_s(conf.latency_window_s)
        slices = self.tallies.setdefault(name, {})
        index = slice_index(outcome.at or now, length)
        tally = slices.get(index)
        if tally is None:
            tally = slices[index] = Tally()
        tally.add(outcome)
        breaker_changed = cooldown_changed = False
        event = event_of(outcome)
        if event is not None:
            before = self.breakers.get(name, CLOSED)
            after = record(before, event, conf.breaker, now)
            if after is not before:
                self.breakers[name] = after
                breaker_changed = after.open != before.open or after.until != before.until
        new = cooldown(outcome, conf)
        if new is not None:
            old = self.cooldowns.get(name)
            kept = later(old, new)
            if kept is not old:
                self.cooldowns[name] = kept  # type: ignore[assignment]
                cooldown_changed = True
        if not (breaker_changed or cooldown_changed):
            return NO_CHANGE
        return Change(breaker=breaker_changed, cooldown=cooldown_changed)

    def add_spend(self, key: str, usd: float, now: float) -> None:
        for period in PERIODS:
            slot = (key, f"{period}:{period_id(period, now)}")
            self.spend[slot] = self.spend.get(slot, 0.0) + usd

    def spent(self, key: str, period: Period, now: float) -> float:
        return self.spend.get((key, f"{period}:{period_id(period, now)}"), 0.0)

    def admit(self, key: str, rpm: int | None, tpm: int | None, now: float) -> float:
        """0 when the key may send a request now (and it is counted), else the seconds to wait."""
        tats = self.rates.get((key, "rpm"), 0.0), self.rates.get((key, "tpm"), 0.0)
        wait, rpm_tat = ratelimit.admit(*tats, now, rpm, tpm)
        if wait == 0 and rpm:
            self.rates[(key, "rpm")] = rpm_tat
        return wait

    def add_tokens(self, key: str, tokens: int, tpm: int, now: float) -> None:
        self.rates[(key, "tpm")] = ratelimit.add_tokens(self.rates.get((key, "tpm"), 0.0), now, tokens, tpm)

    # ------------------------------------------------------------ probes

    def claim_probe(self, name: str, probes: int, ttl_s: float, now: float) -> bool:
        """Claim one of `probes` probes of the deployment's current half-open spell."""
        breaker = self.breakers.get(name, CLOSED)
        current = phase(breaker, now)
        if current != "half_open":
            return current == "closed"
        return self.claim(name, breaker.episode, probes, ttl_s, now)

    def claim(self, name: str, episode: int, probes: int, ttl_s: float, now: float) -> bool:
        slot = (name, episode)
        claims, expires = self.probes.get(slot, (0, 0.0))
        if expires <= now:
            claims = 0  # an earlier probe never reported: its claim lapsed
        if claims >= probes:
            return False
        self.probes[slot] = (claims + 1, now + ttl_s)
        return True

    # ------------------------------------------------------------ snapshot

    def health(self, deployments: Iterable[str], conf: ResilienceConf, now: float) -> dict[str, ModelHealth]:
        self.prune(conf, now)
        window = window_slices(now, conf.latency_window_s)
        tallies = {name: [slices[i] for i in sorted(slices) if i in window] for name, slices in self.tallies.items()}
        return build_health(deployments, self.breakers, self.cooldowns, tallies, now)

    def prune(self, conf: ResilienceConf, now: float) -> None:
        """Forget what can no longer matter, so nothing grows without bound."""
        window = window_slices(now, conf.latency_window_s)
        for name in list(self.tallies):
            slices = self.tallies[name]
            for index in [i for i in slices if i not in window]:  # too old, or of a window a reload changed
                del slices[index]
            if not slices:
                del self.tallies[name]
        for name in [n for n, c in self.cooldowns.items() if c.until <= now]:
            del self.cooldowns[name]
        for slot in [s for s, (_, expires) in self.probes.items() if expires <= now]:
            del self.probes[slot]
        for slot in [s for s, tat in self.rates.items() if tat <= now]:
            del self.rates[slot]
        current = {f"{p}:{period_id(p, now)}" for p in PERIODS}
        for slot in [s for s in self.spend if s[1] not in current]:
            del self.spend[slot]

    def forget(self, keep: Iterable[str]) -> None:
        """Drop deployments the policy no longer has."""
        keep = set(keep)
        for table in (self.tallies, self.breakers, self.cooldowns):
            for name in [n for n in table if n not in keep]:
                del table[name]

#!/usr/bin/env python3
"""Routing simulation: how each strategy spreads traffic over three models with different prices and
latency distributions when one of them degrades mid-run, and later recovers.

The routing decisions are the real ones (`policies.router.plan` with `policies.strategies`, the bench
policy below parsed by the real loader, costs from `policies.cost`); only the upstreams and the clock
are simulated, so a run takes seconds and is deterministic for a seed. Every strategy sees the same
arrivals and the same per-request draws (common random numbers), so their figures compare fairly. The
oracle knows each model's true latency distribution at every instant and always picks the fastest.

Latency figures reach routing the way they do in the gateway: each answer becomes an `Outcome` when it
completes (so a slow answer is seen late) and goes to the gateway's own in-memory store
(`gateway.store.memory.MemoryStore`, on the simulated clock), whose statistics cover the policy's
`resilience.latency_window_s`; the store republishes its `Health` snapshot every
`state.sync_interval_s` (--publish-s), and routing reads the last one published.

    python tests/bench/bench_routing.py                      # the table (a few seconds)
    python tests/bench/bench_routing.py --window 5           # a shorter latency window
    python tests/bench/bench_routing.py --seed 7 --rate 80 --duration 180
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import math
import random
import statistics
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.store.memory import MemoryStore
from policies.cost import request_size, usage_cost
from policies.health import Health, Outcome
from policies.loader import parse_policy
from policies.router import plan
from policies.schema import Policy
from policies.strategies import Facts
from providers.schema.chat import Usage

_Z = statistics.NormalDist()


@dataclass(frozen=True)
class Upstream:
    """A simulated model: its price (in the policy) and lognormal latency with a median that may change."""

    name: str
    median_s: float
    sigma: float
    degraded_median_s: float | None = None

    def median_at(self, t: float, degrade_at: float, recover_at: float) -> float:
        if self.degraded_median_s is not None and degrade_at <= t < recover_at:
            return self.degraded_median_s
        return self.median_s

    def latency(self, t: float, u: float, degrade_at: float, recover_at: float) -> float:
        return self.median_at(t, degrade_at, recover_at) * math.exp(self.sigma * _Z.inv_cdf(u))


UPSTREAMS = (
    Upstream("swift", median_s=0.40, sigma=0.25, degraded_median_s=2.0),
    Upstream("steady", median_s=0.70, sigma=0.25),
    Upstream("budget", median_s=1.40, sigma=0.35),
)

POLICY_YAML = """
providers:
  sim: {{type: openai, base_url: "http://127.0.0.1:9/v1"}}
models:
  swift:  {{provider: sim, model: swift,  price: {{input_per_mtok: 3.0, output_per_mtok: 15.0}}}}
  steady: {{provider: sim, model: steady, price: {{input_per_mtok: 0.5, output_per_mtok: 2.0}}}}
  budget: {{provider: sim, model: budget, price: {{input_per_mtok: 0.1, output_per_mtok: 0.4}}}}
routes:
  priority:       {{strategy: priority, models: [swift, steady, budget]}}
  weighted:       {{strategy: weighted, models: [swift, steady, budget], weights: {{swift: 2, steady: 1, budget: 1}}}}
  lowest_cost:    {{strategy: lowest_cost, models: [swift, steady, budget]}}
  lowest_latency: {{strategy: lowest_latency, models: [swift, steady, budget], explore: {explore}}}
resilience: {{latency_window_s: {window}}}
state: {{sync_interval_s: {sync}}}
"""
STRATEGIES = ("priority", "weighted", "lowest_cost", "lowest_latency")


# ---------------------------------------------------------------- the simulation


@dataclass(frozen=True)
class Scenario:
    rate: float = 40.0
    """Requests per second (Poisson arrivals)."""
    duration_s: float = 120.0
    degrade_at: float = 40.0
    recover_at: float = 80.0
    window_s: float = 60.0
    explore: float = 0.05
    publish_s: float = 0.5
    """state.sync_interval_s: how often the store republishes the Health snapshot routing reads."""
    seed: int = 1


@dataclass(frozen=True)
class Arrival:
    t: float
    draws: dict[str, float]
    """Per model: the quantile of its latency distribution this request would get there."""
    output_tokens: int
    body_bytes: int


@dataclass
class Run:
    strategy: str
    picks: list[tuple[float, str, float, float, bool]] = field(default_factory=list)
    """(arrival time, model, latency s, cost USD, explored) per request."""

    def share(self, name: str, since: float = -math.inf, until: float = math.inf) -> float:
        chosen = [m for t, m, *_ in self.picks if since <= t < until]
        return chosen.count(name) / len(chosen) if chosen else 0.0

    def latency_pct(self, q: float) -> float:
        values = sorted(lat for _, _, lat, _, _ in self.picks)
        return values[min(len(values) - 1, int(q * len(values)))]

    def cost_per_1k(self) -> float:
        return 1000 * sum(c for *_, c, _ in self.picks) / len(self.picks)


def arrivals(s: Scenario) -> list[Arrival]:
    rng = random.Random(s.seed)
    out: list[Arrival] = []
    t = 0.0
    while True:
        t += rng.expovariate(s.rate)
        if t >= s.duration_s:
            return out
        draws = {u.name: min(max(rng.random(), 1e-9), 1 - 1e-9) for u in UPSTREAMS}
        out.append(Arrival(t, draws, output_tokens=rng.randint(80, 300), body_bytes=rng.randint(1500, 6000)))


def simulate(strategy: str, s: Scenario, policy: Policy, requests: list[Arrival]) -> Run:
    """Route every request with the real plan(); feed completions back as Outcomes on the simulated clock."""
    return asyncio.run(_simulate(strategy, s, policy, requests))


async def _simulate(strategy: str, s: Scenario, policy: Policy, requests: list[Arrival]) -> Run:
    rng = random.Random(s.seed * 1_000 + STRATEGIES.index(strategy))
    upstreams = {u.name: u for u in UPSTREAMS}
    clock = _Clock()
    published: list[Health] = [{}]
    store = MemoryStore(lambda: policy, published.append, clock)  # the gateway's own in-memory store
    pending: list[tuple[float, int, Outcome]] = []  # completion time -> Outcome
    next_sync = 0.0
    run = Run(strategy)
    for i, req in enumerate(requests):
        while pending and pending[0][0] <= req.t:
            clock.now, _, outcome = heapq.heappop(pending)
            store(outcome)
        clock.now = req.t
        if req.t >= next_sync:  # the store's background loop republishes every state.sync_interval_s
            await store.sync()
            next_sync = req.t + policy.state.sync_interval_s
        health = published[-1]
        facts = Facts(size=request_size(req.body_bytes, 300))
        decided = plan(policy, strategy, health=health, now=req.t, facts=facts, rand=rng.random)
        name = decided.candidates[0].name
        explored = name != plan(policy, strategy, health=health, now=req.t, facts=facts).candidates[0].name
        latency = upstreams[name].latency(req.t, req.draws[name], s.degrade_at, s.recover_at)
        done = req.t + latency
        heapq.heappush(pending, (done, i, Outcome(strategy, name, ok=True, ttft_s=latency, total_s=latency, at=done)))
        run.picks.append((req.t, name, latency, _cost(policy, name, req), explored and strategy != "weighted"))
    return run


class _Clock:
    """The simulated wall clock the store reads."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def oracle(s: Scenario, policy: Policy, requests: list[Arrival]) -> Run:
    """Always the model whose true median latency is lowest at that instant."""
    run = Run("oracle")
    for req in requests:
        best = min(UPSTREAMS, key=lambda u: u.median_at(req.t, s.degrade_at, s.recover_at))
        latency = best.latency(req.t, req.draws[best.name], s.degrade_at, s.recover_at)
        run.picks.append((req.t, best.name, latency, _cost(policy, best.name, req), False))
    return run


def _cost(policy: Policy, name: str, req: Arrival) -> float:
    prompt = request_size(req.body_bytes, 0).prompt_tokens
    usage = Usage(prompt_tokens=prompt, completion_tokens=req.output_tokens, total_tokens=prompt + req.output_tokens)
    return usage_cost(policy.models[name].price, usage) or 0.0


def shift_time(run: Run, away_from: str, after: float, until: float) -> float | None:
    """Seconds after `after` until the strategy's own first choice (exploration aside) stops being
    `away_from` for good (up to `until`); None if it never does."""
    last = None
    for t, name, *_, explored in run.picks:
        if after <= t < until and name == away_from and not explored:
            last = t
    if last is None:
        return 0.0
    later = [t for t, *_ in run.picks if last < t < until]
    return (later[0] - after) if later else None


def back_time(run: Run, to: str, after: float) -> float | None:
    """Seconds after `after` until `to` is the strategy's own first choice again (None: never)."""
    for t, name, *_, explored in run.picks:
        if t >= after and name == to and not explored:
            return t - after
    return None


# ---------------------------------------------------------------- report


@dataclass
class Report:
    scenario: Scenario
    runs: dict[str, Run]
    shift_s: float | None
    back_s: float | None

    @property
    def p50_vs_oracle(self) -> float:
        return self.runs["lowest_latency"].latency_pct(0.5) / self.runs["oracle"].latency_pct(0.5)

    def passed(self) -> bool:
        return self.p50_vs_oracle <= 1.10 and self.shift_s is not None and self.shift_s <= 5.0

    def table(self) -> str:
        s = self.scenario
        names = [u.name for u in UPSTREAMS]
        head = ["strategy", *(f"share {n}" for n in names), "p50 s", "p99 s", "$ / 1k req", "p50 vs oracle"]
        rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        oracle_p50 = self.runs["oracle"].latency_pct(0.5)
        for key, run in self.runs.items():
            cells = [key, *(f"{run.share(n):.1%}" for n in names)]
            p50 = run.latency_pct(0.5)
            cells += [
                f"{p50:.3f}",
                f"{run.latency_pct(0.99):.3f}",
                f"{run.cost_per_1k():.3f}",
                f"{p50 / oracle_p50:.2f}x",
            ]
            rows.append("| " + " | ".join(cells) + " |")
        ll = self.runs["lowest_latency"]
        degraded = ll.share("swift", s.degrade_at + 5, s.recover_at)
        lines = [
            f"{len(ll.picks)} requests at {s.rate:g}/s over {s.duration_s:g} s (seed {s.seed}); swift's median goes "
            f"0.40 s -> 2.0 s at t={s.degrade_at:g} s and back at t={s.recover_at:g} s; latency window "
            f"{s.window_s:g} s, explore {s.explore:g}, Health republished every {s.publish_s:g} s",
            "",
            *rows,
            "",
            f"lowest_latency shifted away from swift {_secs(self.shift_s)} after it degraded "
            f"(its share from t+5 s until recovery: {degraded:.1%}, exploration included); "
            f"back on swift {_secs(self.back_s)} after it recovered",
            f"bar: lowest_latency p50 within 10% of the oracle's ({self.p50_vs_oracle:.2f}x) and shift <= 5 s: "
            f"{'PASS' if self.passed() else 'FAIL'}",
        ]
        return "\n".join(lines)


def _secs(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def run_all(s: Scenario, strategies: Iterable[str] = STRATEGIES) -> Report:
    policy = parse_policy(POLICY_YAML.format(explore=s.explore, window=s.window_s, sync=s.publish_s), "bench_routing")
    requests = arrivals(s)
    runs = {name: simulate(name, s, policy, requests) for name in strategies}
    runs["oracle"] = oracle(s, policy, requests)
    ll = runs.get("lowest_latency")
    shift = shift_time(ll, "swift", s.degrade_at, s.recover_at) if ll else None
    back = back_time(ll, "swift", s.recover_at) if ll else None
    return Report(s, runs, shift, back)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Scenario()
    parser.add_argument("--rate", type=float, default=d.rate, help=f"requests per second (default {d.rate:g})")
    parser.add_argument("--duration", type=float, default=d.duration_s, help=f"seconds (default {d.duration_s:g})")
    parser.add_argument("--degrade-at", type=float, default=d.degrade_at)
    parser.add_argument("--recover-at", type=float, default=d.recover_at)
    parser.add_argument("--window", type=float, default=d.window_s, help="resilience.latency_window_s")
    parser.add_argument("--explore", type=float, default=d.explore, help="lowest_latency route's explore")
    parser.add_argument("--publish-s", type=float, default=d.publish_s, help="state.sync_interval_s")
    parser.add_argument("--seed", type=int, default=d.seed)
    args = parser.parse_args(argv)
    scenario = Scenario(
        rate=args.rate,
        duration_s=args.duration,
        degrade_at=args.degrade_at,
        recover_at=args.recover_at,
        window_s=args.window,
        explore=args.explore,
        publish_s=args.publish_s,
        seed=args.seed,
    )
    started = time.perf_counter()
    report = run_all(scenario)
    print(report.table())
    print(f"\n(simulated in {time.perf_counter() - started:.1f} s of wall time)")
    return 0 if report.passed() else 1


if __name__ == "__main__":
    sys.exit(main())

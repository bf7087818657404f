"""A tiny run of the routing simulation (tests/bench/bench_routing.py): lowest_latency moves traffic off a
model that degrades, and back once it recovers. Real plan() and the real in-memory state store on a simulated
clock: deterministic for the seed, no wall time."""

from tests.bench.bench_routing import Scenario, run_all


def test_lowest_latency_shifts_away_from_a_degraded_model_and_comes_back():
    scenario = Scenario(rate=20, duration_s=40, degrade_at=10, recover_at=25, window_s=5, seed=3)
    report = run_all(scenario, strategies=("lowest_latency", "priority"))
    ll, prio = report.runs["lowest_latency"], report.runs["priority"]
    assert ll.share("swift", until=scenario.degrade_at) > 0.9  # the fastest model takes the traffic first
    assert report.shift_s is not None and report.shift_s <= 5.0  # simulated seconds
    assert ll.share("swift", since=scenario.degrade_at + 5, until=scenario.recover_at) < 0.1  # exploration only
    assert prio.share("swift", since=scenario.degrade_at + 5, until=scenario.recover_at) == 1.0  # priority stays
    assert report.back_s is not None  # exploration measured swift again after it recovered
    assert ll.share("swift", since=scenario.recover_at + 10) > 0.9
    assert ll.latency_pct(0.99) < prio.latency_pct(0.99)

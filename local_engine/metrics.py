"""vLLM's Prometheus /metrics text -> the load figures routing uses. Pure: text in, numbers out."""

import math
from dataclasses import dataclass

WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
KV_CACHE = "vllm:kv_cache_usage_perc"
_WANTED = (WAITING, RUNNING, KV_CACHE)


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """One scrape. None means the engine did not report that gauge."""

    waiting: float | None
    """Requests queued for a slot (summed over label sets: engines, models)."""
    running: float | None
    """Requests being generated (summed over label sets)."""
    kv_cache_usage: float | None
    """KV-cache use as a fraction, 0..1 (the fullest engine when there are several)."""


def parse_metrics(text: str) -> EngineLoad:
    """Read the three gauges from Prometheus text exposition format.

    Counts are summed across label sets (one per engine with data parallelism); the KV-cache
    fraction takes the maximum, since a sum of fractions means nothing. Families with a longer
    name (`vllm:num_requests_waiting_by_reason`) are not confused with the gauge itself. NaN and
    malformed samples are ignored.
    """
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name, value = _sample(line)
        if name not in _WANTED or value is None:
            continue
        previous = sums.get(name)
        if previous is None:
            sums[name] = value
        else:
            sums[name] = max(previous, value) if name == KV_CACHE else previous + value
    return EngineLoad(waiting=sums.get(WAITING), running=sums.get(RUNNING), kv_cache_usage=sums.get(KV_CACHE))


def _sample(line: str) -> tuple[str, float | None]:
    """`name{labels} value [timestamp]` -> (name, value)."""
    brace = line.find("{")
    if brace >= 0:
        name = line[:brace]
        close = line.rfind("}")
        rest = line[close + 1 :] if close > brace else ""
    else:
        name, _, rest = line.partition(" ")
    fields = rest.split()
    if not fields:
        return name, None
    try:
        value = float(fields[0])
    except ValueError:
        return name, None
    return name, None if math.isnan(value) else value

"""Recent latency and error statistics of each deployment, from Outcomes. Pure: time is an input.

Observations are counted into time slices (`Tally`, one per deployment and slice of `slice_s(window)`
seconds). A tally is a bag of counters that merges by adding, so replicas can sum theirs in a shared
store (one Redis hash per slice, HINCRBY) and any replica reads the fleet's window. Latencies go into
logarithmic bins (each about 5 % wide), so percentiles are exact to within half a bin whatever the
traffic, and a tally stays a few dozen counters however many requests it holds.

What the ModelHealth fields mean (over the slices that cover the last `latency_window_s`):
- samples: successful attempts (each has a time to first token);
- ttft_p50_s / ttft_p95_s: time to first token of successful attempts; for a stream the commit point
  (first chunk with content), for a unary call the whole call;
- total_p50_s / total_p95_s: whole answers: unary calls, and streams that ended normally;
- tokens_per_s: output tokens over seconds, summed over whole answers that reported usage;
- error_rate: failed attempts (the breaker's failures: 5xx, timeouts, connection errors, cut streams)
  over all attempts; 4xx about the request and 429s are not errors of the deployment.
"""

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from policies.breaker import verdict
from policies.health import Outcome

BIN_BASE_S = 0.001
BIN_GROWTH = 1.05
_LOG_GROWTH = math.log(BIN_GROWTH)
SLICES_PER_WINDOW = 30
RECENT_SAMPLES = 8
"""Statistics read the NEWEST slices first and stop once they hold this many successful attempts: a
busy deployment is judged on its last seconds (so a slowdown shows within a few seconds), a quiet one
on up to the whole window."""


def slice_s(window_s: float) -> int:
    """Length of one time slice: about a twelfth of the window, whole seconds (so replicas agree)."""
    return max(1, math.ceil(window_s / SLICES_PER_WINDOW))


def slice_index(at: float, length: int) -> int:
    return int(at // length)


def window_slices(now: float, window_s: float) -> range:
    """The slice indexes that cover the last `window_s` (the oldest may reach a little further back)."""
    length = slice_s(window_s)
    return range(slice_index(now - window_s, length), slice_index(now, length) + 1)


def bin_of(seconds: float) -> int:
    if seconds <= BIN_BASE_S:
        return 0
    return int(math.log(seconds / BIN_BASE_S) / _LOG_GROWTH)


def bin_value(index: int) -> float:
    """A bin's representative latency: its geometric middle."""
    return BIN_BASE_S * BIN_GROWTH ** (index + 0.5)


@dataclass(slots=True)
class Tally:
    """Counters of one deployment over one time slice. Merge by adding; encode as flat counters."""

    attempts: int = 0
    failures: int = 0
    ttft: dict[int, int] = field(default_factory=dict)
    total: dict[int, int] = field(default_factory=dict)
    tokens: int = 0
    token_seconds: float = 0.0

    def add(self, outcome: Outcome) -> None:
        v = verdict(outcome)
        if outcome.phase == "attempt":
            self.attempts += 1
            if outcome.ok and outcome.ttft_s is not None:
                _bump(self.ttft, bin_of(outcome.ttft_s))
        if v == "failure":
            self.failures += 1
        if outcome.ok and outcome.total_s is not None:
            _bump(self.total, bin_of(outcome.total_s))
            if outcome.output_tokens and outcome.total_s > 0:
                self.tokens += outcome.output_tokens
                self.token_seconds += outcome.total_s

    def merge(self, other: "Tally") -> None:
        self.attempts += other.attempts
        self.failures += other.failures
        for index, n in other.ttft.items():
            _bump(self.ttft, index, n)
        for index, n in other.total.items():
            _bump(self.total, index, n)
        self.tokens += other.tokens
        self.token_seconds += other.token_seconds

    def counters(self) -> dict[str, float]:
        """Flat field -> increment (the layout of one Redis hash)."""
        out: dict[str, float] = {}
        if self.attempts:
            out["a"] = self.attempts
        if self.failures:
            out["f"] = self.failures
        for index, n in self.ttft.items():
            out[f"t{index}"] = n
        for index, n in self.total.items():
            out[f"T{index}"] = n
        if self.tokens:
            out["k"] = self.tokens
            out["s"] = self.token_seconds
        return out

    @classmethod
    def from_counters(cls, counters: Mapping[str, str | bytes | float]) -> "Tally":
        tally = cls()
        for raw_name, raw in counters.items():
            name = raw_name.decode() if isinstance(raw_name, bytes) else raw_name
            try:
                value = float(raw)
            except (TypeError, ValueError):
                continue
            head, rest = name[:1], name[1:]
            if name == "a":
                tally.attempts = int(value)
            elif name == "f":
                tally.failures = int(value)
            elif name == "k":
                tally.tokens = int(value)
            elif name == "s":
                tally.token_seconds = value
            elif head in ("t", "T") and rest.isdigit():
                (tally.ttft if head == "t" else tally.total)[int(rest)] = int(value)
        return tally


def _bump(bins: dict[int, int], index: int, n: int = 1) -> None:
    bins[index] = bins.get(index, 0) + n


@dataclass(frozen=True, slots=True)
class Summary:
    samples: int = 0
    ttft_p50_s: float | None = None
    ttft_p95_s: float | None = None
    total_p50_s: float | None = None
    total_p95_s: float | None = None
    tokens_per_s: float | None = None
    error_rate: float | None = None


def summarize(tallies: Iterable[Tally], enough: int = RECENT_SAMPLES) -> Summary:
    """The statistics of one deployment's window, its tallies given OLDEST FIRST: merged from the newest
    back until they hold `enough` successful attempts (or the window ends)."""
    merged = Tally()
    for tally in reversed(list(tallies)):
        merged.merge(tally)
        if sum(merged.ttft.values()) >= enough:
            break
    samples = sum(merged.ttft.values())
    return Summary(
        samples=samples,
        ttft_p50_s=percentile(merged.ttft, 0.50),
        ttft_p95_s=percentile(merged.ttft, 0.95),
        total_p50_s=percentile(merged.total, 0.50),
        total_p95_s=percentile(merged.total, 0.95),
        tokens_per_s=merged.tokens / merged.token_seconds if merged.tokens and merged.token_seconds > 0 else None,
        error_rate=merged.failures / merged.attempts if merged.attempts else None,
    )


def percentile(bins: Mapping[int, int], q: float) -> float | None:
    """Nearest-rank percentile of binned values (None without values)."""
    n = sum(bins.values())
    if n == 0:
        return None
    rank = max(1, math.ceil(q * n))
    seen = 0
    for index in sorted(bins):
        seen += bins[index]
        if seen >= rank:
            return bin_value(index)
    return bin_value(max(bins))

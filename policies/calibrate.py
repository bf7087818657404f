"""Calibration of a cascade gate's `min_score` from logged answers. Pure: no I/O, no clock.

Each `CalibrationRecord` is one request the gate judged, with a label saying whether the gated
rung's answer was good enough: `correct` (a task checker or judge) or, in shadow mode, `agree` (the
local answer matched the last rung's). `fit_threshold` picks the lowest-cost threshold whose quality
loss against always escalating stays under the target at an upper confidence bound: with a few
hundred records the point estimate misses the target in about half the cases (routing.md 3.2).

The default bound is the score (Tango) bound on a paired difference: the loss is the share of
requests where the accepted answer was wrong and the last rung's right, minus the share where it was
the other way round, and its variance is taken where the loss would sit at the bound, not where it
was observed. A loss made of a handful of wrong answers (the usual case: an accepted set is mostly
right) has an observed variance that is too small, which is why a bootstrap or Wald bound there
certifies thresholds it should not; the percentile bootstrap is kept as `bound="bootstrap"`.
"""

import itertools
import math
import random
import statistics
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec


class CalibrationRecord(msgspec.Struct, kw_only=True):
    """One gated request, a line of the shadow log (JSONL)."""

    route: str
    score: float | None
    """The gate's score of the gated rung's answer (None: it had no logprobs)."""
    correct: bool | None = None
    """The gated answer was right (task checker, judge, human label); None: not known."""
    agree: bool | None = None
    """Shadow mode: the gated answer agreed with the last rung's answer (`agreement`)."""
    cost_small: float = 0.0
    """USD the gated rung cost."""
    cost_large: float = 0.0
    """USD the last rung cost (or would have)."""
    features: dict[str, float] = {}
    request_id: str = ""
    at: float = 0.0
    """Unix time of the request."""
    correct_large: bool | None = None
    """The last rung's answer was right; None: counted as right."""
    weight: float = 1.0
    """How many requests this record stands for: 1 / the rate it was sampled at (shadow.rate)."""
    failed: list[str] = []
    """Checks the answer failed (not "score"): it escalates whatever the threshold."""

    def loss_if_accepted(self) -> int | None:
        """Quality lost by returning the gated answer instead of escalating: 1, 0, -1 (a gain), or
        None when the record has no label."""
        if self.correct is not None:
            large = True if self.correct_large is None else self.correct_large
            return int(large) - int(self.correct)
        if self.agree is not None:
            return 0 if self.agree else 1
        return None


# ---------------------------------------------------------------- agreement (shadow labels)

Answer = tuple[str | None, Sequence[tuple[str, str]]]
"""(content, tool calls as (function name, arguments JSON text)) of one answer."""


def agreement(local: Answer, reference: Answer) -> bool:
    """Do two answers say the same thing? Tool calls: the same calls (name and argument JSON value),
    order ignored. Otherwise: equal JSON values when both texts are JSON, else equal text after
    normalisation (Unicode NFKC, case, runs of whitespace, trailing full stop or exclamation mark)."""
    local_text, local_calls = local
    ref_text, ref_calls = reference
    if local_calls or ref_calls:
        return Counter(map(_canonical_call, local_calls)) == Counter(map(_canonical_call, ref_calls))
    a, b = _json_value(local_text), _json_value(ref_text)
    if a is not _NOT_JSON and b is not _NOT_JSON:
        return bool(a == b)
    return _normal(local_text) == _normal(ref_text)


_NOT_JSON: Any = object()


def _canon(value: Any) -> Any:
    """A hashable, order-free form of a JSON value in which true != 1 (Python's bool is an int)."""
    if isinstance(value, bool) or value is None:
        return ("const", value)
    if isinstance(value, int | float):
        return ("num", float(value))
    if isinstance(value, str):
        return ("str", value)
    if isinstance(value, list):
        return ("list", tuple(_canon(v) for v in value))
    return ("obj", frozenset((k, _canon(v)) for k, v in value.items()))


def _json_value(text: str | None) -> Any:
    stripped = (text or "").strip()
    if not stripped:
        return _NOT_JSON
    try:
        return _canon(msgspec.json.decode(stripped))
    except msgspec.DecodeError:
        return _NOT_JSON


def _canonical_call(call: tuple[str, str]) -> tuple[str, Any]:
    name, arguments = call
    args = _json_value(arguments) if arguments.strip() else _canon({})
    return name, (args if args is not _NOT_JSON else ("text", arguments.strip()))


def _normal(text: str | None) -> str:
    folded = unicodedata.normalize("NFKC", text or "").casefold()
    return " ".join(folded.split()).rstrip(".!\u3002")


# ---------------------------------------------------------------- the trade-off


@dataclass(frozen=True, slots=True)
class Point:
    """The cascade at one threshold, on a set of records."""

    threshold: float | None
    """min_score (accept when score >= it); None: accept nothing (always escalate)."""
    escalation_rate: float
    cost_rel: float | None
    """Cost relative to always escalating (small + escalated large over large); None without costs."""
    loss: float
    """Quality lost against always escalating (share of requests, weighted)."""


@dataclass(frozen=True, slots=True)
class Fit:
    threshold: float | None
    """min_score to set; None: no threshold meets the target (escalate everything)."""
    escalation_rate: float
    cost_rel: float | None
    loss: float
    """Point estimate of the quality loss on the records."""
    loss_upper: float
    """Upper confidence bound of the loss at `confidence`."""
    n: int
    """Labelled records used."""
    unlabelled: int
    target_loss: float
    confidence: float
    bootstrap: int
    """Resamples of the bootstrap bound (0 with the score bound)."""
    bound: str = "score"
    """"score" (Tango's score bound on the paired loss) or "bootstrap" (percentile bootstrap)."""


BOUNDS = ("score", "bootstrap")


@dataclass(frozen=True, slots=True)
class _Table:
    """Labelled records sorted by score, highest first, the never-accepted ones last; prefix sums."""

    scores: tuple[float, ...]
    """Scores of the records a threshold can accept, descending."""
    losses: tuple[int, ...]
    weights: tuple[float, ...]
    accepted_weight: tuple[float, ...]
    """[k]: weight of the first k records (accepted at the k-th cut); likewise the next two."""
    accepted_loss: tuple[float, ...]
    saved_large: tuple[float, ...]
    cost_small: float
    unlabelled: int

    @property
    def total_weight(self) -> float:
        return self.accepted_weight[-1]

    @property
    def total_large(self) -> float:
        return self.saved_large[-1]


def _table(records: Sequence[CalibrationRecord]) -> _Table:
    labelled = [(r, d) for r in records if (d := r.loss_if_accepted()) is not None and r.weight > 0]
    labelled.sort(key=lambda item: _rank(item[0]), reverse=True)
    scores = tuple(s for r, _ in labelled if (s := _rank(r)) > -math.inf)
    return _Table(
        scores=scores,
        losses=tuple(d for _, d in labelled),
        weights=tuple(r.weight for r, _ in labelled),
        accepted_weight=(0.0, *itertools.accumulate(r.weight for r, _ in labelled)),
        accepted_loss=(0.0, *itertools.accumulate(r.weight * d for r, d in labelled)),
        saved_large=(0.0, *itertools.accumulate(r.weight * r.cost_large for r, _ in labelled)),
        cost_small=sum(r.weight * r.cost_small for r, _ in labelled),
        unlabelled=len(records) - len(labelled),
    )


def _rank(record: CalibrationRecord) -> float:
    """The record's score; -inf when it escalates at any threshold (no score, or a failed check)."""
    if record.score is None or math.isnan(record.score) or any(f != "score" for f in record.failed):
        return -math.inf
    return record.score


def _cuts(table: _Table, limit: int) -> list[int]:
    """Numbers of accepted records (a prefix of the table) at which the threshold can sit: 0, and
    every end of a run of equal scores; at most about `limit` of them, evenly spread."""
    s = table.scores
    ends = [k for k in range(1, len(s) + 1) if k == len(s) or s[k] < s[k - 1]]
    if len(ends) > limit:
        step = len(ends) / limit
        ends = sorted({ends[min(len(ends) - 1, round(i * step))] for i in range(limit)} | {ends[-1]})
    return [0, *ends]


def _point(table: _Table, k: int, threshold: float | None) -> Point:
    total = table.total_weight or 1.0
    cost_rel = None
    if table.total_large > 0:
        cost_rel = (table.cost_small + table.total_large - table.saved_large[k]) / table.total_large
    return Point(threshold, 1.0 - table.accepted_weight[k] / total, cost_rel, table.accepted_loss[k] / total)


def _threshold(table: _Table, k: int) -> float | None:
    """A short decimal that accepts exactly the first k records: in (score k, score k-1]."""
    if k == 0:
        return None
    high = table.scores[k - 1]
    low = table.scores[k] if k < len(table.scores) else max(0.0, high - 0.01)
    for digits in range(1, 7):
        value = math.floor(high * 10**digits) / 10**digits
        if value > low or (k == len(table.scores) and value >= low):
            return value
    return high


def tradeoff(records: Sequence[CalibrationRecord], *, limit: int = 500) -> list[Point]:
    """The cost-quality curve: one Point per candidate threshold, from accepting nothing to
    accepting every answer that passed its checks."""
    table = _table(records)
    return [_point(table, k, _threshold(table, k)) for k in _cuts(table, limit)]


def evaluate(records: Sequence[CalibrationRecord], threshold: float | None) -> Point:
    """The cascade with `min_score = threshold` (None: always escalate) on `records`."""
    table = _table(records)
    k = 0 if threshold is None else sum(s >= threshold for s in table.scores)
    return _point(table, k, threshold)


def fit_threshold(
    records: Sequence[CalibrationRecord],
    target_loss: float,
    *,
    confidence: float = 0.9,
    bound: str = "score",
    bootstrap: int = 1000,
    seed: int = 0,
    limit: int = 500,
) -> Fit:
    """The lowest-cost min_score whose quality loss vs always escalating stays <= target_loss at the
    `confidence` upper bound (`bound`: "score", Tango's bound on the paired loss; "bootstrap", the
    percentile bootstrap over `bootstrap` resamples drawn with `seed`, 0 resamples: the point estimate).

    Thresholds are tested from the strictest (accept nothing, loss 0) down, and the search stops at
    the first one whose upper bound exceeds the target (fixed-sequence testing, as in Learn-then-Test:
    each threshold is a test of "its loss exceeds the target" at level 1 - confidence, and no
    threshold past a failing one is trusted, which keeps lucky dips of a noisy curve out).
    """
    if not 0 < confidence < 1:
        raise ValueError("confidence must be between 0 and 1")
    if bound not in BOUNDS:
        raise ValueError(f"bound must be one of {', '.join(BOUNDS)}")
    table = _table(records)
    cuts = _cuts(table, limit)
    if bound == "score":
        passes = _score_passes(table, cuts, target_loss, confidence)
        chosen = 0
        while chosen + 1 < len(cuts) and passes[chosen + 1]:
            chosen += 1
        upper = _score_upper(table, cuts[chosen], confidence)
        bootstrap = 0
    else:
        uppers = _upper_bounds(table, cuts, bootstrap, confidence, random.Random(seed))  # noqa: S311 - resampling, not secrets
        chosen = 0
        while chosen + 1 < len(cuts) and uppers[chosen + 1] <= target_loss:
            chosen += 1
        upper = uppers[chosen]
    k = cuts[chosen]
    point = _point(table, k, _threshold(table, k))
    return Fit(
        threshold=point.threshold,
        escalation_rate=point.escalation_rate,
        cost_rel=point.cost_rel,
        loss=point.loss,
        loss_upper=upper,
        n=len(table.losses),
        unlabelled=table.unlabelled,
        target_loss=target_loss,
        confidence=confidence,
        bootstrap=bootstrap,
        bound=bound,
    )


# ---------------------------------------------------------------- the score bound


@dataclass(frozen=True, slots=True)
class PairedCounts:
    """The accepted records at one threshold, as a paired comparison with always escalating."""

    worse: float
    """(Effective) requests whose accepted answer was worse than the last rung's (loss 1)."""
    better: float
    """Requests whose accepted answer was better (loss -1)."""
    n: float
    """Effective number of requests, accepted or not (Kish: (sum w)^2 / sum w^2; n when unweighted)."""


def paired_counts(table: _Table, k: int) -> PairedCounts:
    """The first k records of `table` accepted. Weights are rescaled to the effective sample size, so
    records sampled at a rate (weight 1 / rate) count as what they are: one observation each."""
    total = table.total_weight
    squares = sum(w * w for w in table.weights)
    if total <= 0 or squares <= 0:
        return PairedCounts(0.0, 0.0, 0.0)
    scale = total / squares  # w * scale sums to (sum w)^2 / sum w^2
    worse = better = 0.0
    for w, d in zip(table.weights[:k], table.losses[:k], strict=True):
        if d > 0:
            worse += w * scale
        elif d < 0:
            better += w * scale
    return PairedCounts(worse, better, total * scale)


def score_statistic(counts: PairedCounts, delta: float) -> float:
    """Tango's score statistic for "the paired loss (worse - better) / n equals delta": the observed
    loss minus delta over its standard error at the restricted maximum-likelihood cell probabilities
    (Tango 1998, Stat Med 17:891). Negative: the loss is below delta. Strictly decreasing in delta."""
    b, c, n = counts.worse, counts.better, counts.n
    if n <= 0:
        return 0.0
    if delta < 0:  # the same test with the two discordant cells swapped
        return -score_statistic(PairedCounts(c, b, n), -delta)
    # restricted MLE of P(better) given P(worse) - P(better) = delta: root of 2n p^2 + B p + C = 0
    quad_b = (2 * n - b + c) * delta - (b + c)
    quad_c = -c * delta * (1 - delta)
    p_better = (-quad_b + math.sqrt(max(0.0, quad_b * quad_b - 8 * n * quad_c))) / (4 * n)
    variance = (2 * p_better + delta - delta * delta) / n
    if variance <= 0:
        return -math.inf if (b - c) / n < delta else math.inf if (b - c) / n > delta else 0.0
    return ((b - c) / n - delta) / math.sqrt(variance)


def score_upper(counts: PairedCounts, confidence: float) -> float:
    """One-sided `confidence` upper bound of the paired loss: the delta at which the score statistic
    falls to -z (the bound's inversion, by bisection)."""
    if counts.n <= 0:
        return 0.0
    z = _z(confidence)
    low, high = (counts.worse - counts.better) / counts.n, 1.0
    if score_statistic(counts, high) > -z:
        return high
    for _ in range(60):
        mid = (low + high) / 2
        if score_statistic(counts, mid) > -z:
            low = mid
        else:
            high = mid
    return high


def _z(confidence: float) -> float:
    return statistics.NormalDist().inv_cdf(confidence)


def _score_passes(table: _Table, cuts: list[int], target: float, confidence: float) -> list[bool]:
    """Per cut: does the score test reject "loss >= target" at level 1 - confidence? (The upper
    bound is <= target exactly then; testing at the target avoids a bisection per cut.)"""
    z = _z(confidence)
    total = table.total_weight
    squares = sum(w * w for w in table.weights)
    if total <= 0 or squares <= 0:
        return [True] + [False] * (len(cuts) - 1)
    scale = total / squares
    n = total * scale
    out, worse, better, j = [], 0.0, 0.0, 0
    for k in cuts:
        while j < k:
            d = table.losses[j]
            if d > 0:
                worse += table.weights[j] * scale
            elif d < 0:
                better += table.weights[j] * scale
            j += 1
        out.append(k == 0 or score_statistic(PairedCounts(worse, better, n), target) <= -z)
    return out


def _score_upper(table: _Table, k: int, confidence: float) -> float:
    return 0.0 if k == 0 else score_upper(paired_counts(table, k), confidence)


# ---------------------------------------------------------------- the bootstrap bound


def _upper_bounds(table: _Table, cuts: list[int], rounds: int, confidence: float, rng: random.Random) -> list[float]:
    """Per cut, the `confidence` quantile of the loss over `rounds` bootstrap resamples of the
    records (rounds 0: the point estimate). Only records whose loss is not 0 move the numerator."""
    n = len(table.losses)
    if rounds <= 0 or n == 0:
        return [_point(table, k, None).loss for k in cuts]
    moving = [i for i, d in enumerate(table.losses) if d]
    samples: list[list[float]] = [[] for _ in cuts]
    population = range(n)
    uniform = all(w == 1.0 for w in table.weights)
    for _ in range(rounds):
        counts = Counter(rng.choices(population, k=n))
        total = (n if uniform else sum(table.weights[i] * c for i, c in counts.items())) or 1.0
        loss, j = 0.0, 0
        for slot, k in enumerate(cuts):
            while j < len(moving) and moving[j] < k:
                i = moving[j]
                loss += counts.get(i, 0) * table.weights[i] * table.losses[i]
                j += 1
            samples[slot].append(loss / total)
    at = min(rounds - 1, max(0, math.ceil(confidence * rounds) - 1))
    return [sorted(values)[at] for values in samples]

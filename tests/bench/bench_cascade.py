"""Replay benchmark of the confidence-gated cascade on recorded multi-model outcomes.

For each dataset and (small -> large) pair of the routing replay data (shared/routing-data, see its
README: evaluation only, never copied into this repository), every query becomes one
`CalibrationRecord`: the small model's recorded confidence mapped through the gate's own score
(`score(features((confidence,), ()))`, i.e. exp(confidence): the probability of the answer token for
MMLU, P(True) for TriviaQA/GSM8K), both models' correctness and costs. Then:

- the cost-quality curve over every threshold (`policies.calibrate.tradeoff`);
- baselines: always-small, always-large, random escalation at the calibrated rate, the oracle
  (escalate exactly when the small model is wrong);
- 20 random splits: `fit_threshold` (the code `escalade calibrate` runs, by default the score bound
  at 90%; `--bound bootstrap --confidence 0.95` is the previous default) on one part, the chosen
  min_score evaluated on the other; cost relative to always-large, realised loss, and how often the
  realised loss exceeded the target.

Costs follow the data README: the small model is charged `cost_usd` (which includes the P(True)
self-check call where one was used), an escalation `cost_answer_call_usd` of the large model.
RouteLLM rows carry no confidence and are skipped.

    python tests/bench/bench_cascade.py                       # all datasets and pairs, 20 splits
    python tests/bench/bench_cascade.py --datasets mmlu --pairs gpt-4o-mini:gpt-4o --splits 5
"""

import argparse
import gzip
import json
import math
import os
import random
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from policies.calibrate import BOUNDS, CalibrationRecord, Point, evaluate, fit_threshold, tradeoff  # noqa: E402
from policies.gate import features, score  # noqa: E402

DATA_FILE = "cascade-replay.jsonl.gz"
DATASETS = ("mmlu", "triviaqa", "gsm8k")
PAIRS = (
    ("gpt-4o-mini", "gpt-4o"),
    ("llama3.1-8b", "llama3.1-405b"),
    ("llama3.1-70b", "llama3.1-405b"),
    ("llama3.2-3b", "llama3.1-70b"),
    ("gpt-4o-mini", "qwen2.5-72b-instruct"),
    ("qwen2.5-72b-instruct", "gpt-4o"),
)
BAR = {"dataset": "mmlu", "pair": ("gpt-4o-mini", "gpt-4o"), "max_cost_rel": 0.55, "max_missed": 2}


def data_dir() -> Path | None:
    """$ESCALADE_ROUTING_DATA, else <repo>/../shared/routing-data; None when the data is absent."""
    env = os.environ.get("ESCALADE_ROUTING_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "routing-data"
    return path if (path / DATA_FILE).is_file() else None


def load_rows(path: Path) -> list[dict]:
    with gzip.open(path / DATA_FILE, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def replay_score(confidence: float | None, kind: str | None) -> float | None:
    """The gate's score of a recorded scalar confidence (a natural-log probability): fed to the gate's
    features/score as a one-token answer, so score = exp(confidence). A null confidence with a kind
    means log 0 (README): score 0."""
    if kind is None:
        return None
    logprob = -math.inf if confidence is None else confidence
    return score(features((logprob,), ()))


@dataclass(frozen=True, slots=True)
class Query:
    record: CalibrationRecord
    small_ok: bool
    large_ok: bool


def pair_queries(rows: Iterable[dict], dataset: str, small: str, large: str) -> list[Query]:
    """One Query per qid of `dataset` that both models answered, with a confidence and costs."""
    by_qid: dict[str, dict[str, dict]] = defaultdict(dict)
    for row in rows:
        if row["dataset"] == dataset and row["model"] in (small, large):
            by_qid[row["qid"]][row["model"]] = row
    queries = []
    for qid in sorted(by_qid):
        s, g = by_qid[qid].get(small), by_qid[qid].get(large)
        if s is None or g is None or s["correct"] is None or g["correct"] is None or s["confidence_kind"] is None:
            continue
        record = CalibrationRecord(
            route=f"{dataset}:{small}->{large}",
            score=replay_score(s["confidence"], s["confidence_kind"]),
            correct=s["correct"],
            correct_large=g["correct"],
            cost_small=s["cost_usd"] or 0.0,
            cost_large=g["cost_answer_call_usd"] or 0.0,
            request_id=qid,
        )
        queries.append(Query(record, s["correct"], g["correct"]))
    return queries


@dataclass(frozen=True, slots=True)
class SplitResult:
    threshold: float | None
    cal: Point
    test: Point
    loss_upper: float


@dataclass(frozen=True, slots=True)
class Result:
    dataset: str
    small: str
    large: str
    n: int
    acc_small: float
    acc_large: float
    auroc: float | None
    small_cost_rel: float
    oracle_cost_rel: float
    oracle_escalation: float
    best_cost_rel: float | None
    """In-sample: the cheapest point of the full-data curve within the target."""
    curve: tuple[Point, ...]
    splits: tuple[SplitResult, ...]
    target: float

    @property
    def missed(self) -> int:
        return sum(s.test.loss > self.target + 1e-12 for s in self.splits)

    def mean(self, attr: str) -> float:
        values = [getattr(s.test, attr) for s in self.splits]
        return sum(values) / len(values)

    def random_loss(self) -> float:
        """Expected loss of random escalation at the calibrated mean escalation rate."""
        return (1 - self.mean("escalation_rate")) * (self.acc_large - self.acc_small)


def auroc(scores: Sequence[float | None], labels: Sequence[bool]) -> float | None:
    """P(score of a right answer > score of a wrong one), ties counted half; None scores lowest."""
    pos = [s if s is not None else -math.inf for s, y in zip(scores, labels, strict=True) if y]
    neg = [s if s is not None else -math.inf for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return None
    ranked = sorted([(s, 1) for s in pos] + [(s, 0) for s in neg])
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        mid = (i + j + 1) / 2  # average 1-based rank of the tie block
        rank_sum += mid * sum(flag for _, flag in ranked[i:j])
        i = j
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def replay_pair(
    queries: Sequence[Query],
    *,
    dataset: str,
    small: str,
    large: str,
    splits: int = 20,
    cal_fraction: float = 0.5,
    target: float = 0.01,
    bootstrap: int = 1000,
    confidence: float = 0.9,
    bound: str = "score",
    seed: int = 0,
) -> Result:
    records = [q.record for q in queries]
    n = len(queries)
    large_cost = sum(r.cost_large for r in records)
    curve = tuple(tradeoff(records))
    within = [p.cost_rel for p in curve if p.loss <= target + 1e-12 and p.cost_rel is not None]
    results = []
    for i in range(splits):
        order = list(range(n))
        random.Random(seed * 1_000_003 + i).shuffle(order)
        cut = round(n * cal_fraction)
        cal = [records[j] for j in order[:cut]]
        test = [records[j] for j in order[cut:]]
        fit = fit_threshold(cal, target, bootstrap=bootstrap, confidence=confidence, bound=bound, seed=seed + i)
        results.append(
            SplitResult(fit.threshold, evaluate(cal, fit.threshold), evaluate(test, fit.threshold), fit.loss_upper)
        )
    wrong = [r for r, q in zip(records, queries, strict=True) if not q.small_ok]
    return Result(
        dataset=dataset,
        small=small,
        large=large,
        n=n,
        acc_small=sum(q.small_ok for q in queries) / n,
        acc_large=sum(q.large_ok for q in queries) / n,
        auroc=auroc([r.score for r in records], [q.small_ok for q in queries]),
        small_cost_rel=sum(r.cost_small for r in records) / large_cost,
        oracle_cost_rel=(sum(r.cost_small for r in records) + sum(r.cost_large for r in wrong)) / large_cost,
        oracle_escalation=len(wrong) / n,
        best_cost_rel=min(within) if within else None,
        curve=curve,
        splits=tuple(results),
        target=target,
    )


def replay(rows: Sequence[dict], datasets: Iterable[str], pairs: Iterable[tuple[str, str]], **kw) -> list[Result]:
    results = []
    for dataset in datasets:
        for small, large in pairs:
            queries = pair_queries(rows, dataset, small, large)
            if queries:
                results.append(replay_pair(queries, dataset=dataset, small=small, large=large, **kw))
    return results


# ---------------------------------------------------------------- report


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _pp(x: float) -> str:
    return f"{100 * x:+.2f}"


def summary_table(results: Sequence[Result]) -> str:
    head = (
        "| dataset | small -> large | n | acc small / large | AUROC | always-small cost | calibrated cost "
        "(min-max) | escalated | realised loss pp (max) | random @ same rate, loss pp | oracle cost | in-sample "
        "best cost | missed |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in results:
        costs = [s.test.cost_rel or 0.0 for s in r.splits]
        losses = [s.test.loss for s in r.splits]
        lines.append(
            f"| {r.dataset} | {r.small} -> {r.large} | {r.n} | {r.acc_small:.3f} / {r.acc_large:.3f} | "
            f"{r.auroc:.3f} | {_pct(r.small_cost_rel)} | **{_pct(r.mean('cost_rel'))}** "
            f"({_pct(min(costs))}-{_pct(max(costs))}) | {_pct(r.mean('escalation_rate'))} | "
            f"{_pp(r.mean('loss'))} ({_pp(max(losses))}) | {_pp(r.random_loss())} | {_pct(r.oracle_cost_rel)} | "
            f"{_pct(r.best_cost_rel)} | {r.missed}/{len(r.splits)} |"
        )
    return "\n".join(lines)


def curve_table(result: Result, rates: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)) -> str:
    """The full-data cost-quality curve at a few escalation rates (closest threshold)."""
    lines = [
        f"cost-quality curve, {result.dataset} {result.small} -> {result.large} (all {result.n} queries):",
        "",
        "| escalated | min_score | accuracy | loss vs always-large, pp | cost vs always-large |",
        "|---|---|---|---|---|",
    ]
    for p in dict.fromkeys(min(result.curve, key=lambda p: abs(p.escalation_rate - rate)) for rate in rates):
        threshold = "-" if p.threshold is None else f"{p.threshold:g}"
        lines.append(
            f"| {_pct(p.escalation_rate)} | {threshold} | {result.acc_large - p.loss:.3f} | {_pp(p.loss)} | "
            f"{_pct(p.cost_rel)} |"
        )
    return "\n".join(lines)


def is_bar(result: Result) -> bool:
    return result.dataset == BAR["dataset"] and (result.small, result.large) == BAR["pair"]


def bar_verdict(result: Result) -> str:
    cost = result.mean("cost_rel")
    ok = cost <= BAR["max_cost_rel"] and result.missed <= BAR["max_missed"]
    return f"{'PASS' if ok else 'FAIL'} ({100 * cost:.1f}%, missed {result.missed}/{len(result.splits)})"


def sweep_table(runs: Sequence[tuple[str, float, float, Result]]) -> str:
    """The bar pair at several calibration settings: (bound, confidence, share calibrated on, result)."""
    lines = [
        "| bound | confidence | calibrate on | calibrated cost (min-max) | escalated | realised loss pp (max) | missed "
        "| bar |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for bound, confidence, fraction, r in runs:
        costs = [s.test.cost_rel or 0.0 for s in r.splits]
        worst = max(s.test.loss for s in r.splits)
        spread = f"{_pct(min(costs))}-{_pct(max(costs))}"
        lines.append(
            f"| {bound} | {confidence:g} | {fraction:.0%} | {100 * r.mean('cost_rel'):.1f}% ({spread})"
            f" | {_pct(r.mean('escalation_rate'))} | {_pp(r.mean('loss'))} ({_pp(worst)}) | {r.missed}/{len(r.splits)}"
            f" | {bar_verdict(r)} |"
        )
    return "\n".join(lines)


def _setting(text: str) -> tuple[str, float, float]:
    """ "bound:confidence[:calibration share]", e.g. "score:0.9" or "bootstrap:0.95:0.7"."""
    bound, confidence, *rest = text.split(":")
    return bound, float(confidence), float(rest[0]) if rest else 0.5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="routing-data directory (default: $ESCALADE_ROUTING_DATA, ../shared)")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--pairs", default=",".join(f"{s}:{g}" for s, g in PAIRS), help="small:large,...")
    parser.add_argument("--splits", type=int, default=20)
    parser.add_argument("--cal-fraction", type=float, default=0.5, help="share of queries to calibrate on")
    parser.add_argument("--target-loss", type=float, default=0.01)
    parser.add_argument("--bound", choices=BOUNDS, default="score", help="upper bound of the fit (default score)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples of the bootstrap bound")
    parser.add_argument("--confidence", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sweep",
        default="score:0.9,score:0.95,score:0.9:0.7,bootstrap:0.8,bootstrap:0.9,bootstrap:0.95",
        help="bound:confidence[:share] settings to also run the bar pair at, comma-separated ('' for none)",
    )
    args = parser.parse_args(argv)
    path = args.data if args.data else data_dir()
    if path is None or not (path / DATA_FILE).is_file():
        print(f"routing replay data not found ({DATA_FILE}; set ESCALADE_ROUTING_DATA): skipped", file=sys.stderr)
        return 0
    started = time.monotonic()
    rows = load_rows(path)
    pairs = [tuple(p.split(":", 1)) for p in args.pairs.split(",")]
    common = {"splits": args.splits, "target": args.target_loss, "bootstrap": args.bootstrap, "seed": args.seed}
    results = replay(
        rows,
        args.datasets.split(","),
        pairs,
        cal_fraction=args.cal_fraction,
        confidence=args.confidence,
        bound=args.bound,
        **common,
    )
    how = "score (Tango) bound on the paired loss"
    if args.bound == "bootstrap":
        how = f"percentile bootstrap ({args.bootstrap} resamples)"
    print(
        f"Cascade replay: target loss {100 * args.target_loss:g} pp vs always-large at the {args.confidence:g} "
        f"upper bound, {how}; {args.splits} random splits, "
        f"{args.cal_fraction:.0%} of the queries to calibrate, the rest to evaluate. Costs relative to always-large.\n"
    )
    print(summary_table(results))
    print()
    for r in filter(is_bar, results):
        print(curve_table(r))
        print()
        print(
            f"bar ({r.dataset} {r.small} -> {r.large}: cost <= {_pct(BAR['max_cost_rel'])} of always-large, target "
            f"missed in <= {BAR['max_missed']} of {len(r.splits)} splits) with the {args.bound} bound at "
            f"{args.confidence:g}: {bar_verdict(r)}"
        )
        runs = []
        queries = pair_queries(rows, r.dataset, r.small, r.large)
        for bound, confidence, fraction in [_setting(t) for t in args.sweep.split(",") if t.strip()]:
            again = replay_pair(
                queries,
                dataset=r.dataset,
                small=r.small,
                large=r.large,
                cal_fraction=fraction,
                confidence=confidence,
                bound=bound,
                **common,
            )
            runs.append((bound, confidence, fraction, again))
        if runs:
            print(f"\n{r.dataset} {r.small} -> {r.large} by calibration setting:\n")
            print(sweep_table(runs))
        print()
    skipped = sorted({row["dataset"] for row in rows if row["confidence_kind"] is None})
    print(f"skipped (no confidence recorded): {', '.join(skipped)}")
    print(f"({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`escalade calibrate`: fit a route's gate `min_score` from a shadow log (JSONL of CalibrationRecord)."""

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import msgspec

from policies.calibrate import BOUNDS, CalibrationRecord, Fit, fit_threshold

HELP = """\
Read a shadow log (one CalibrationRecord JSON object a line, as the gate's shadow mode writes it;
see docs/cascade-gate.md) and, for each route in it, find the lowest-cost min_score whose quality
loss against always escalating stays under --target-loss at the --confidence upper bound.
Prints the fit and the policy snippet to paste under the route.

The bound (--bound score, the default) is Tango's score bound on the paired loss: the share of
requests whose accepted answer was worse than the last rung's minus the share where it was better,
with its variance taken at the bound. Thresholds are tested from the strictest down and the search
stops at the first that fails. --bound bootstrap uses the percentile bootstrap instead (--bootstrap
resamples, --seed); it is too optimistic when the loss comes from a handful of wrong answers.

A record is labelled by `correct` (the gated answer was right) or, failing that, `agree` (it agreed
with the last rung's answer); unlabelled records are skipped. Plan for 500-1000 labelled records a
route: with fewer the bound is wide and the threshold conservative.

exit status: 0 fitted; 1 the log is missing, empty or has no labelled record for the route;
2 a line of the log is not a valid record.
"""

MIN_RECORDS = 500


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit a cascade gate's min_score from a shadow log",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--log", required=True, type=Path, help="the shadow log (JSONL)")
    p.add_argument(
        "--target-loss", required=True, type=_share, help="largest quality loss vs always escalating, e.g. 0.01 (1 pp)"
    )
    p.add_argument("--route", help="only this route (default: every route in the log)")
    p.add_argument("--confidence", type=_share, default=0.9, help="confidence of the upper bound (default 0.9)")
    p.add_argument("--bound", choices=BOUNDS, default="score", help="upper bound of the loss (default score)")
    p.add_argument("--bootstrap", type=int, default=1000, help="--bound bootstrap: resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="--bound bootstrap: seed of the resampling (default 0)")


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive): {text}")
    return value


_DECODER = msgspec.json.Decoder(CalibrationRecord)


class LogError(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def read_log(path: Path) -> list[CalibrationRecord]:
    """The records of a shadow log. A torn last line (a writer mid-append) is skipped with a warning."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LogError(f"cannot read {path}: {exc.strerror}", 1) from None
    lines = data.split(b"\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(_DECODER.decode(line))
        except msgspec.DecodeError as exc:
            if number == len(lines):  # no newline after it: still being written
                print(f"escalade: {path} line {number}: incomplete last line skipped", file=sys.stderr)
                continue
            raise LogError(f"{path} line {number}: not a calibration record: {exc}", 2) from None
    if not records:
        raise LogError(f"{path} has no records", 1)
    return records


def run(args: argparse.Namespace) -> int:
    try:
        records = read_log(args.log)
    except LogError as exc:
        print(f"escalade: {exc}", file=sys.stderr)
        return exc.status
    by_route: dict[str, list[CalibrationRecord]] = defaultdict(list)
    for record in records:
        by_route[record.route].append(record)
    if args.route is not None and args.route not in by_route:
        routes = ", ".join(sorted(by_route))
        print(f"escalade: no record of route {args.route} in {args.log} (routes: {routes})", file=sys.stderr)
        return 1
    status = 0
    for route in [args.route] if args.route is not None else sorted(by_route):
        fit = fit_threshold(
            by_route[route],
            args.target_loss,
            confidence=args.confidence,
            bound=args.bound,
            bootstrap=args.bootstrap,
            seed=args.seed,
        )
        if fit.n == 0:
            why = f"none of its {fit.unlabelled} records has a label (correct or agree)"
            print(f"escalade: route {route}: {why}", file=sys.stderr)
            status = 1
            continue
        print(report(route, fit, args.seed))
    return status


def report(route: str, fit: Fit, seed: int) -> str:
    conf = f"{fit.confidence:.0%}"
    skipped = f" ({fit.unlabelled:,} unlabelled skipped)" if fit.unlabelled else ""
    lines = [f"route {route}: {fit.n:,} labelled records{skipped}"]
    if fit.n < MIN_RECORDS:
        lines.append(f"  warning: fewer than {MIN_RECORDS} records: the bound is wide, the threshold cautious")
    lines.append(
        f"  target        quality loss <= {100 * fit.target_loss:.2f} pp vs always escalating, at the {conf} "
        f"upper bound ({_bound_name(fit, seed)})"
    )
    if fit.threshold is None:
        lines.append("  min_score     none meets the target on these records: every answer would escalate")
        lines.append("  (keep escalating, collect more records, or relax --target-loss)")
        return "\n".join(lines)
    cost = "no costs in the log" if fit.cost_rel is None else f"{fit.cost_rel:.1%} of always escalating"
    lines += [
        f"  min_score     {fit.threshold!r}  (an answer is accepted when its score >= {fit.threshold!r})",
        f"  escalation    {fit.escalation_rate:.1%} of requests",
        f"  cost          {cost}",
        f"  quality loss  {100 * fit.loss:.2f} pp estimated, <= {100 * fit.loss_upper:.2f} pp at {conf}",
    ]
    if fit.cost_rel is not None and fit.cost_rel >= 1:
        lines.append("  note          the cascade costs more than sending every request to the last rung")
    lines += [
        "",
        "policy snippet:",
        "routes:",
        f"  {_yaml_key(route)}:",
        "    gate:",
        f"      min_score: {fit.threshold!r}",
    ]
    return "\n".join(lines)


def _bound_name(fit: Fit, seed: int) -> str:
    if fit.bound == "bootstrap":
        return f"percentile bootstrap, {fit.bootstrap} resamples, seed {seed}"
    return "score bound on the paired loss"


def _yaml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name) else json.dumps(name)

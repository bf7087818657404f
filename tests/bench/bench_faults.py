"""The fault suite as a table: every scenario of tests/faults/scenarios.py in each of its modes.

    python tests/bench/bench_faults.py                 # all cells, about a minute
    python tests/bench/bench_faults.py --only 429 cut  # scenarios whose id contains one of these
    python tests/bench/bench_faults.py --json out.json

Same runs and checks as tests/integration/test_faults.py (tests/faults/runner.py): a real gateway on
loopback in front of the mock upstream, one request through the official OpenAI SDK per cell. Prints
a markdown table (scenario, mode, pass/fail, time to answer, what the client saw) and the totals that
must be zero: truncated answers reported as complete, and hangs past the deadline. Exit status 1 when
any cell fails.
"""

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.faults.runner import DeadPort, Env, Result, Sink, install_span_exporter, run_cell, span_label
from tests.faults.scenarios import CELLS
from tests.mock_upstream import run_in_thread


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=[], help="run scenarios whose id contains one of these")
    ap.add_argument("--json", type=Path, help="also write every cell as JSON here")
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)  # the gateway logs every upstream failure; the table says it all

    cells = [(s, m) for s, m in CELLS if not args.only or any(part in s.id for part in args.only)]
    mock = run_in_thread()
    sink, dead = Sink(), DeadPort()
    results: list[Result] = []
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="escalade-faults-") as tmp:
            env = Env(mock=mock, tmp=Path(tmp), spans=install_span_exporter(), sink=sink, dead=dead)
            for scenario, mode in cells:
                result = run_cell(scenario, mode, env)
                results.append(result)
                print(f"{'pass' if result.ok else 'FAIL'} {scenario.id} {mode}", file=sys.stderr, flush=True)
    finally:
        sink.close()
        dead.close()
        mock.stop()
    wall = time.monotonic() - started

    print(table(results))
    print()
    print(totals(results, wall))
    if args.json:
        args.json.write_text(json.dumps([as_json(r) for r in results], indent=2))
    return 0 if all(r.ok for r in results) else 1


def table(results: list[Result]) -> str:
    lines = [
        "| scenario | mode | result | ms | what the client saw |",
        "|---|---|---|---:|---|",
    ]
    for r in results:
        verdict = "pass" if r.ok else "**FAIL**: " + "; ".join(r.failures)
        saw = r.saw.replace("|", "\\|")
        lines.append(f"| {r.scenario.id} | {r.mode} | {verdict} | {r.seen.elapsed_s * 1000:.0f} | {saw} |")
    return "\n".join(lines)


def totals(results: list[Result], wall: float) -> str:
    passed = sum(r.ok for r in results)
    truncated = sum(r.truncated_as_complete for r in results)
    hangs = sum(r.hang for r in results)
    return "\n".join(
        (
            f"- cells passed: **{passed}/{len(results)}** ({len({r.scenario.id for r in results})} scenarios)",
            f"- truncated streams/answers reported as complete: **{truncated}** (must be 0)",
            f"- hangs past the deadline: **{hangs}** (must be 0)",
            f"- wall time: {wall:.0f} s",
        )
    )


def as_json(r: Result) -> dict[str, object]:
    return {
        "scenario": r.scenario.id,
        "title": r.scenario.title,
        "mode": r.mode,
        "ok": r.ok,
        "failures": r.failures,
        "ms": round(r.seen.elapsed_s * 1000),
        "saw": r.saw,
        "truncated_as_complete": r.truncated_as_complete,
        "hang": r.hang,
        "attempt_spans": [span_label(s) for s in r.seen.attempt_spans],
    }


if __name__ == "__main__":
    sys.exit(main())

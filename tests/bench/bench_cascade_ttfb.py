#!/usr/bin/env python3
"""Time to first byte of a cascade stream, per hold mode, against the replay upstream.

A streamed answer from a gated rung is held back until the gate decides, so the client's first
content byte comes later than without a cascade: `hold: full` waits for the whole local answer,
`hold: prefix` for its first `prefix_tokens` tokens. This script measures by how much.

The replay upstream (tests/mock_upstream/replay.py, a confident recording) is paced like a model:
the first token after --first-delay seconds, then one token every --delay seconds. Rows:

  upstream direct      the mock itself, no gateway
  gateway, no cascade  a priority route to the same deployment
  cascade hold full    rung 0 = the same deployment, gated, whole answer held
  cascade hold prefix  the same, gated on the first --prefix-tokens tokens

TTFB = from sending the request to the first SSE event whose delta has content; total = to the end.
Every round asks each row once (interleaved), --requests rounds; the table quotes medians and p90.
Everything runs in this process on 127.0.0.1 (mock and gateway in their own threads): the absolute
numbers include that, the differences between rows are what it shows.

    python tests/bench/bench_cascade_ttfb.py
    python tests/bench/bench_cascade_ttfb.py --requests 50 --prefix-tokens 16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.mock_upstream import run_in_thread
from tests.support.gateway import GatewayThread, mock_policy, write_policy

ANSWER = (
    "The capital of France is Paris, a city on the Seine known for its museums, its cafes, "
    "its long boulevards and the tower Gustave Eiffel built for the fair of 1889."
)


def scenario(first_delay: float, delay: float) -> str:
    return f"replay:confident?text={ANSWER.replace(' ', '+')}&first_delay={first_delay}&delay={delay}"


def policy(base_url: str, model: str, prefix_tokens: int) -> dict:
    def cascade(hold: str) -> dict:
        gate = {"checks": ["truncated", "empty"], "min_score": 0.5, "hold": hold, "prefix_tokens": prefix_tokens}
        return {"strategy": "cascade", "rungs": [{"models": ["small"]}, {"models": ["large"]}], "gate": gate}

    return mock_policy(
        base_url,
        models={
            "small": {"provider": "mock", "model": model, "capabilities": ["logprobs"]},
            "large": {"provider": "mock", "model": "ok"},
        },
        routes={"plain": {"models": ["small"]}, "full": cascade("full"), "prefix": cascade("prefix")},
        timeouts={"connect_s": 2, "headers_s": 10, "first_token_s": 10, "idle_s": 10, "total_s": 30},
    )


def one(client: httpx.Client, url: str, model: str) -> tuple[float, float]:
    """(TTFB, total) in seconds of one streamed request."""
    body = {"model": model, "messages": [{"role": "user", "content": "What is the capital of France?"}], "stream": True}
    began = time.perf_counter()
    first = None
    with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if first is None and line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                first = time.perf_counter() - began
    total = time.perf_counter() - began
    if first is None:
        raise RuntimeError(f"{model}: no content event")
    return first, total


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20, help="rounds (each asks every row once)")
    ap.add_argument("--first-delay", type=float, default=0.05, help="upstream: seconds to the first token")
    ap.add_argument("--delay", type=float, default=0.01, help="upstream: seconds between tokens")
    ap.add_argument("--prefix-tokens", type=int, default=8)
    args = ap.parse_args()

    model = scenario(args.first_delay, args.delay)
    tokens = len(ANSWER.split())
    with run_in_thread() as mock, tempfile.TemporaryDirectory() as tmp:
        path = write_policy(Path(tmp) / "policy.yaml", policy(mock.base_url, model, args.prefix_tokens))
        gw = GatewayThread(path).start()
        try:
            rows = {
                "upstream direct": (f"{mock.base_url}/chat/completions", model),
                "gateway, no cascade": (f"{gw.base_url}/chat/completions", "plain"),
                "cascade hold full": (f"{gw.base_url}/chat/completions", "full"),
                f"cascade hold prefix ({args.prefix_tokens} tokens)": (f"{gw.base_url}/chat/completions", "prefix"),
            }
            results: dict[str, list[tuple[float, float]]] = {name: [] for name in rows}
            with httpx.Client(timeout=30) as client:
                for url, route in rows.values():  # warm-up: connections, first-request costs
                    one(client, url, route)
                for _ in range(args.requests):
                    for name, (url, route) in rows.items():
                        results[name].append(one(client, url, route))
        finally:
            gw.stop()

    print(
        f"\nTTFB of a streamed answer, {tokens} tokens, first after {args.first_delay * 1000:.0f} ms then one every "
        f"{args.delay * 1000:.0f} ms; {args.requests} requests per row (medians, p90 in brackets)\n"
    )
    print("| mode | TTFB ms | total ms |")
    print("|---|---:|---:|")
    for name, samples in results.items():
        ttfb = [s[0] * 1000 for s in samples]
        total = [s[1] * 1000 for s in samples]
        print(
            f"| {name} | {statistics.median(ttfb):.1f} ({p90(ttfb):.1f}) | "
            f"{statistics.median(total):.1f} ({p90(total):.1f}) |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

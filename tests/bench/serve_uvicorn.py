"""Serve escalade with uvicorn exactly as `escalade serve` does (gateway.cli -> gateway.server.serve:
uvloop + httptools), but importable from any checkout: --repo puts that tree first on sys.path, so a
scratch copy under /tmp can be benchmarked without touching the installed one.

    python tests/bench/serve_uvicorn.py --policy tests/bench/policy.yaml --listen 127.0.0.1:18080

Benchmark-only knobs (none changes the gateway's code):
    --gc-stats          every 5 s, log the time spent in the cyclic GC and what it collected
    --gc-freeze         gc.freeze() once the app is imported (startup objects never scanned again)
    --gc-threshold N    gc.set_threshold(N, ...) (Python's default gen-0 threshold is 700)
Other arguments go to `escalade serve` (e.g. --log-level warning).
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=REPO, help="checkout whose gateway/ providers/ policies/ to serve")
    ap.add_argument("--policy", type=Path, required=True)
    ap.add_argument("--listen", required=True, help="HOST:PORT")
    ap.add_argument("--gc-stats", action="store_true")
    ap.add_argument("--gc-freeze", action="store_true")
    ap.add_argument("--gc-threshold", type=int, default=0)
    args, rest = ap.parse_known_args()  # the rest goes to `escalade serve` (e.g. --log-level warning)
    sys.path.insert(0, str(args.repo.resolve()))
    import gateway.server  # noqa: F401 - import the app's modules before a freeze
    from gateway.cli import main as cli_main

    sys.path.insert(1, str(Path(__file__).resolve().parent))
    import _gc

    _gc.apply(stats=args.gc_stats, freeze=args.gc_freeze, threshold=args.gc_threshold)
    return cli_main(["serve", "--policy", str(args.policy), "--listen", args.listen, *rest])


if __name__ == "__main__":
    sys.exit(main())

"""Serve escalade with uvicorn exactly as `escalade serve` does (gateway.cli -> gateway.server.serve:
uvloop + httptools), but importable from any checkout: --repo puts that tree first on sys.path, so a
scratch copy under /tmp can be benchmarked without touching the installed one.

    python tests/bench/serve_uvicorn.py --policy tests/bench/policy.yaml --listen 127.0.0.1:18080
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
    args = ap.parse_args()
    sys.path.insert(0, str(args.repo.resolve()))
    from gateway.cli import main as cli_main  # noqa: PLC0415 - after sys.path is set

    return cli_main(["serve", "--policy", str(args.policy), "--listen", args.listen])


if __name__ == "__main__":
    sys.exit(main())

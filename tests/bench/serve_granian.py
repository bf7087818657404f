"""Serve escalade's client API with granian instead of uvicorn (benchmark only).

The app is built the way gateway/server.py builds it (load_state + setup_tracing + create_app), in
granian's worker process through a factory. Not served: the admin listener and the policy watcher
(neither is on the request path).

    python tests/bench/serve_granian.py --policy tests/bench/policy.yaml --listen 127.0.0.1:18080 \
        [--runtime-mode st] [--loop uvloop] [--task-impl asyncio|rust] [--backpressure N]
        [--gc-stats] [--gc-freeze] [--gc-threshold N]   (benchmark-only GC knobs, as serve_uvicorn.py)
"""

import argparse
import logging
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def build_app():  # type: ignore[no-untyped-def]  # granian factory, runs in the worker process
    repo = os.environ.get("ESCALADE_BENCH_REPO", str(REPO))
    if sys.path[0] != repo:
        sys.path.insert(0, repo)
    from gateway.app import create_app
    from gateway.server import load_state, parse_listen
    from gateway.telemetry import setup_tracing

    # The same logging as `escalade serve` (gateway/cli.py), so both servers run the same app.
    level = os.environ.get("ESCALADE_LOG_LEVEL", "info").upper()
    root = logging.getLogger()
    root.setLevel(level)
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    host, _ = parse_listen(os.environ["ESCALADE_BENCH_LISTEN"])
    state = load_state(Path(os.environ["ESCALADE_BENCH_POLICY"]), host)
    setup_tracing()
    app = create_app(state)
    import _gc

    _gc.apply(
        stats=bool(os.environ.get("ESCALADE_BENCH_GC_STATS")),
        freeze=bool(os.environ.get("ESCALADE_BENCH_GC_FREEZE")),
        threshold=int(os.environ.get("ESCALADE_BENCH_GC_THRESHOLD") or 0),
    )
    return app


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=REPO)
    ap.add_argument("--policy", type=Path, required=True)
    ap.add_argument("--listen", required=True, help="HOST:PORT")
    ap.add_argument("--loop", default="uvloop", choices=["auto", "asyncio", "uvloop", "rloop"])
    ap.add_argument("--runtime-mode", default="st", choices=["auto", "st", "mt"])
    ap.add_argument("--task-impl", default="asyncio", choices=["asyncio", "rust"])
    ap.add_argument("--backpressure", type=int, default=None)
    ap.add_argument("--gc-stats", action="store_true", help="log the cyclic GC's time every 5 s")
    ap.add_argument("--gc-freeze", action="store_true", help="gc.freeze() once the app is built")
    ap.add_argument("--gc-threshold", type=int, default=0, help="gen-0 GC threshold (Python default 700)")
    args = ap.parse_args()

    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops, RuntimeModes, TaskImpl
    from granian.log import LogLevels

    host, _, port = args.listen.rpartition(":")
    os.environ["ESCALADE_BENCH_REPO"] = str(args.repo.resolve())
    os.environ["ESCALADE_BENCH_POLICY"] = str(args.policy.resolve())
    os.environ["ESCALADE_BENCH_LISTEN"] = args.listen
    os.environ["ESCALADE_BENCH_GC_STATS"] = "1" if args.gc_stats else ""
    os.environ["ESCALADE_BENCH_GC_FREEZE"] = "1" if args.gc_freeze else ""
    os.environ["ESCALADE_BENCH_GC_THRESHOLD"] = str(args.gc_threshold or "")
    Granian(
        "serve_granian:build_app",
        factory=True,
        working_dir=Path(__file__).resolve().parent,
        address=host,
        port=int(port),
        interface=Interfaces.ASGI,
        workers=1,
        http=HTTPModes.http1,
        websockets=False,
        loop=Loops(args.loop),
        runtime_mode=RuntimeModes(args.runtime_mode),
        task_impl=TaskImpl(args.task_impl),
        backlog=4096,
        backpressure=args.backpressure,
        log_enabled=True,
        log_level=LogLevels.warning,
        log_access=False,
    ).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""python -m tests.mock_upstream --port 9100 [--host 127.0.0.1] [--workers N] [--no-log]"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from .server import MockUpstream


async def _serve(args: argparse.Namespace, announce: bool) -> None:
    srv = MockUpstream(
        args.host,
        args.port,
        log_enabled=not args.no_log,
        max_log=args.max_log,
        reuse_port=args.workers > 1,
    )
    await srv.start()
    if announce:
        print(f"mock upstream listening on {srv.base_url} (pid {os.getpid()}, workers {args.workers})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover
            pass
    try:
        await stop.wait()
    finally:
        await srv.stop()


def _run(args: argparse.Namespace, announce: bool) -> None:
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            uvloop = None  # type: ignore[assignment]
        if uvloop is not None:
            if hasattr(uvloop, "run"):
                uvloop.run(_serve(args, announce))
            else:  # pragma: no cover
                uvloop.install()
                asyncio.run(_serve(args, announce))
            return
    asyncio.run(_serve(args, announce))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.mock_upstream", description="Mock OpenAI-compatible upstream")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9100)
    ap.add_argument("--workers", type=int, default=1,
                    help="processes sharing the port via SO_REUSEPORT (benchmarks only: log/scripts are per process)")
    ap.add_argument("--no-log", action="store_true", help="do not record requests (benchmarks)")
    ap.add_argument("--max-log", type=int, default=20_000, help="keep at most this many log records")
    ap.add_argument("--no-uvloop", action="store_true")
    args = ap.parse_args(argv)
    if args.workers > 1 and args.port == 0:
        ap.error("--workers > 1 needs a fixed --port")

    children: list[int] = []
    for _ in range(max(0, args.workers - 1)):
        pid = os.fork()
        if pid == 0:  # child
            try:
                _run(args, announce=False)
            finally:
                os._exit(0)
        children.append(pid)
    try:
        _run(args, announce=True)
    except KeyboardInterrupt:
        pass
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Runs the engine command as a child and takes its process group down when escalade goes away.

Started by the supervisor as the leader of a new session (so the engine, its workers and this
process share one process group), as a script: `python leash.py --parent PID --grace S -- ARGV...`.
Stdlib only, so it runs with any Python.

Why it exists: a supervisor that is killed with SIGKILL (or crashes) cannot stop anything, and a
vLLM in its own session would live on, holding the GPU. This process polls its parent: once the
parent is gone, it sends SIGTERM to the whole group, waits `grace` seconds, then SIGKILL.
Otherwise it only waits for the engine and exits with its status. Signals sent to it are not
fatal (the supervisor signals the whole group, and then the engine's exit ends this process too).
"""

import argparse
import os
import signal
import subprocess
import sys

POLL_S = 0.25


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" not in argv:
        raise SystemExit("usage: leash.py --parent PID --grace SECONDS -- COMMAND [ARGS...]")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="leash.py")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--grace", type=float, default=20.0)
    return parser.parse_args(argv[:split]), argv[split + 1 :]


def _note(message: str) -> None:
    print(f"escalade-leash[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


def _exit_status(code: int) -> int:
    return 128 - code if code < 0 else code


def _take_down(child: subprocess.Popen[bytes], grace: float) -> int:
    """SIGTERM the whole group (this process ignores it), wait `grace`, then SIGKILL the group."""
    group = os.getpgid(0)
    os.killpg(group, signal.SIGTERM)
    try:
        code = child.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        _note(f"engine still running {grace:g}s after SIGTERM: SIGKILL to the group")
        os.killpg(group, signal.SIGKILL)  # this process included
        return 137
    os.killpg(group, signal.SIGKILL)  # the engine is gone; its helpers (and this process) may follow
    return _exit_status(code)


def main(argv: list[str]) -> int:
    args, command = _parse(argv)
    if not command:
        raise SystemExit("leash.py: no command after --")
    # Handlers, not SIG_IGN: ignored signals would stay ignored in the engine after exec.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)
    if os.getppid() != args.parent:
        _note("the parent is already gone; not starting the engine")
        return 1
    try:
        child = subprocess.Popen(command)
    except OSError as exc:
        _note(f"cannot start {command[0]!r}: {exc.strerror or exc}")
        return 127
    while True:
        try:
            return _exit_status(child.wait(timeout=POLL_S))
        except subprocess.TimeoutExpired:
            pass
        if os.getppid() != args.parent:
            _note(f"escalade (pid {args.parent}) is gone: stopping the engine's process group")
            return _take_down(child, args.grace)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

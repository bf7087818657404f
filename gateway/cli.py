"""The `escalade` command line."""

import argparse
import asyncio
import json
import logging
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import calibrate_cmd
from local_engine.command import build_argv
from policies.loader import PolicyError, parse_policy
from policies.router import plan
from policies.schema import Policy
from providers.openai_compat.config import VllmConf
from providers.secrets import MissingSecret

if TYPE_CHECKING:
    from collections.abc import Callable

    from local_engine.fleet import Engines
    from local_engine.supervisor import EngineStatus

DESCRIPTION = """\
escalade: a self-hosted LLM gateway. Point any OpenAI client at it; it answers from a local model
when that answer is good enough and routes the rest across remote APIs, as one policy file says.
"""

EPILOG = """\
examples:
  escalade check deploy/policies/quickstart.yaml
  escalade serve --policy deploy/policies/quickstart.yaml
  OPENAI_BASE_URL=http://127.0.0.1:8080/v1 python my_app.py
  escalade engine status --policy deploy/policies/local-cpu.yaml
  escalade calibrate --log shadow.jsonl --target-loss 0.01

Secrets are never in the policy file: it names environment variables (api_key_env) or files
(api_key_file). Tracing is off unless OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_TRACES_EXPORTER) is set.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="escalade", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="run the gateway",
        description="Serve the OpenAI-compatible API (and the admin API) as the policy says. "
        "The policy file is watched: a valid new version is swapped in live, an invalid one is "
        "refused and reported at GET /admin/policy on the admin listener.",
    )
    serve.add_argument("--policy", required=True, type=Path, help="the policy YAML file")
    serve.add_argument("--listen", help="HOST:PORT for the API (overrides server.listen)")
    serve.add_argument("--admin-listen", help="HOST:PORT for the admin API (overrides server.admin_listen)")
    serve.add_argument(
        "--log-level", default=os.environ.get("ESCALADE_LOG_LEVEL", "info"), help="debug, info, warning (default info)"
    )
    check = sub.add_parser(
        "check",
        help="validate a policy file and show what each route would try",
        description="Validate POLICY (shape, types, references) and print its routes, models and, for each "
        "route, the deployments it would try in order. Exit status 1 when the policy is invalid.",
    )
    check.add_argument("policy", type=Path, help="the policy YAML file")
    check.add_argument(
        "--explain",
        type=Path,
        metavar="REQUEST.json",
        help="instead of the summary, print as JSON how this OpenAI request body would be routed: route, "
        "strategy, deployments in order with estimated cost, and why each other one is skipped "
        "(exit status 1 when routing would refuse it)",
    )
    check.add_argument("--max-cost-usd", help="with --explain: the request's x-escalade-max-cost-usd header")
    _engine_parser(sub)
    calibrate_cmd.add_parser(sub)
    return parser


ENGINE_HELP = """\
A `vllm` provider with an `engine:` block is a local vLLM that escalade runs itself. `escalade serve`
launches it with the listeners, routes around it until /health answers (and after a crash), restarts
it with backoff and stops it on shutdown. These commands do the same by hand, for operators who run
the engine apart from the gateway: a gateway started later watches an engine that is already running
instead of launching a second one.

Each engine runs in its own process group, with its output in a log file. Its record (who runs it,
process group, log) is kept in the run directory: $ESCALADE_RUN_DIR, else $XDG_RUNTIME_DIR/escalade,
else /tmp/escalade-<uid>. If the process supervising an engine dies, even by SIGKILL, the engine's
whole process group is stopped within a second plus the grace period.
"""


def _engine_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    engine = sub.add_parser(
        "engine",
        help="start, inspect or stop the policy's local vLLM engines",
        description=ENGINE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = engine.add_subparsers(dest="action", metavar="ACTION", required=True)
    helps = {
        "start": "run the engines in the foreground, supervised (restarts with backoff); Ctrl-C stops them",
        "status": "ask each engine's /health and /metrics and print a table (exit status 3 if any is not ready)",
        "stop": "stop engines started by `escalade engine start` (SIGTERM, then SIGKILL after --grace)",
    }
    for action, text in helps.items():
        p = actions.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("--policy", required=True, type=Path, help="the policy YAML file")
        p.add_argument("--provider", action="append", help="only this provider (repeatable; default: every engine)")
        if action == "stop":
            p.add_argument("--grace", type=float, default=20.0, help="seconds between SIGTERM and SIGKILL (default 20)")
            p.add_argument(
                "--force", action="store_true", help="also stop an engine run by `escalade serve` (it will restart it)"
            )


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "check":
        return _check(args.policy, args.explain, args.max_cost_usd)
    if args.command == "serve":
        return _serve(args)
    if args.command == "engine":
        return _engine(args)
    if args.command == "calibrate":
        return calibrate_cmd.run(args)
    parser.print_help()
    return 0


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError as exc:
        print(f"escalade: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return None


def _check(path: Path, explain_path: Path | None = None, max_cost: str | None = None) -> int:
    text = _read(path)
    if text is None:
        return 1
    try:
        policy = parse_policy(text, str(path))
        _check_engines(policy, str(path))
    except PolicyError as exc:
        print(f"{path}: INVALID ({len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''})", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    if explain_path is not None:
        return _explain(policy, explain_path, max_cost)
    print(summary(policy, str(path)))
    return 0


def _explain(policy: Policy, request_path: Path, max_cost: str | None) -> int:
    from gateway.explain import explain
    from providers.errors import GatewayError

    body = _read(request_path)
    if body is None:
        return 1
    try:
        explanation = explain(policy, body, max_cost_header=max_cost)
    except GatewayError as exc:
        print(f"escalade: {request_path}: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps(explanation, indent=2))
    return 1 if explanation["error"] else 0


def _check_engines(policy: Policy, source: str) -> None:
    """Engine command lines that cannot be built (e.g. `args` setting --port) are policy problems."""
    problems = []
    for name, conf in _engine_confs(policy, None).items():
        try:
            build_argv(conf.engine, conf.base_url or "")  # type: ignore[arg-type]
        except ValueError as exc:
            problems.append(f"{source}: {exc} - at `$.providers.{name}.engine`")
    if problems:
        raise PolicyError(problems)


def summary(policy: Policy, source: str) -> str:
    lines = [f"{source}: OK", f"  listen {policy.server.listen}; admin {policy.server.admin_listen or 'off'}"]
    lines.append(f"  providers ({len(policy.providers)}):")
    for name, conf in policy.providers.items():
        tag = type(conf).__struct_config__.tag
        secret = (
            f" key from ${conf.api_key_env}" if conf.api_key_env else (" key from file" if conf.api_key_file else "")
        )
        missing = " (NOT SET)" if conf.api_key_env and not os.environ.get(conf.api_key_env) else ""
        lines.append(f"    {name}: {tag} {conf.base_url}{secret}{missing}")
        if isinstance(conf, VllmConf) and conf.engine is not None:
            lines.append(f"      engine: {shlex.join(build_argv(conf.engine, conf.base_url or ''))}")
    lines.append(f"  models ({len(policy.models)}):")
    for name, model in policy.models.items():
        price = f"${model.price.input_per_mtok:g}/${model.price.output_per_mtok:g} per Mtok in/out"
        lines.append(f"    {name}: {model.model} at {model.provider}, {price}{' (local)' if model.local else ''}")
    lines.append(f"  routes ({len(policy.routes)}):")
    for name in policy.routes:
        p = plan(policy, name)
        order = " -> ".join(c.name + "".join(f" ({k}={v})" for k, v in c.overrides.items()) for c in p.candidates)
        lines.append(f"    {name} [{p.strategy}]: {order}")
    keys = f"{len(policy.keys)} key(s)" if policy.keys else "none (open on a loopback listener only)"
    lines.append(f"  keys: {keys}")
    t, r = policy.timeouts, policy.retries
    lines.append(
        f"  timeouts: connect {t.connect_s:g}s, headers {t.headers_s:g}s, first token {t.first_token_s:g}s, "
        f"idle {t.idle_s:g}s, total {t.total_s:g}s; attempts per deployment: {r.attempts}"
    )
    return "\n".join(lines)


def _serve(args: argparse.Namespace) -> int:
    from gateway.server import serve

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per upstream request otherwise
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    try:
        runner(serve(args.policy, listen=args.listen, admin_listen=args.admin_listen))
    except (PolicyError, MissingSecret, ValueError, OSError) as exc:
        print(f"escalade: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------- escalade engine


def _engine(args: argparse.Namespace) -> int:
    text = _read(args.policy)
    if text is None:
        return 1
    try:
        policy = parse_policy(text, str(args.policy))
        engines = _engine_confs(policy, args.provider)
    except (PolicyError, ValueError) as exc:
        print(f"escalade: {exc}", file=sys.stderr)
        return 1
    if not engines:
        print(f"escalade: {args.policy} has no `vllm` provider with `engine:`", file=sys.stderr)
        return 1
    if args.action == "status":
        return _engine_status(engines)
    if args.action == "stop":
        return _engine_stop(engines, grace_s=args.grace, force=args.force)
    return _engine_start(policy, engines)


def _engine_confs(policy: Policy, only: list[str] | None) -> dict[str, VllmConf]:
    found = {n: c for n, c in policy.providers.items() if isinstance(c, VllmConf) and c.engine is not None}
    unknown = sorted(set(only or ()) - set(found))
    if unknown:
        raise ValueError(f"no engine named {', '.join(unknown)} (engines: {', '.join(found) or 'none'})")
    return {n: c for n, c in found.items() if not only or n in only}


def _engine_start(policy: Policy, confs: dict[str, VllmConf]) -> int:
    from gateway.server import policy_engines
    from local_engine.probe import probe

    todo = set()
    for name, conf in confs.items():
        seen = probe(name, conf.base_url or "")
        if seen.state == "down":
            todo.add(name)
        else:
            who = f" by `escalade {seen.record.owner}` (pid {seen.record.supervisor_pid})" if seen.record else ""
            print(f"engine {name}: already running at {seen.origin}{who}; not starting another", file=sys.stderr)
    if not todo:
        return 1
    try:
        engines = policy_engines(policy, owner="engine start", on_change=_print_phase(), only=todo)
    except ValueError as exc:
        print(f"escalade: {exc}", file=sys.stderr)
        return 1
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for engine in engines:
        print(f"engine {engine.name}: {' '.join(engine.argv)}\n  at {engine.origin}, log {engine.log_path}", flush=True)
    asyncio.run(_supervise(engines))
    return 0


async def _supervise(engines: "Engines") -> None:
    """Run the engines until SIGINT or SIGTERM, then stop them."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    engines.start()
    await stop.wait()
    print("stopping...", flush=True)
    await engines.stop()


def _print_phase() -> "Callable[[EngineStatus], None]":
    phases: dict[str, str] = {}

    def report(status: "EngineStatus") -> None:
        if phases.get(status.name) != status.phase.value:
            phases[status.name] = status.phase.value
            why = f" ({status.last_error})" if status.last_error and not status.ready else ""
            print(f"engine {status.name}: {status.phase.value}{why}", flush=True)

    return report


def _engine_status(engines: dict[str, VllmConf]) -> int:
    from local_engine.probe import probe

    rows = [("ENGINE", "STATE", "URL", "PGID", "RUN BY", "QUEUED", "RUNNING", "KV CACHE", "LOG")]
    all_ready = True
    for name, conf in engines.items():
        seen = probe(name, conf.base_url or "")
        all_ready = all_ready and seen.state == "ready"
        load = seen.load
        rows.append(
            (
                name,
                seen.state,
                seen.origin,
                str(seen.record.pgid) if seen.record else "-",
                f"{seen.record.owner} (pid {seen.record.supervisor_pid})" if seen.record else "-",
                _num(load.waiting if load else None),
                _num(load.running if load else None),
                f"{load.kv_cache_usage:.1%}" if load and load.kv_cache_usage is not None else "-",
                seen.record.log if seen.record else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0 if all_ready else 3


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _engine_stop(engines: dict[str, VllmConf], *, grace_s: float, force: bool) -> int:
    from local_engine.probe import stop_engine

    status = 0
    for name, conf in engines.items():
        ok, message = stop_engine(name, conf.base_url or "", grace_s=grace_s, force=force)
        print(f"engine {name}: {message}", file=sys.stdout if ok else sys.stderr)
        status = status or (0 if ok else 1)
    return status


if __name__ == "__main__":
    sys.exit(main())

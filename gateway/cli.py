"""The `escalade` command line."""

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from policies.loader import PolicyError, parse_policy
from policies.router import plan
from policies.schema import Policy
from providers.secrets import MissingSecret

DESCRIPTION = """\
escalade: a self-hosted LLM gateway. Point any OpenAI client at it; it answers from a local model
when that answer is good enough and routes the rest across remote APIs, as one policy file says.
"""

EPILOG = """\
examples:
  escalade check deploy/policies/quickstart.yaml
  escalade serve --policy deploy/policies/quickstart.yaml
  OPENAI_BASE_URL=http://127.0.0.1:8080/v1 python my_app.py

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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "check":
        return _check(args.policy)
    if args.command == "serve":
        return _serve(args)
    parser.print_help()
    return 0


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError as exc:
        print(f"escalade: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return None


def _check(path: Path) -> int:
    text = _read(path)
    if text is None:
        return 1
    try:
        policy = parse_policy(text, str(path))
    except PolicyError as exc:
        print(f"{path}: INVALID ({len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''})", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(summary(policy, str(path)))
    return 0


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
    lines.append(f"  models ({len(policy.models)}):")
    for name, model in policy.models.items():
        price = f"${model.price.input_per_mtok:g}/${model.price.output_per_mtok:g} per Mtok in/out"
        lines.append(f"    {name}: {model.model} at {model.provider}, {price}{' (local)' if model.local else ''}")
    lines.append(f"  routes ({len(policy.routes)}):")
    for name in policy.routes:
        p = plan(policy, name)
        order = " -> ".join(c.name for c in p.candidates)
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


if __name__ == "__main__":
    sys.exit(main())

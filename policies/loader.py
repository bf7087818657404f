"""Policy text -> a validated Policy, or a PolicyError naming the YAML path and line. Pure: no file I/O.

Validation runs in two passes: shape and types (msgspec, unknown fields rejected), then references
(every model, provider and route a policy names exists) and rules (e.g. data residency).
"""

import re
from typing import Any

import msgspec
import yaml

from policies.router import capabilities_of
from policies.schema import IMPLEMENTED_STRATEGIES, ModelConf, Policy, RouteConf
from providers.registry import PROVIDER_TYPES, ProviderConf


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key `{key}`", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class PolicyError(ValueError):
    """An invalid policy. `problems` lists every message found; str() joins them."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


_FIELD_TYPES: dict[str, Any] = {f.name: f.type for f in msgspec.structs.fields(Policy)}
_ENTRY_TYPES: dict[str, Any] = {"providers": ProviderConf, "models": ModelConf, "routes": RouteConf}
_PATH_IN_MSG = re.compile(r"`\$([^`]*)`")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def parse_policy(text: str | bytes, source: str = "policy") -> Policy:
    """Parse and validate a policy document. Raises PolicyError with every problem found."""
    try:
        root = yaml.compose(text, Loader=_StrictLoader)
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader: data only, no tags
    except yaml.YAMLError as exc:
        raise PolicyError([f"{source}: not valid YAML: {exc}"]) from None
    if data is None:  # an empty file (or one caught mid-write) must never replace a working policy
        raise PolicyError([f"{source}: the policy is empty"])
    if not isinstance(data, dict):
        raise PolicyError([f"{source}: the policy must be a mapping at the top level"])
    lines = _LineIndex(root)
    policy = _convert(data, lines, source)
    problems = [f"{source}: {lines.locate(path, f'{msg} - at `{path}`')}" for path, msg in check_references(policy)]
    if problems:
        raise PolicyError(problems)
    return policy


def _convert(data: dict[str, Any], lines: "_LineIndex", source: str) -> Policy:
    """msgspec conversion section by section, so that errors name dict keys (msgspec says `[...]`)."""
    problems: list[str] = []
    converted: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _FIELD_TYPES:
            problems.append(lines.locate(f"$.{key}", f"unknown field `{key}` - at `$.{key}`"))
            continue
        if key in _ENTRY_TYPES and isinstance(value, dict):
            entries = {}
            for name, entry in value.items():
                try:
                    entries[str(name)] = msgspec.convert(entry, _ENTRY_TYPES[key])
                except msgspec.ValidationError as exc:
                    problems.append(_rewrite(str(exc), f"$.{key}.{name}", lines))
            converted[key] = entries
            continue
        try:
            converted[key] = msgspec.convert(value, _FIELD_TYPES[key])
        except msgspec.ValidationError as exc:
            problems.append(_rewrite(str(exc), f"$.{key}", lines))
    if problems:
        raise PolicyError([f"{source}: {p}" for p in problems])
    return Policy(**converted)


def _rewrite(message: str, prefix: str, lines: "_LineIndex") -> str:
    """Put the real YAML path (with dict keys) into msgspec's message, and the line number."""
    found = _PATH_IN_MSG.search(message)
    path = prefix + (found.group(1) if found else "")
    text = _PATH_IN_MSG.sub(f"`{path}`", message) if found else f"{message} - at `{path}`"
    if "Invalid value" in text and path.endswith(".type") and path.startswith("$.providers."):
        text += f" (provider types available: {', '.join(PROVIDER_TYPES)})"
    unknown = re.search(r"unknown field `([^`]+)`", text)
    return lines.locate(f"{path}.{unknown.group(1)}" if unknown else path, text)


def check_references(policy: Policy) -> list[tuple[str, str]]:
    """Every name the policy uses must exist, and the rules across sections must hold.

    Returns (YAML path, message) pairs; empty when the policy is consistent.
    """
    problems: list[tuple[str, str]] = []
    for name, provider in policy.providers.items():
        if not provider.base_url:
            tag = type(provider).__struct_config__.tag
            problems.append((f"$.providers.{name}.base_url", f"required for provider type {tag}"))
        if provider.api_key_env and provider.api_key_file:
            problems.append((f"$.providers.{name}", "give api_key_env or api_key_file, not both"))
    for name, model in policy.models.items():
        if model.provider not in policy.providers:
            problems.append((f"$.models.{name}.provider", f"unknown provider `{model.provider}`"))
    for name, route in policy.routes.items():
        problems.extend(_check_route(name, route, policy))
    seen: set[str] = set()
    for i, key in enumerate(policy.keys):
        where = f"$.keys[{i}]"
        if not _HEX64.fullmatch(key.key_sha256):
            problems.append((f"{where}.key_sha256", "must be 64 lowercase hex characters (the key's sha256)"))
        if key.key_sha256 in seen:
            problems.append((f"{where}.key_sha256", "the same key appears twice"))
        seen.add(key.key_sha256)
        problems.extend(
            (f"{where}.routes", f"unknown route `{r}`") for r in key.routes if r != "*" and r not in policy.routes
        )
    if policy.server.max_n < 1:
        problems.append(("$.server.max_n", "must be at least 1"))
    if policy.retries.attempts < 1:
        problems.append(("$.retries.attempts", "must be at least 1"))
    return problems


def _check_route(name: str, route: RouteConf, policy: Policy) -> list[tuple[str, str]]:
    where = f"$.routes.{name}"
    problems: list[tuple[str, str]] = []
    if route.strategy not in IMPLEMENTED_STRATEGIES:
        available = ", ".join(sorted(IMPLEMENTED_STRATEGIES))
        problems.append(
            (f"{where}.strategy", f"`{route.strategy}` is not available in this version (available: {available})")
        )
    names = list(route.models) + [m for rung in route.rungs for m in rung.models]
    if not names:
        problems.append((where, "a route needs at least one model"))
    for model in names:
        conf = policy.models.get(model)
        if conf is None:
            problems.append((f"{where}.models", f"unknown model `{model}`"))
        elif route.data_residency == "local" and not conf.local:
            problems.append((f"{where}.models", f"data_residency is local but model `{model}` is not local: true"))
    problems.extend(_check_route_strategy(where, route, names))
    problems.extend(_check_cascade(where, route, policy))
    return problems


def _check_route_strategy(where: str, route: RouteConf, names: list[str]) -> list[tuple[str, str]]:
    """Rung strategies, weights, cost cap and hedging must make sense for the route."""
    problems: list[tuple[str, str]] = []
    for i, rung in enumerate(route.rungs):
        if rung.strategy == "cascade" or rung.strategy not in IMPLEMENTED_STRATEGIES:
            available = ", ".join(sorted(IMPLEMENTED_STRATEGIES - {"cascade"}))
            problems.append((f"{where}.rungs[{i}].strategy", f"a rung orders its models by one of: {available}"))
    strategies = {route.strategy, *(rung.strategy for rung in route.rungs)}
    if route.weights and "weighted" not in strategies:
        problems.append((f"{where}.weights", "weights apply only to strategy weighted (on the route or a rung)"))
    for model in route.weights:
        if model not in names:
            problems.append((f"{where}.weights", f"`{model}` is not one of this route's models"))
    if route.max_cost_usd is not None and route.max_cost_usd < 0:
        problems.append((f"{where}.max_cost_usd", "must be 0 or more"))
    if route.hedge is not None and len(set(names)) < 2:
        problems.append((f"{where}.hedge", "hedging needs a second model to race"))
    return problems


def _check_cascade(where: str, route: RouteConf, policy: Policy) -> list[tuple[str, str]]:
    """A cascade lists its models in rungs and has a gate; rungs and a gate mean nothing elsewhere."""
    if route.strategy != "cascade":
        found = [(f"{where}.rungs", "rungs need `strategy: cascade`")] if route.rungs else []
        return found + ([(f"{where}.gate", "a gate applies only to `strategy: cascade`")] if route.gate else [])
    problems: list[tuple[str, str]] = []
    if not route.rungs:
        problems.append((f"{where}.rungs", "strategy cascade needs rungs (the models to try, in order)"))
    if route.models:
        problems.append((f"{where}.models", "a cascade lists its models in `rungs`, not in `models`"))
    if route.gate is None:
        problems.append((f"{where}.gate", "strategy cascade needs a gate (what a rung's answer must pass)"))
    elif route.gate.shadow and route.gate.shadow.rate > 0 and not route.gate.shadow.log:
        problems.append((f"{where}.gate.shadow.log", "shadow mode needs a log file for its records"))
    return problems + _check_rungs(where, route, policy)


def _check_rungs(where: str, route: RouteConf, policy: Policy) -> list[tuple[str, str]]:
    """Each rung has models; with min_score, every gated rung (all but the last) must return token
    logprobs. (Rung strategies are checked with the route's, in _check_route_strategy.)"""
    problems: list[tuple[str, str]] = []
    scored = route.gate is not None and route.gate.min_score is not None
    for number, rung in enumerate(route.rungs):
        at = f"{where}.rungs[{number}]"
        if not rung.models:
            problems.append((f"{at}.models", "a rung needs at least one model"))
        if scored and number < len(route.rungs) - 1:
            problems.extend(
                (
                    f"{at}.models",
                    f"gate.min_score scores token logprobs, but model `{name}` has no logprobs capability "
                    "(add logprobs to its capabilities, or move it to the last rung, which is not gated)",
                )
                for name in _lacking_logprobs(rung.models, policy)
            )
    return problems


def _lacking_logprobs(names: list[str], policy: Policy) -> list[str]:
    models = [(name, policy.models.get(name)) for name in names]
    return [
        name
        for name, conf in models
        if conf is not None and conf.provider in policy.providers and "logprobs" not in capabilities_of(policy, conf)
    ]


class _LineIndex:
    """Maps a YAML path such as `$.providers.local.engine.args[2]` to its line in the file."""

    def __init__(self, root: yaml.Node | None) -> None:
        self._root = root

    def locate(self, path: str, message: str) -> str:
        line = self._line_of(path)
        return f"{message} (line {line})" if line else message

    def _line_of(self, path: str) -> int | None:
        node = self._root
        best = None
        for step in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path.removeprefix("$")):
            key, index = step
            if node is None:
                break
            best = node.start_mark.line + 1
            node = _child(node, key, index)
        if node is not None:
            best = node.start_mark.line + 1
        return best


def _child(node: yaml.Node, key: str, index: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode) and key:
        for k, v in node.value:
            if str(k.value) == key:
                return v
    if isinstance(node, yaml.SequenceNode) and index and int(index) < len(node.value):
        return node.value[int(index)]
    return None

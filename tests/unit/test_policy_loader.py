"""policies/loader.py parse_policy: a valid policy loads; every mistake is an error naming its YAML path and line."""

import copy
import re
import textwrap
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from policies.loader import PolicyError, parse_policy
from policies.schema import IMPLEMENTED_STRATEGIES, Policy, Strategy
from providers.openai_compat.config import OpenAIConf, VllmConf
from providers.registry import PROVIDER_TYPES

ROOT = Path(__file__).resolve().parents[2]
POLICY_MD = ROOT / "tests" / "golden" / "policy" / "policy_md.yaml"
SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

MINIMAL = """\
version: 1
providers:
  local:
    type: vllm
    base_url: http://127.0.0.1:8000/v1
models:
  small:
    provider: local
    model: tiny
routes:
  auto:
    models: [small]
"""


def problems_of(text: str, source: str = "policy.yaml") -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, source)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def only_problem(text: str) -> str:
    problems = problems_of(text)
    assert len(problems) == 1, problems
    return problems[0]


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing `needle`."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


# ---------------------------------------------------------------- valid policies


@pytest.mark.parametrize("text", ["", b"", "# only a comment\n", "\n\n"])
def test_an_empty_policy_is_refused(text: str | bytes) -> None:
    """An empty file (or one caught mid-write by hot reload) must never replace a working policy."""
    assert problems_of(text) == ["policy.yaml: the policy is empty"]


@pytest.mark.parametrize("text", ["version: 1\n", b"version: 1\n"])
def test_empty_policy_is_all_defaults(text: str | bytes) -> None:
    policy = parse_policy(text)
    assert policy == Policy()
    assert policy.server.listen == "127.0.0.1:8080"
    assert policy.retries.attempts == 2
    assert policy.providers == {} and policy.keys == []


def test_minimal_working_policy() -> None:
    policy = parse_policy(MINIMAL)
    local = policy.providers["local"]
    assert isinstance(local, VllmConf)
    assert local.base_url == "http://127.0.0.1:8000/v1"
    assert local.api_key_env is None and local.engine is None
    assert policy.models["small"].provider == "local"
    assert policy.models["small"].model == "tiny"
    assert policy.routes["auto"].strategy == "priority"
    assert policy.routes["auto"].models == ["small"]


def test_openai_provider_defaults_to_the_public_base_url() -> None:
    policy = parse_policy("providers:\n  openai: {type: openai, api_key_env: OPENAI_API_KEY}\n")
    conf = policy.providers["openai"]
    assert isinstance(conf, OpenAIConf)
    assert conf.base_url == "https://api.openai.com/v1"
    assert conf.api_key_env == "OPENAI_API_KEY"


def _policy_md() -> dict[str, Any]:
    return yaml.safe_load(POLICY_MD.read_text())


def _without_provider_types(doc: dict[str, Any], keep: set[str]) -> dict[str, Any]:
    """POLICY.md minus providers of types this version lacks (and the models on them)."""
    doc = copy.deepcopy(doc)
    doc["providers"] = {n: p for n, p in doc["providers"].items() if p["type"] in keep}
    gone = {n for n, m in doc["models"].items() if m["provider"] not in doc["providers"]}
    doc["models"] = {n: m for n, m in doc["models"].items() if n not in gone}
    for route in doc["routes"].values():
        if "models" in route:
            route["models"] = [m for m in route["models"] if m not in gone]
        for rung in route.get("rungs", []):
            rung["models"] = [m for m in rung["models"] if m not in gone]
        route["rungs"] = [r for r in route.get("rungs", []) if r["models"]]
    return doc


def _supported_subset(doc: dict[str, Any]) -> dict[str, Any]:
    doc = _without_provider_types(doc, set(PROVIDER_TYPES))
    doc["routes"] = {
        n: r
        for n, r in doc["routes"].items()
        if r.get("strategy", "priority") in IMPLEMENTED_STRATEGIES and (r.get("models") or r.get("rungs"))
    }
    for key in doc["keys"]:
        key["routes"] = [r for r in key["routes"] if r in doc["routes"]]
    return doc


def test_policy_md_loads_in_every_part_this_version_supports() -> None:
    policy = parse_policy(yaml.safe_dump(_supported_subset(_policy_md())))
    assert policy.server.admin_listen == "127.0.0.1:8081"
    assert policy.server.admin_token_env == "ESCALADE_ADMIN_TOKEN"
    assert policy.state.backend == "memory" and policy.state.redis_url_env == "REDIS_URL"
    local = policy.providers["local"]
    assert isinstance(local, VllmConf) and local.engine is not None
    assert local.engine.model == "mistralai/Mistral-Small-4-119B-2603"
    assert local.engine.served_model_name == "mistral-small-4"
    assert local.engine.args[:2] == ["--tensor-parallel-size", "2"]
    assert local.engine.ready_timeout_s == 900
    assert policy.providers["openai"].api_key_env == "OPENAI_API_KEY"
    small4 = policy.models["small4"]
    assert (small4.local, small4.context_window, small4.price.input_per_mtok) == (True, 262144, 0.0)
    assert small4.capabilities == ["tools", "json_schema", "vision", "logprobs", "reasoning"]
    assert policy.models["gpt-large"].price.output_per_mtok == 15.0
    assert policy.routes["private"].data_residency == "local"
    assert policy.routes["gpt-5.4"].models[0] == "gpt-large"
    key = policy.keys[0]
    assert (key.name, key.key_sha256, key.rpm, key.tpm) == ("support-bot", SHA, 600, 200000)
    assert key.budget is not None and (key.budget.usd, key.budget.period) == (50, "day")
    assert (policy.timeouts.first_token_s, policy.timeouts.total_s) == (15, 600)
    assert (policy.retries.attempts, policy.retries.retry_after_cap_s) == (2, 10)


def test_policy_md_unsupported_provider_types_are_named_as_such() -> None:
    missing = {p["type"] for p in _policy_md()["providers"].values()} - set(PROVIDER_TYPES)
    if not missing:  # every provider type exists: it loads, or only unimplemented strategies are named
        try:
            parse_policy(POLICY_MD.read_text(), "policy.yaml")
        except PolicyError as error:
            assert all("not available in this version" in p for p in error.problems), error.problems
        return
    for problem in problems_of(POLICY_MD.read_text()):
        pattern = r"Invalid value '(\w+)' - at `\$\.providers\.\w+\.type` \(provider types available: "
        assert re.search(pattern, problem), problem


def test_policy_md_unimplemented_strategies_are_the_only_other_problems() -> None:
    doc = _without_provider_types(_policy_md(), set(PROVIDER_TYPES))
    text = yaml.safe_dump(doc)
    unimplemented = {n for n, r in doc["routes"].items() if r.get("strategy", "priority") not in IMPLEMENTED_STRATEGIES}
    if not unimplemented:
        parse_policy(text)
        return
    problems = problems_of(text)
    assert len(problems) == len(unimplemented)
    for name in unimplemented:
        assert any(f"`$.routes.{name}.strategy`" in p and "not available in this version" in p for p in problems), name


def test_readme_policy_example_loads() -> None:
    readme = (ROOT / "README.md").read_text()
    examples = [b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "providers:" in b]
    assert examples, "README.md shows a policy"
    for example in examples:
        parse_policy(example)


@pytest.mark.parametrize("path", sorted((ROOT / "deploy" / "policies").glob("*.yaml")), ids=lambda p: p.name)
def test_every_deploy_policy_loads(path: Path) -> None:
    policy = parse_policy(path.read_bytes(), str(path))
    assert policy.routes, f"{path.name} defines no routes"


def test_deploy_policies_exist() -> None:
    assert list((ROOT / "deploy" / "policies").glob("*.yaml"))


# ---------------------------------------------------------------- unknown fields


def test_unknown_top_level_field_names_it_and_its_line() -> None:
    problem = only_problem("version: 1\nserver: {}\nrouting: {}\n")
    assert problem.startswith("policy.yaml: ")
    assert "unknown field `routing`" in problem
    assert problem.endswith("(line 3)")


def test_unknown_top_level_field_names_its_path() -> None:
    assert "`$.routing`" in only_problem("version: 1\nserver: {}\nrouting: {}\n")


NESTED_TYPOS = [
    (
        "engine",
        """\
        providers:
          local:
            type: vllm
            base_url: http://127.0.0.1:8000/v1
            engine:
              model: m
              argz: [--x]
        """,
        "argz",
        "$.providers.local.engine",
    ),
    (
        "provider",
        """\
        providers:
          local:
            type: vllm
            base_url: http://127.0.0.1:8000/v1
            api_key_evn: KEY
        """,
        "api_key_evn",
        "$.providers.local",
    ),
    (
        "model",
        """\
        providers:
          p: {type: openai}
        models:
          m:
            provider: p
            model: x
            context_windw: 8
        """,
        "context_windw",
        "$.models.m",
    ),
    (
        "gate",
        """\
        providers:
          p: {type: openai}
        models:
          m: {provider: p, model: x}
        routes:
          r:
            models: [m]
            gate:
              min_scor: 0.5
        """,
        "min_scor",
        "$.routes.r.gate",
    ),
    (
        "rung",
        """\
        routes:
          r:
            rungs:
              - models: [m]
                reasoning: high
        """,
        "reasoning",
        "$.routes.r.rungs[0]",
    ),
    (
        "key",
        f"""\
        keys:
          - name: k
            key_sha256: {SHA}
            rmp: 60
        """,
        "rmp",
        "$.keys[0]",
    ),
    ("server", "server:\n  listne: 0.0.0.0:8080\n", "listne", "$.server"),
    ("timeouts", "timeouts:\n  total: 10\n", "total", "$.timeouts"),
    ("price", "models:\n  m:\n    provider: p\n    model: x\n    price: {input: 1}\n", "input", "$.models.m.price"),
]


@pytest.mark.parametrize(("text", "field", "path"), [c[1:] for c in NESTED_TYPOS], ids=[c[0] for c in NESTED_TYPOS])
def test_unknown_nested_field_names_path_and_line(text: str, field: str, path: str) -> None:
    text = textwrap.dedent(text)
    problem = only_problem(text)
    assert f"unknown field `{field}`" in problem
    assert f"- at `{path}`" in problem
    assert problem.endswith(f"(line {line_of(text, field + ':')})")


def test_every_problem_in_one_pass_is_reported() -> None:
    text = "server:\n  listne: x\ntimeouts:\n  totl: 1\nretries:\n  attempt: 3\n"
    problems = problems_of(text)
    assert len(problems) == 3
    assert [p.rsplit("(line ", 1)[1] for p in problems] == ["2)", "4)", "6)"]


# ---------------------------------------------------------------- wrong types


@pytest.mark.parametrize(
    ("text", "path", "needle"),
    [
        ("server:\n  max_n: many\n", "$.server.max_n", "max_n:"),
        ("timeouts:\n  total_s: ten\n", "$.timeouts.total_s", "total_s:"),
        ("models:\n  m: {provider: p, model: x, context_window: lots}\n", "$.models.m.context_window", "m:"),
        (
            "providers:\n  l:\n    type: vllm\n    base_url: http://x\n"
            "    engine:\n      model: m\n      args: [a, 5]\n",
            "$.providers.l.engine.args[1]",
            "args:",
        ),
        (f"keys:\n  - name: k\n    key_sha256: {SHA}\n    rpm: fast\n", "$.keys[0].rpm", "rpm:"),
        ("providers: [openai]\n", "$.providers", "providers:"),
        ("models:\n  m: {provider: p, model: x, capabilities: [telepathy]}\n", "$.models.m.capabilities[0]", "m:"),
        ("state:\n  backend: etcd\n", "$.state.backend", "backend:"),
        ("version: 2\n", "$.version", "version:"),
    ],
)
def test_wrong_type_names_path_and_line(text: str, path: str, needle: str) -> None:
    problem = only_problem(text)
    assert f"`{path}`" in problem
    assert problem.endswith(f"(line {line_of(text, needle)})")


def test_missing_required_field_is_named() -> None:
    problem = only_problem("providers:\n  p: {type: openai}\nmodels:\n  m: {provider: p}\n")
    assert "missing required field `model`" in problem
    assert "`$.models.m`" in problem and problem.endswith("(line 4)")


def test_unknown_provider_type_lists_the_available_types() -> None:
    problem = only_problem("providers:\n  b:\n    type: bedrock\n")
    assert "'bedrock'" in problem and "`$.providers.b.type`" in problem
    available = problem.split("provider types available: ", 1)[1]
    for tag in PROVIDER_TYPES:
        assert tag in available
    assert problem.endswith("(line 3)")


def test_provider_without_type_is_named() -> None:
    problem = only_problem("providers:\n  p: {base_url: http://x}\n")
    assert "`type`" in problem and "`$.providers.p`" in problem


# ---------------------------------------------------------------- references and rules


def test_unknown_model_provider_and_route_references_are_all_reported() -> None:
    text = textwrap.dedent(
        f"""\
        providers:
          p: {{type: openai}}
        models:
          a: {{provider: nope, model: x}}
          b: {{provider: p, model: y}}
        routes:
          r: {{models: [a, ghost]}}
          c:
            rungs:
              - {{models: [b, phantom]}}
        keys:
          - {{name: k, key_sha256: {SHA}, routes: [r, nowhere]}}
        """
    )
    problems = problems_of(text)
    expected = [
        ("unknown provider `nope`", "$.models.a.provider", "a: {provider"),
        ("unknown model `ghost`", "$.routes.r.models", "r: {models"),
        ("unknown route `nowhere`", "$.keys[0].routes", "- {name: k"),
    ]
    for message, path, needle in expected:
        match = [p for p in problems if message in p]
        assert len(match) == 1, (message, problems)
        assert f"`{path}`" in match[0]
        assert match[0].endswith(f"(line {line_of(text, needle)})")
    assert any("unknown model `phantom`" in p and "`$.routes.c" in p for p in problems), problems


@pytest.mark.parametrize(
    "digest",
    [
        SHA.upper(),
        SHA[:-1],
        SHA + "0",
        "z" * 64,
        "sk-my-actual-client-key",
        "",
    ],
    ids=["uppercase", "63-chars", "65-chars", "not-hex", "raw-key", "empty"],
)
def test_bad_key_sha256_is_rejected(digest: str) -> None:
    problem = only_problem(f"keys:\n  - name: k\n    key_sha256: '{digest}'\n")
    assert "`$.keys[0].key_sha256`" in problem
    assert "64 lowercase hex" in problem
    assert problem.endswith("(line 3)")


def test_the_same_key_twice_is_rejected() -> None:
    problem = only_problem(f"keys:\n  - {{name: a, key_sha256: {SHA}}}\n  - {{name: b, key_sha256: {SHA}}}\n")
    assert "twice" in problem and "`$.keys[1].key_sha256`" in problem and problem.endswith("(line 3)")


@pytest.mark.parametrize(
    ("text", "path", "words"),
    [
        ("providers:\n  p: {type: openai, api_key_env: K, api_key_file: /run/k}\n", "$.providers.p", "not both"),
        ("providers:\n  p: {type: vllm}\n", "$.providers.p.base_url", "required"),
        (
            "providers:\n  p: {type: openai}\nmodels:\n  m: {provider: p, model: x}\n"
            "routes:\n  r: {models: [m], data_residency: local}\n",
            "$.routes.r.models",
            "not local: true",
        ),
        ("routes:\n  r: {strategy: priority}\n", "$.routes.r", "at least one model"),
        ("retries: {attempts: 0}\n", "$.retries.attempts", "at least 1"),
        ("server: {max_n: 0}\n", "$.server.max_n", "at least 1"),
    ],
)
def test_cross_section_rules(text: str, path: str, words: str) -> None:
    problem = only_problem(text)
    assert f"`{path}`" in problem and words in problem


def test_every_contract_strategy_is_implemented() -> None:
    """POLICY.md's strategies are all built: none is refused as "not available in this version"."""
    assert set(get_args(Strategy)) == IMPLEMENTED_STRATEGIES == {
        "priority", "weighted", "lowest_cost", "lowest_latency", "cascade"
    }


def test_misspelt_strategy_is_a_type_error() -> None:
    problem = only_problem("routes:\n  r: {strategy: cheapest, models: [m]}\n")
    assert "`$.routes.r.strategy`" in problem


# ---------------------------------------------------------------- YAML itself


@pytest.mark.parametrize(
    "text",
    [
        "version: 1\nretries: {attempts: 2}\nretries: {attempts: 5}\n",
        "providers:\n  p: {type: openai}\n  p: {type: vllm, base_url: http://x}\n",
    ],
    ids=["top-level", "provider-name"],
)
def test_duplicate_yaml_keys_are_rejected(text: str) -> None:
    problems_of(text)


@pytest.mark.parametrize(
    "tag",
    [
        "!!python/object/apply:os.system",
        "!!python/object/new:os.system",
        "!!python/object/apply:subprocess.check_output",
    ],
)
def test_python_tags_are_rejected_and_nothing_runs(tmp_path: Path, tag: str) -> None:
    marker = tmp_path / "pwned"
    arg = f"[touch {marker}]" if "subprocess" not in tag else f"[[touch, {marker}]]"
    for text in (
        f"version: {tag} {arg}\n",
        f"providers:\n  p:\n    type: openai\n    headers: {{x: {tag} {arg}}}\n",
    ):
        problem = only_problem(text)
        assert "not valid YAML" in problem
        assert "python/" in problem
    assert not marker.exists()


def test_python_name_tag_is_rejected() -> None:
    assert "not valid YAML" in only_problem("version: !!python/name:os.system\n")


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("providers: [unclosed\n", None),
        ("server:\n  listen: 1\n bad_indent: 2\n", 3),
        ("routes:\n  r: {models: [a}\n", 2),
        ("a: b: c\n", 1),
        ("\tversion: 1\n", 1),
    ],
)
def test_invalid_yaml_syntax_is_one_clear_problem(text: str, line: int | None) -> None:
    problem = only_problem(text)
    assert problem.startswith("policy.yaml: not valid YAML")
    if line is not None:
        assert f"line {line}" in problem


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(text: str) -> None:
    assert "mapping at the top level" in only_problem(text)


def test_policy_is_frozen() -> None:
    policy = parse_policy(MINIMAL)
    with pytest.raises(AttributeError):
        policy.retries = policy.retries  # type: ignore[misc]

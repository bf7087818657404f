"""policies.router.plan: deployments that cannot serve a request are skipped, with the reason."""

import pytest

from policies.loader import parse_policy
from policies.router import capabilities_of, plan
from providers.errors import InvalidRequest

POLICY = parse_policy(
    """
providers:
  oai: {type: openai, base_url: "http://127.0.0.1:1/v1"}
  claude: {type: anthropic, api_key_env: NOT_READ_HERE}
models:
  plain: {provider: oai, model: a, capabilities: [json_schema]}
  full: {provider: oai, model: b}
  sonnet: {provider: claude, model: c}
routes:
  auto: {models: [plain, full, sonnet]}
  plain-only: {models: [plain]}
  claude-only: {models: [sonnet]}
"""
)


def names(p) -> list[str]:
    return [c.name for c in p.candidates]


def test_declared_features_restrict_and_endpoints_come_from_the_adapter():
    assert capabilities_of(POLICY, POLICY.models["plain"]) == {"json_schema", "embeddings", "completions"}
    assert "tools" in capabilities_of(POLICY, POLICY.models["full"])
    assert "logprobs" not in capabilities_of(POLICY, POLICY.models["sonnet"])  # the anthropic adapter cannot


def test_no_needs_keeps_every_deployment_in_order():
    assert names(plan(POLICY, "auto")) == ["plain", "full", "sonnet"]


def test_tools_skip_the_deployment_without_them():
    p = plan(POLICY, "auto", needs=frozenset({"tools"}))
    assert names(p) == ["full", "sonnet"]
    assert p.skipped == (("plain", "cannot serve tools"),)


def test_logprobs_skip_anthropic():
    p = plan(POLICY, "auto", needs=frozenset({"logprobs"}))
    assert names(p) == ["full"]
    assert dict(p.skipped) == {"plain": "cannot serve logprobs", "sonnet": "cannot serve logprobs"}


def test_reasoning_is_soft_and_never_filters():
    assert names(plan(POLICY, "plain-only", needs=frozenset({"reasoning"}))) == ["plain"]


def test_nothing_able_is_a_400_naming_what_is_missing():
    with pytest.raises(InvalidRequest, match="cannot serve embeddings") as info:
        plan(POLICY, "claude-only", needs=frozenset({"embeddings"}))
    assert info.value.status == 400 and info.value.param == "model"

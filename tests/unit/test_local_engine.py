"""Pure parts of the local engine: its command line (golden), /metrics parsing, routing on live signals,
and how reasoning depth reaches vLLM."""

from pathlib import Path

import msgspec
import pytest

from local_engine.command import build_argv, engine_address
from local_engine.metrics import parse_metrics
from policies.loader import parse_policy
from policies.router import plan
from policies.signals import EngineSignals, readiness_only
from providers.base import Call, Inbound, Timeouts
from providers.errors import NoEligibleRoute
from providers.openai_compat.adapter import OpenAICompatProvider
from providers.openai_compat.config import EngineConf, VllmConf

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "deploy" / "policies"


def engine_argv(policy_file: str, provider: str = "local") -> list[str]:
    policy = parse_policy((POLICIES / policy_file).read_bytes(), policy_file)
    conf = policy.providers[provider]
    assert isinstance(conf, VllmConf) and conf.engine is not None
    return build_argv(conf.engine, conf.base_url or "")


# ---------------------------------------------------------------- command line (golden)


def test_mistral_small_4_production_command_line() -> None:
    assert engine_argv("mistral-small-4.yaml") == [
        "vllm", "serve", "mistralai/Mistral-Small-4-119B-2603",
        "--served-model-name", "mistral-small-4",
        "--host", "127.0.0.1", "--port", "8000",
        "--tensor-parallel-size", "2",
        "--max-model-len", "262144",
        "--gpu-memory-utilization", "0.90",
        "--max-num-seqs", "128",
        "--max-num-batched-tokens", "16384",
        "--attention-backend", "FLASH_ATTN_MLA",
        "--tool-call-parser", "mistral", "--enable-auto-tool-choice",
        "--reasoning-parser", "mistral",
    ]  # fmt: skip


def test_mistral_small_4_nvfp4_command_line() -> None:
    assert engine_argv("mistral-small-4-nvfp4.yaml") == [
        "vllm", "serve", "mistralai/Mistral-Small-4-119B-2603-NVFP4",
        "--served-model-name", "mistral-small-4",
        "--host", "127.0.0.1", "--port", "8000",
        "--max-model-len", "262144",
        "--gpu-memory-utilization", "0.90",
        "--max-num-seqs", "64",
        "--max-num-batched-tokens", "16384",
        "--attention-backend", "TRITON_MLA",
        "--tool-call-parser", "mistral", "--enable-auto-tool-choice",
        "--reasoning-parser", "mistral",
    ]  # fmt: skip


def test_cpu_quickstart_command_line_uses_the_api_server_module() -> None:
    assert engine_argv("local-cpu.yaml") == [
        "/tmp/escalade-vllm/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server",
        "--model", "/tmp/escalade-vllm/tiny-mixtral",
        "--served-model-name", "tiny-mixtral",
        "--host", "127.0.0.1", "--port", "8765",
        "--dtype", "float32", "--enforce-eager",
        "--max-model-len", "2048",
        "--enable-auto-tool-choice", "--tool-call-parser", "mistral", "--reasoning-parser", "mistral",
        "--structured-outputs-config",
        '{"backend":"xgrammar","disable_any_whitespace":true,"enable_in_reasoning":true}',
    ]  # fmt: skip


def test_defaults_are_vllm_serve_and_no_name() -> None:
    conf = EngineConf(model="org/model")
    assert build_argv(conf, "http://localhost:9000/v1") == [
        "vllm", "serve", "org/model", "--host", "localhost", "--port", "9000",
    ]  # fmt: skip


@pytest.mark.parametrize("arg", ["--port", "--port=9000", "--host", "--served-model-name", "--model"])
def test_args_may_not_set_what_escalade_sets(arg: str) -> None:
    conf = EngineConf(model="m", args=["--dtype", "float32", arg, "x"])
    with pytest.raises(ValueError, match=arg.split("=")[0]):
        build_argv(conf, "http://127.0.0.1:8000/v1")


@pytest.mark.parametrize("url", ["https://127.0.0.1:8000/v1", "127.0.0.1:8000", "http:///v1"])
def test_a_managed_engine_needs_a_plain_http_address(url: str) -> None:
    with pytest.raises(ValueError, match="http://"):
        build_argv(EngineConf(model="m"), url)


def test_engine_address() -> None:
    assert engine_address("http://127.0.0.1:8765/v1").origin == "http://127.0.0.1:8765"
    six = engine_address("http://[::1]:8000/v1")
    assert (six.host, six.port, six.origin) == ("::1", 8000, "http://[::1]:8000")
    assert engine_address("http://gpu-box/v1").port == 80


def test_escalade_check_rejects_an_engine_that_sets_its_own_port(tmp_path: Path) -> None:
    from gateway.cli import main

    bad = tmp_path / "p.yaml"
    bad.write_text(
        "providers:\n  local:\n    type: vllm\n    base_url: http://127.0.0.1:8000/v1\n"
        "    engine: {model: m, args: [--port, '9']}\n"
    )
    assert main(["check", str(bad)]) == 1


# ---------------------------------------------------------------- /metrics

VLLM_0_32_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny-mixtral"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny-mixtral"} 5.0
# HELP vllm:num_requests_waiting_by_reason Number of waiting requests by reason.
# TYPE vllm:num_requests_waiting_by_reason gauge
vllm:num_requests_waiting_by_reason{engine="0",model_name="tiny-mixtral",reason="capacity"} 5.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="tiny-mixtral",reason="deferred"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tiny-mixtral"} 0.125
vllm:num_preemptions_total{engine="0",model_name="tiny-mixtral"} 0.0
python_gc_objects_collected_total{generation="0"} 12345.0
"""


def test_parse_vllm_metrics() -> None:
    load = parse_metrics(VLLM_0_32_METRICS)
    assert (load.waiting, load.running, load.kv_cache_usage) == (5.0, 2.0, 0.125)


def test_counts_sum_over_engines_and_the_kv_cache_takes_the_fullest() -> None:
    text = (
        'vllm:num_requests_waiting{engine="0",model_name="m"} 3\n'
        'vllm:num_requests_waiting{engine="1",model_name="m"} 4 1700000000000\n'
        'vllm:num_requests_running{engine="0",model_name="m"} 1\n'
        'vllm:num_requests_running{engine="1",model_name="m"} 1\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5\n'
        'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75\n'
    )
    load = parse_metrics(text)
    assert (load.waiting, load.running, load.kv_cache_usage) == (7.0, 2.0, 0.75)


def test_missing_and_malformed_samples_are_unknown() -> None:
    text = 'vllm:num_requests_waiting{engine="0"} NaN\nvllm:num_requests_running garbage\nvllm:kv_cache_usage_perc\n'
    load = parse_metrics(text)
    assert (load.waiting, load.running, load.kv_cache_usage) == (None, None, None)
    assert parse_metrics("vllm:num_requests_waiting 2\n").waiting == 2.0  # no labels
    assert parse_metrics('vllm:num_requests_waiting{path="a}b"} 1\n').waiting == 1.0


# ---------------------------------------------------------------- routing on live signals

POLICY = parse_policy(
    """
providers:
  local: {type: vllm, base_url: "http://127.0.0.1:8000/v1", engine: {model: m}}
  remote: {type: openai, base_url: "http://remote/v1"}
models:
  small: {provider: local, model: m, max_queue: 4}
  nolimit: {provider: local, model: m}
  big: {provider: remote, model: gpt}
routes:
  auto: {models: [small, big]}
  local-only: {models: [small]}
  unlimited: {models: [nolimit, big]}
  ladder:
    strategy: cascade
    gate: {checks: [empty]}
    rungs:
      - {models: [small], reasoning_effort: none}
      - {models: [small], reasoning_effort: high}
      - {models: [big]}
  high-route:
    strategy: cascade
    gate: {checks: [empty]}
    reasoning_effort: high
    rungs:
      - {models: [small], reasoning_effort: none}
      - {models: [big]}
"""
)


def names(route: str, signals: dict[str, EngineSignals]) -> list[str]:
    return [c.name for c in plan(POLICY, route, signals).candidates]


def test_a_ready_engine_with_a_short_queue_is_tried_first() -> None:
    ready = {"local": EngineSignals(ready=True, waiting=4)}
    assert names("auto", ready) == ["small", "big"]
    assert names("auto", {}) == ["small", "big"]  # no signals: nothing is filtered (escalade check)


def test_a_starting_engine_is_skipped_and_the_skip_is_recorded() -> None:
    starting = {"local": EngineSignals(ready=False, state="starting")}
    p = plan(POLICY, "auto", starting)
    assert [c.name for c in p.candidates] == ["big"]
    assert p.skipped == (("small", "local engine `local` is starting"),)


def test_a_queue_deeper_than_max_queue_spills_to_the_next_deployment() -> None:
    busy = {"local": EngineSignals(ready=True, waiting=5, running=8)}
    p = plan(POLICY, "auto", busy)
    assert [c.name for c in p.candidates] == ["big"]
    assert "5 requests queued (max_queue 4)" in p.skipped[0][1]
    assert names("unlimited", busy) == ["nolimit", "big"]  # no max_queue: never skipped for load
    assert names("auto", {"local": EngineSignals(ready=True, waiting=None)}) == ["small", "big"]  # unknown load


@pytest.mark.parametrize(
    ("signal", "says", "retry_after"),
    [
        (EngineSignals(ready=False, state="restarting"), "local engine `local` is restarting", "5"),
        (EngineSignals(ready=True, waiting=9), "local engine `local` has 9 requests queued (max_queue 4)", "1"),
    ],
)
def test_nothing_left_is_a_503_that_says_why(signal: EngineSignals, says: str, retry_after: str) -> None:
    with pytest.raises(NoEligibleRoute) as caught:
        plan(POLICY, "local-only", {"local": signal})
    error = caught.value
    assert error.status == 503 and error.code == "no_eligible_deployment"
    assert "route local-only" in error.message and f"small: {says}" in error.message
    assert error.headers() == {"retry-after": retry_after}


def test_readiness_ignores_load() -> None:
    busy = {"local": EngineSignals(ready=True, waiting=99)}
    assert names("local-only", readiness_only(busy)) == ["small"]


def test_rungs_carry_their_reasoning_effort() -> None:
    p = plan(POLICY, "ladder", {})
    assert [(c.name, c.overrides) for c in p.candidates] == [
        ("small", {"reasoning_effort": "none"}),
        ("small", {"reasoning_effort": "high"}),
        ("big", {}),
    ]
    # a rung's own effort wins over the route's, which applies to the other rungs
    p = plan(POLICY, "high-route", {})
    assert [c.overrides for c in p.candidates] == [{"reasoning_effort": "none"}, {"reasoning_effort": "high"}]


# ---------------------------------------------------------------- reasoning depth on the wire


def upstream_body(overrides: dict, client_body: dict) -> dict:
    provider = OpenAICompatProvider("local", VllmConf(base_url="http://127.0.0.1:1/v1"), None, Timeouts())
    call = Call(
        request_id="r", upstream_model="mistral-small-4", timeouts=Timeouts(), deadline=0.0, overrides=overrides
    )
    return msgspec.json.decode(provider._body(Inbound(typed=None, raw=client_body), call, stream=False))


def test_a_rung_effort_reaches_vllm_as_top_level_reasoning_effort_only() -> None:
    """vLLM rejects chat_template_kwargs in Mistral tokenizer mode (the production model): never send it."""
    (high,) = [c for c in plan(POLICY, "ladder", {}).candidates if c.overrides.get("reasoning_effort") == "high"]
    client = {"model": "ladder", "messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "none"}
    body = upstream_body(high.overrides, client)
    assert body["reasoning_effort"] == "high"  # the policy's rung wins over the client
    assert body["model"] == "mistral-small-4"
    assert "chat_template_kwargs" not in body and "chat_template" not in body
    assert "enable_thinking" not in body and "thinking" not in body


def test_the_client_effort_passes_through_when_the_policy_sets_none() -> None:
    (big,) = [c for c in plan(POLICY, "ladder", {}).candidates if c.name == "big"]
    body = upstream_body(big.overrides, {"model": "ladder", "messages": [], "reasoning_effort": "high"})
    assert body["reasoning_effort"] == "high" and "chat_template_kwargs" not in body

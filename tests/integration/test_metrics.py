"""/metrics on the admin listener: Prometheus text with exactly the names and labels dashboards use."""

import re

import httpx
import openai
import pytest

from policies.health import ModelHealth
from policies.signals import EngineSignals

PRICE = {"input_per_mtok": 1.0, "output_per_mtok": 2.0}
POLICY = {
    "models": {
        "primary": {"provider": "mock", "model": "PRIMARY"},
        "backup": {"provider": "mock", "model": "ok", "price": PRICE},
        "streamer": {"provider": "mock", "model": "ok?tokens=5", "price": PRICE},
        "cutter": {"provider": "mock", "model": "fault:cut?after=3"},
        "down": {"provider": "mock", "model": "fault:status?code=503"},
    },
    "routes": {
        "auto": {"models": ["primary", "backup"]},
        "stream": {"models": ["streamer"]},
        "cut": {"models": ["cutter"]},
        "down": {"models": ["down"]},
    },
}
EXPECTED = {
    "escalade_requests_total": ("counter", {"route", "model", "code"}),
    "escalade_request_errors_total": ("counter", {"route", "error_type"}),
    "escalade_request_duration_seconds": ("histogram", {"route", "model", "stream"}),
    "escalade_ttft_seconds": ("histogram", {"route", "model"}),
    "escalade_tokens_total": ("counter", {"route", "model", "direction"}),
    "escalade_cost_usd_total": ("counter", {"route", "model"}),
    "escalade_upstream_attempts_total": ("counter", {"route", "model", "outcome"}),
    "escalade_retries_total": ("counter", {"route", "model", "reason"}),
    "escalade_circuit_state": ("gauge", {"model"}),
    "escalade_engine_queue_depth": ("gauge", {"engine"}),
    "escalade_engine_running_requests": ("gauge", {"engine"}),
    "escalade_state_backend_healthy": ("gauge", {"backend"}),
}
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> tuple[dict[str, str], list[tuple[str, dict[str, str], float]]]:
    """Prometheus text format 0.0.4 -> ({name: type}, [(sample name, labels, value)]); strict about syntax."""
    types, samples = {}, []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
        elif line.startswith("# HELP ") or not line:
            continue
        else:
            m = _SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            labels = dict(_LABEL.findall(m.group(2) or ""))
            assert ",".join(f'{k}="{v}"' for k, v in labels.items()) == (m.group(2) or ""), line
            samples.append((m.group(1), labels, float(m.group(3))))
    return types, samples


def value(samples, name, **labels) -> float:
    found = [v for n, ls, v in samples if n == name and ls == labels]
    assert len(found) == 1, f"{name}{labels}: {found} in {[s for s in samples if s[0] == name]}"
    return found[0]


def scrape(gw, **kw) -> tuple[dict[str, str], list]:
    response = httpx.get(f"{gw.admin_url}/metrics", **kw)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def test_metrics_after_success_fallback_retry_stream_and_cut(make_gateway, mock):
    gw = make_gateway(POLICY)
    mock.script("PRIMARY", ["fault:status?code=503"])
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0, timeout=30)
    answer = c.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
    chunks = list(
        c.chat.completions.create(
            model="stream", messages=[{"role": "user", "content": "hi"}], stream=True, stream_options={"include_usage": True}
        )
    )
    with pytest.raises(openai.APIError):
        for _ in c.chat.completions.create(model="cut", messages=[{"role": "user", "content": "hi"}], stream=True):
            pass
    with pytest.raises(openai.InternalServerError):  # a stream that fails before its commit point: a 503
        c.chat.completions.create(model="down", messages=[{"role": "user", "content": "hi"}], stream=True)
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model='evil"route{with}\nnewline', messages=[{"role": "user", "content": "hi"}])
    gw.state.health = {"primary": ModelHealth(circuit="open"), "backup": ModelHealth(circuit="half_open")}
    gw.state.signals = {"local": EngineSignals(ready=True, state="ready", waiting=3, running=2)}

    types, samples = scrape(gw)
    for name, (kind, labels) in EXPECTED.items():
        assert types.get(name) == kind, name
        suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
        rows = [ls for n, ls, _ in samples if n in {name + s for s in suffixes}]
        assert rows, f"no sample of {name}"
        assert all(set(ls) - {"le"} == labels for ls in rows), (name, rows)
    cascade = {"escalade_gate_decisions_total", "escalade_escalations_total"}
    assert set(types) == set(EXPECTED) | cascade  # every family is listed, also before its first sample
    assert not [n for n, _, _ in samples if n in cascade]

    assert value(samples, "escalade_requests_total", route="auto", model="backup", code="200") == 1
    assert value(samples, "escalade_requests_total", route="stream", model="streamer", code="200") == 1
    assert value(samples, "escalade_requests_total", route="cut", model="cutter", code="200") == 1
    assert value(samples, "escalade_requests_total", route="unknown", model="none", code="404") == 1
    assert value(samples, "escalade_request_errors_total", route="unknown", error_type="ModelNotFound") == 1
    cut_errors = [ls for n, ls, _ in samples if n == "escalade_request_errors_total" and ls["route"] == "cut"]
    assert len(cut_errors) == 1 and cut_errors[0]["error_type"].startswith("Upstream")

    assert value(samples, "escalade_upstream_attempts_total", route="auto", model="primary", outcome="UpstreamUnavailable") == 2
    assert value(samples, "escalade_upstream_attempts_total", route="auto", model="backup", outcome="ok") == 1
    assert value(samples, "escalade_retries_total", route="auto", model="primary", reason="UpstreamUnavailable") == 1

    usage = answer.usage
    assert value(samples, "escalade_tokens_total", route="auto", model="backup", direction="input") == usage.prompt_tokens
    assert value(samples, "escalade_tokens_total", route="auto", model="backup", direction="output") == usage.completion_tokens
    cost = (usage.prompt_tokens * 1.0 + usage.completion_tokens * 2.0) / 1e6
    assert value(samples, "escalade_cost_usd_total", route="auto", model="backup") == pytest.approx(cost)
    stream_usage = chunks[-1].usage
    assert value(samples, "escalade_tokens_total", route="stream", model="streamer", direction="output") == (
        stream_usage.completion_tokens
    )

    count = value(samples, "escalade_request_duration_seconds_count", route="auto", model="backup", stream="false")
    assert count == 1
    buckets = [
        (ls["le"], v) for n, ls, v in samples
        if n == "escalade_request_duration_seconds_bucket" and ls.get("route") == "auto"
    ]  # fmt: skip
    assert buckets[-1] == ("+Inf", 1) and [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert value(samples, "escalade_request_duration_seconds_count", route="stream", model="streamer", stream="true") == 1
    assert value(samples, "escalade_ttft_seconds_count", route="stream", model="streamer") == 1
    ttft = value(samples, "escalade_ttft_seconds_sum", route="stream", model="streamer")
    total = value(samples, "escalade_request_duration_seconds_sum", route="stream", model="streamer", stream="true")
    assert 0 < ttft <= total
    assert not [ls for n, ls, _ in samples if n.startswith("escalade_ttft") and ls.get("route") in ("auto", "down")]
    assert value(samples, "escalade_requests_total", route="down", model="none", code="503") == 1
    assert value(samples, "escalade_request_duration_seconds_count", route="down", model="none", stream="true") == 1
    assert value(samples, "escalade_request_errors_total", route="down", error_type="UpstreamUnavailable") == 1

    assert value(samples, "escalade_circuit_state", model="primary") == 2
    assert value(samples, "escalade_circuit_state", model="backup") == 1
    assert value(samples, "escalade_circuit_state", model="cutter") == 0
    assert value(samples, "escalade_engine_queue_depth", engine="local") == 3
    assert value(samples, "escalade_engine_running_requests", engine="local") == 2
    assert value(samples, "escalade_state_backend_healthy", backend="memory") == 1
    routes = {ls["route"] for _, ls, _ in samples if "route" in ls}
    assert routes == {"auto", "stream", "cut", "down", "unknown"}  # the client's model string never becomes a label


def test_cascade_counters_have_their_labels(make_gateway):
    from gateway.metrics import escalation, gate_decision

    gw = make_gateway(POLICY)
    gate_decision(gw.state.metrics, "auto", 0, passed=False)
    gate_decision(gw.state.metrics, "auto", 0, passed=True)
    escalation(gw.state.metrics, "auto", 0, "low_confidence")
    gate_decision(None, "auto", 0, passed=True)  # no metrics (bare state): a no-op
    types, samples = scrape(gw)
    assert types["escalade_gate_decisions_total"] == "counter" and types["escalade_escalations_total"] == "counter"
    assert value(samples, "escalade_gate_decisions_total", route="auto", rung="0", result="fail") == 1
    assert value(samples, "escalade_gate_decisions_total", route="auto", rung="0", result="pass") == 1
    assert value(samples, "escalade_escalations_total", route="auto", from_rung="0", reason="low_confidence") == 1


def test_metrics_need_the_admin_token_when_one_is_set(make_gateway, monkeypatch):
    monkeypatch.setenv("ESC_TEST_ADMIN_TOKEN", "admin-canary-token-123")
    gw = make_gateway(POLICY, server={"admin_token_env": "ESC_TEST_ADMIN_TOKEN"})
    denied = httpx.get(f"{gw.admin_url}/metrics")
    assert denied.status_code == 401 and "admin-canary" not in denied.text
    types, _ = scrape(gw, headers={"authorization": "Bearer admin-canary-token-123"})
    assert "escalade_state_backend_healthy" in types
    assert httpx.get(f"{gw.base_url.removesuffix('/v1')}/metrics").status_code == 404  # never on the client listener


def test_a_cascade_counts_its_gate_decisions_and_escalations(make_gateway, mock):
    cascade = {
        "models": {
            "small": {"provider": "mock", "model": "replay:unsure", "local": True, "capabilities": ["logprobs"]},
            "sure": {"provider": "mock", "model": "replay:confident", "local": True, "capabilities": ["logprobs"]},
            "large": {"provider": "mock", "model": "ok"},
        },
        "routes": {
            "ladder": {"strategy": "cascade", "rungs": [{"models": ["small"]}, {"models": ["large"]}],
                       "gate": {"checks": ["empty"], "min_score": 0.6}},
            "easy": {"strategy": "cascade", "rungs": [{"models": ["sure"]}, {"models": ["large"]}],
                     "gate": {"checks": ["empty"], "min_score": 0.6}},
        },
    }  # fmt: skip
    gw = make_gateway(cascade)
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0, timeout=30)
    for route, stream in (("ladder", False), ("ladder", True), ("easy", False)):
        reply = c.chat.completions.create(model=route, messages=[{"role": "user", "content": "hi"}], stream=stream)
        if stream:
            list(reply)
    _, samples = scrape(gw)
    assert value(samples, "escalade_gate_decisions_total", route="ladder", rung="0", result="fail") == 2
    assert value(samples, "escalade_escalations_total", route="ladder", from_rung="0", reason="score") == 2
    assert value(samples, "escalade_gate_decisions_total", route="easy", rung="0", result="pass") == 1
    assert not [ls for n, ls, _ in samples if n == "escalade_escalations_total" and ls["route"] == "easy"]
    assert value(samples, "escalade_requests_total", route="ladder", model="large", code="200") == 2

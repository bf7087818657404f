"""Routing end to end with the OpenAI SDK: strategies, capability/context/residency filters, context fallback,
the cost cap header and the explain endpoint (SDK -> escalade -> mock upstream)."""

import json

import httpx
import openai
import pytest

from gateway.cli import main as cli_main
from gateway.explain import explain

PROVIDERS = {"mock": {"type": "openai", "base_url": "set-by-test"}}
MODELS = {
    # the mock answers each upstream model name; the name is the deployment in x-escalade-model
    "dear": {
        "provider": "mock",
        "model": "DEAR",
        "price": {"input_per_mtok": 3, "output_per_mtok": 15},
        "context_window": 200000,
    },
    "thrifty": {
        "provider": "mock",
        "model": "THRIFTY",
        "price": {"input_per_mtok": 0.2, "output_per_mtok": 0.8},
        "context_window": 2000,
        "capabilities": ["json_schema"],
    },
    "box": {
        "provider": "mock",
        "model": "BOX",
        "local": True,
        "context_window": 8000,
        "capabilities": ["tools", "json_schema"],
    },
}


def client(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0, timeout=30)


def user(text: str = "hello there") -> list[dict]:
    return [{"role": "user", "content": text}]


def ask(gw, route: str, **kw):
    raw = client(gw).chat.completions.with_raw_response.create(model=route, messages=kw.pop("messages", user()), **kw)
    raw.parse()
    return raw.headers


def served_by(gw, route: str, **kw) -> str:
    return ask(gw, route, **kw)["x-escalade-model"]


@pytest.fixture
def gateway(make_gateway):
    def start(**routes):
        return make_gateway(models=MODELS, routes=routes)

    return start


# ---------------------------------------------------------------- strategies


def test_priority_takes_the_first(gateway):
    gw = gateway(r={"strategy": "priority", "models": ["dear", "thrifty"]})
    assert served_by(gw, "r") == "dear"


def test_lowest_cost_takes_the_cheapest_estimate(gateway, mock):
    gw = gateway(r={"strategy": "lowest_cost", "models": ["dear", "thrifty"]})
    assert served_by(gw, "r", max_tokens=50) == "thrifty"
    assert [rec["model"] for rec in mock.records()] == ["THRIFTY"]


def test_cost_cap_of_the_route_and_the_header(gateway, mock):
    gw = gateway(r={"strategy": "priority", "models": ["dear", "thrifty"], "max_cost_usd": 0.01})
    # dear: 1000 output tokens * $15/M = $0.015 > cap: skipped, thrifty answers
    assert served_by(gw, "r", max_tokens=1000) == "thrifty"
    with pytest.raises(openai.BadRequestError) as info:
        ask(gw, "r", max_tokens=1000, extra_headers={"x-escalade-max-cost-usd": "0.0000001"})
    assert info.value.status_code == 400 and info.value.code == "cost_cap_exceeded"
    assert "dear: estimated cost" in info.value.message and "thrifty: estimated cost" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        ask(gw, "r", extra_headers={"x-escalade-max-cost-usd": "lots"})
    assert info.value.code == "invalid_value"
    assert [rec["model"] for rec in mock.records()] == ["THRIFTY"]  # refused requests never left


def test_lowest_latency_measures_explores_and_prefers_the_faster(make_gateway, mock):
    # both unmeasured at first: route order sends traffic to dear; exploration gets thrifty measured
    gw = make_gateway(
        models=MODELS,
        routes={"r": {"strategy": "lowest_latency", "models": ["dear", "thrifty"], "explore": 0.5}},
        state={"sync_interval_s": 0.05},
    )
    mock.script("DEAR", ["ok?latency=0.2"])
    mock.script("THRIFTY", ["ok"])
    for _ in range(40):  # P(thrifty never explored) = 0.5**40
        served_by(gw, "r")
        health = gw.state.health
        if all(name in health and health[name].samples >= 3 for name in ("dear", "thrifty")):
            break
    assert gw.state.health["dear"].samples >= 3 and gw.state.health["thrifty"].samples >= 3
    body = json.dumps({"model": "r", "messages": user()})
    explained = httpx.post(f"{gw.admin_url}/admin/route/explain", content=body, timeout=10).json()
    ranked = {c["deployment"]: c["estimated_latency_s"] for c in explained["candidates"]}
    assert list(ranked) == ["thrifty", "dear"]  # the measured order, exploration aside
    assert ranked["dear"] > 0.15 > ranked["thrifty"]  # the store bins latencies (about 5 % wide)


def test_lowest_latency_skips_an_open_circuit(make_gateway, mock):
    gw = make_gateway(
        models=MODELS,
        routes={"r": {"strategy": "lowest_latency", "models": ["dear", "thrifty"], "explore": 0}},
        resilience={"breaker": {"consecutive_failures": 1, "open_s": 30}},
        retries={"attempts": 1},
        state={"sync_interval_s": 0.05},
    )
    mock.script("DEAR", ["fault:503"])
    assert served_by(gw, "r") == "thrifty"  # dear failed, thrifty answered; dear's circuit opened
    assert served_by(gw, "r") == "thrifty"
    assert [rec["model"] for rec in mock.records()] == ["DEAR", "THRIFTY", "THRIFTY"]


def test_weighted_splits_and_weight_zero_only_backs_up(gateway, mock):
    gw = gateway(
        even={"strategy": "weighted", "models": ["dear", "thrifty"]},
        standby={"strategy": "weighted", "models": ["dear", "thrifty"], "weights": {"dear": 0, "thrifty": 1}},
    )
    assert {served_by(gw, "even") for _ in range(30)} == {"dear", "thrifty"}  # P(one only) = 2 * 0.5**30
    assert {served_by(gw, "standby") for _ in range(10)} == {"thrifty"}
    mock.script("THRIFTY", ["fault:503"])
    assert served_by(gw, "standby") == "dear"  # the standby takes over when the weighted one fails


# ---------------------------------------------------------------- filters


def test_capabilities_filter_tools_and_json_schema(gateway, mock):
    gw = gateway(r={"models": ["thrifty", "box"]})
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    assert served_by(gw, "r", tools=tools) == "box"  # thrifty declares no tools
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {}}}}
    assert served_by(gw, "r", response_format=schema) == "thrifty"


def test_vision_goes_to_a_model_that_sees(gateway):
    gw = gateway(r={"models": ["box", "dear"]})  # box declares no vision; dear declares nothing = all
    image = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        }
    ]
    assert served_by(gw, "r", messages=image) == "dear"


def test_context_window_filter_and_its_400(gateway, mock):
    gw = gateway(r={"strategy": "lowest_cost", "models": ["thrifty", "dear"]}, small={"models": ["thrifty"]})
    long_prompt = user("word " * 3000)  # ~15 kB: ~3,750 tokens by the estimate, over thrifty's 2,000
    assert served_by(gw, "r", messages=long_prompt, max_tokens=10) == "dear"
    with pytest.raises(openai.BadRequestError) as info:
        ask(gw, "small", messages=long_prompt, max_tokens=10)
    assert info.value.code == "context_length_exceeded" and "context window 2000" in info.value.message
    assert [rec["model"] for rec in mock.records()] == ["DEAR"]


def test_data_residency_local_only_uses_local_models(gateway, mock):
    gw = gateway(private={"models": ["box"], "data_residency": "local"})
    assert served_by(gw, "private") == "box"


def test_data_residency_local_refuses_a_non_local_model_at_load(make_gateway):
    with pytest.raises(Exception, match="is not local: true"):
        make_gateway(models=MODELS, routes={"private": {"models": ["box", "dear"], "data_residency": "local"}})


# ---------------------------------------------------------------- context fallback


def test_context_fallback_to_a_larger_window(gateway, mock):
    gw = gateway(r={"models": ["thrifty", "box", "dear"], "context_fallback": True})
    mock.script("THRIFTY", ["fault:context_length"])
    mock.script("BOX", ["fault:context_length"])
    headers = ask(gw, "r")
    assert headers["x-escalade-model"] == "dear" and headers["x-escalade-attempts"] == "3"
    assert [rec["model"] for rec in mock.records()] == ["THRIFTY", "BOX", "DEAR"]


def test_context_fallback_skips_windows_that_are_not_larger(gateway, mock):
    gw = gateway(r={"models": ["box", "thrifty", "dear"], "context_fallback": True})
    mock.script("BOX", ["fault:context_length"])  # 8000; thrifty's 2000 cannot help
    assert served_by(gw, "r") == "dear"
    assert [rec["model"] for rec in mock.records()] == ["BOX", "DEAR"]


def test_without_context_fallback_the_400_goes_to_the_client(gateway, mock):
    gw = gateway(r={"models": ["thrifty", "dear"]})
    mock.script("THRIFTY", ["fault:context_length"])
    with pytest.raises(openai.BadRequestError) as info:
        ask(gw, "r")
    assert info.value.code == "context_length_exceeded"
    assert [rec["model"] for rec in mock.records()] == ["THRIFTY"]


def test_context_fallback_streaming(gateway, mock):
    gw = gateway(r={"models": ["thrifty", "dear"], "context_fallback": True})
    mock.script("THRIFTY", ["fault:context_length"])
    raw = client(gw).chat.completions.with_raw_response.create(model="r", messages=user(), stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert raw.headers["x-escalade-model"] == "dear" and text == "mock answer to: hello there"


# ---------------------------------------------------------------- explain


ROUTES = {
    "cheap": {"strategy": "lowest_cost", "models": ["dear", "thrifty", "box"], "max_cost_usd": 0.01},
    "private": {"models": ["box"], "data_residency": "local"},
}
SAMPLE = {
    "model": "cheap",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 1000,
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
}


def test_explain_endpoint_and_command_show_the_same_decision(make_gateway, tmp_path, capsys):
    gw = make_gateway(models=MODELS, routes=ROUTES)
    body = json.dumps(SAMPLE).encode()
    response = httpx.post(f"{gw.admin_url}/admin/route/explain", content=body, timeout=10)
    assert response.status_code == 200
    got = response.json()
    assert got["route"] == "cheap" and got["strategy"] == "lowest_cost" and got["error"] is None
    assert [c["deployment"] for c in got["candidates"]] == ["box"]
    assert got["candidates"][0]["estimated_cost_usd"] == 0.0
    skipped = {s["deployment"]: s["reason"] for s in got["skipped"]}
    assert skipped["thrifty"] == "cannot serve tools"
    assert skipped["dear"].startswith("estimated cost $0.015") and skipped["dear"].endswith("over the cap $0.01")
    assert got["request"]["needs"] == ["tools"] and got["request"]["max_cost_usd"] == 0.01

    request_file = tmp_path / "request.json"
    request_file.write_bytes(body)
    assert cli_main(["check", str(gw.policy_path), "--explain", str(request_file)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == got
    assert printed == json.loads(json.dumps(explain(gw.state.runtime.policy, body, now=0.0)))


def test_explain_shows_the_refusal_a_client_would_get(make_gateway, tmp_path, capsys):
    gw = make_gateway(models=MODELS, routes=ROUTES)
    body = json.dumps({**SAMPLE, "tools": None})
    response = httpx.post(
        f"{gw.admin_url}/admin/route/explain", content=body, headers={"x-escalade-max-cost-usd": "0"}, timeout=10
    )
    got = response.json()
    # box is free and would fit even a $0 cap; thrifty and dear are over it
    assert [c["deployment"] for c in got["candidates"]] == ["box"]
    response = httpx.post(
        f"{gw.admin_url}/admin/route/explain",
        content=json.dumps({"model": "cheap", "messages": user("x " * 20000), "max_tokens": 10}),
        timeout=10,
    )
    got = response.json()
    # ~10k prompt tokens: over box's and thrifty's windows, and over the cap on dear
    assert got["candidates"] == [] and got["error"]["status"] == 400
    skipped = {s["deployment"]: s["reason"] for s in got["skipped"]}
    assert skipped["box"].startswith("context window 8000") and skipped["thrifty"].startswith("context window 2000")
    assert skipped["dear"].startswith("estimated cost")

    request_file = tmp_path / "r.json"
    request_file.write_text(json.dumps({"model": "private", "messages": user("x " * 20000), "max_tokens": 10}))
    assert cli_main(["check", str(gw.policy_path), "--explain", str(request_file)]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "context_length_exceeded"


def test_explain_rejects_what_the_gateway_would_reject(make_gateway):
    gw = make_gateway(models=MODELS, routes=ROUTES)
    bad = httpx.post(f"{gw.admin_url}/admin/route/explain", content=b"{nope", timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    unknown = httpx.post(f"{gw.admin_url}/admin/route/explain", json={"model": "nope", "messages": user()}, timeout=10)
    assert unknown.status_code == 404

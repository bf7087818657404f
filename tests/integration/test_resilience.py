"""Breaker, cooldowns, retry budget and key budgets end to end: the real gateway (memory store) in
front of the mock upstream, driven with the OpenAI SDK."""

import hashlib
import time

import httpx
import openai
import pytest
import yaml

HI = [{"role": "user", "content": "hi"}]


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def client(gw, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=30)


def ask(gw, model: str = "auto", key: str = "unused"):
    raw = client(gw, key).chat.completions.with_raw_response.create(model=model, messages=HI)
    return raw.headers, raw.parse()


def upstream_calls(mock, model: str) -> int:
    return sum(1 for r in mock.log if r.get("model") == model)


def wait_for(predicate, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def two_deployments(first: str, **extra) -> dict:
    return {
        "models": {"first": {"provider": "mock", "model": first}, "good": {"provider": "mock", "model": "ok"}},
        "routes": {"auto": {"models": ["first", "good"]}},
        "retries": {"attempts": 1},
        **extra,
    }


def test_circuit_opens_after_failures_then_a_probe_closes_it(make_gateway, mock):
    mock.script("flaky", ["fault:status?code=503", "fault:status?code=503", "ok"])
    gw = make_gateway(two_deployments(
        "flaky",
        resilience={"breaker": {"consecutive_failures": 2, "open_s": 2}},  # long enough for a loaded machine
        state={"sync_interval_s": 0.05},
    ))
    for _ in range(2):
        headers, _ = ask(gw)
        assert headers["x-escalade-model"] == "good" and headers["x-escalade-attempts"] == "2"
    assert upstream_calls(mock, "flaky") == 2
    assert gw.state.health["first"].circuit == "open"
    headers, _ = ask(gw)  # the open circuit is skipped: straight to the fallback
    assert headers["x-escalade-model"] == "good" and headers["x-escalade-attempts"] == "1"
    assert upstream_calls(mock, "flaky") == 2
    wait_for(lambda: gw.state.health["first"].circuit == "half_open")
    headers, _ = ask(gw)  # this request is the probe; the upstream has recovered
    assert headers["x-escalade-model"] == "first" and upstream_calls(mock, "flaky") == 3
    assert gw.state.health["first"].circuit == "closed"
    assert ask(gw)[0]["x-escalade-model"] == "first"


def test_429_cools_the_deployment_down_for_its_retry_after(make_gateway, mock):
    mock.script("limited", ["fault:429?retry_after=3", "ok"])
    gw = make_gateway(two_deployments("limited", state={"sync_interval_s": 0.05}))
    assert ask(gw)[0]["x-escalade-model"] == "good"
    entry = gw.state.health["first"]
    assert entry.circuit == "closed" and entry.cooldown_until > time.time() and "Retry-After 3s" in entry.why
    assert ask(gw)[0]["x-escalade-model"] == "good"
    assert upstream_calls(mock, "limited") == 1  # cooling down: not asked again
    wait_for(lambda: gw.state.health["first"].cooldown_until <= time.time(), timeout=5)
    assert ask(gw)[0]["x-escalade-model"] == "first"


def test_rejected_provider_key_cools_the_deployment_down(make_gateway, mock):
    gw = make_gateway(two_deployments("fault:auth", resilience={"auth_cooldown_s": 120}))
    assert ask(gw)[0]["x-escalade-model"] == "good"
    entry = gw.state.health["first"]
    assert entry.cooldown_until == pytest.approx(time.time() + 120, abs=5)
    for _ in range(3):
        assert ask(gw)[0]["x-escalade-attempts"] == "1"
    assert upstream_calls(mock, "fault:auth") == 1


def test_when_every_deployment_is_open_the_client_gets_503_saying_why(make_gateway, mock):
    gw = make_gateway({
        "models": {"bad": {"provider": "mock", "model": "fault:status?code=503"}},
        "routes": {"auto": {"models": ["bad"]}},
        "retries": {"attempts": 1},
        "resilience": {"breaker": {"consecutive_failures": 1, "open_s": 60}},
    })
    with pytest.raises(openai.APIStatusError) as first:
        ask(gw)
    assert first.value.status_code == 503
    with pytest.raises(openai.APIStatusError) as second:
        ask(gw)
    assert second.value.status_code == 503 and "circuit open" in second.value.message
    assert upstream_calls(mock, "fault:status?code=503") == 1


def test_retry_budget_turns_retries_into_fallbacks(make_gateway, mock):
    gw = make_gateway({
        "models": {"bad": {"provider": "mock", "model": "fault:status?code=500"},
                   "good": {"provider": "mock", "model": "ok"}},
        "routes": {"auto": {"models": ["bad", "good"]}},
        "retries": {"attempts": 3, "backoff_base_s": 0.001, "backoff_max_s": 0.002},
        "resilience": {"breaker": {"consecutive_failures": 1000, "min_requests": 1000, "window": 1000},
                       "retry_budget": {"ratio": 0.0, "min_per_s": 0.1}},  # one retry per 10 s window
    })
    assert ask(gw)[0]["x-escalade-attempts"] == "3"  # bad, its one budgeted retry, then good
    for _ in range(3):
        assert ask(gw)[0]["x-escalade-attempts"] == "2"  # budget spent: straight to the fallback
    assert upstream_calls(mock, "fault:status?code=500") == 5


def test_key_budget_refuses_with_429_once_spent(make_gateway, mock):
    gw = make_gateway({
        "models": {"paid": {"provider": "mock", "model": "ok?tokens=50",
                            "price": {"input_per_mtok": 1000, "output_per_mtok": 1000}}},
        "routes": {"auto": {"models": ["paid"]}},
        "keys": [{"name": "capped", "key_sha256": sha("sk-capped"), "budget": {"usd": 0.01, "period": "day"}},
                 {"name": "free", "key_sha256": sha("sk-free")}],
    })
    headers, _ = ask(gw, key="sk-capped")  # about 0.05 USD: admitted while 0 was spent
    cost = float(headers["x-escalade-cost-usd"])
    assert cost > 0.01
    assert gw.state.store.spent("capped", "day") == pytest.approx(cost)
    with pytest.raises(openai.RateLimitError) as refused:
        ask(gw, key="sk-capped")
    body = refused.value.body
    assert body["code"] == "budget_exceeded" and body["type"] == "insufficient_quota"
    assert 0 < int(refused.value.response.headers["retry-after"]) <= 86400
    assert ask(gw, key="sk-free")[0]["x-escalade-model"] == "paid"  # other keys are not affected


def test_stream_cost_is_charged_at_its_end(make_gateway, mock):
    gw = make_gateway({
        "models": {"paid": {"provider": "mock", "model": "ok?tokens=20",
                            "price": {"input_per_mtok": 1000, "output_per_mtok": 1000}}},
        "routes": {"auto": {"models": ["paid"]}},
        "keys": [{"name": "capped", "key_sha256": sha("sk-capped"), "budget": {"usd": 1, "period": "month"}}],
    })
    stream = client(gw, "sk-capped").chat.completions.create(model="auto", messages=HI, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    wait_for(lambda: (gw.state.store.spent("capped", "month") or 0) > 0)
    assert gw.state.store.spent("capped", "month") == pytest.approx((20 + 2) * 1000 / 1e6)


def test_readyz_names_the_state_backend(make_gateway):
    gw = make_gateway({"models": {"m": {"provider": "mock", "model": "ok"}}, "routes": {"auto": {"models": ["m"]}}})
    body = httpx.get(gw.base_url.removesuffix("/v1") + "/readyz").json()
    assert body["status"] == "ready" and body["state"]["backend"] == "memory"
    admin = httpx.get(gw.admin_url + "/admin/state").json()
    assert admin["store"]["backend"] == "memory" and admin["deployments"] == {}


def test_reload_that_changes_the_backend_restarts_the_store(make_gateway, mock, redis_server, monkeypatch):
    gw = make_gateway({"models": {"m": {"provider": "mock", "model": "ok"}}, "routes": {"auto": {"models": ["m"]}},
                       "state": {"sync_interval_s": 0.05}})
    readyz = gw.base_url.removesuffix("/v1") + "/readyz"
    policy = yaml.safe_load(gw.policy_path.read_text())
    monkeypatch.delenv("ESCALADE_TEST_REDIS", raising=False)
    prefix = f"reload-{time.time()}"
    policy["state"] = {"backend": "redis", "redis_url_env": "ESCALADE_TEST_REDIS", "key_prefix": prefix}
    gw.policy_path.write_text(yaml.safe_dump(policy))
    wait_for(lambda: "problem" in httpx.get(readyz).json()["state"], timeout=10)
    state = httpx.get(readyz).json()["state"]
    assert state["backend"] == "memory" and "ESCALADE_TEST_REDIS" in state["problem"]  # the old store serves on
    assert ask(gw)[0]["x-escalade-model"] == "m"

    monkeypatch.setenv("ESCALADE_TEST_REDIS", redis_server.url)
    policy["state"]["sync_interval_s"] = 0.05  # a change, so the keeper tries again
    gw.policy_path.write_text(yaml.safe_dump(policy))
    wait_for(lambda: httpx.get(readyz).json()["state"].get("connected") is True, timeout=10)
    assert gw.state.store.backend == "redis" and gw.state.observers.count(gw.state.store) == 1
    assert ask(gw)[0]["x-escalade-model"] == "m"
    wait_for(lambda: gw.state.health.get("m") is not None and gw.state.health["m"].samples == 1)


def test_key_rpm_refuses_with_429_and_retry_after(make_gateway, mock):
    gw = make_gateway({
        "models": {"m": {"provider": "mock", "model": "ok"}},
        "routes": {"auto": {"models": ["m"]}},
        "keys": [{"name": "slow", "key_sha256": sha("sk-slow"), "rpm": 2},
                 {"name": "free", "key_sha256": sha("sk-free")}],
    })
    for _ in range(2):
        assert ask(gw, key="sk-slow")[0]["x-escalade-model"] == "m"
    with pytest.raises(openai.RateLimitError) as refused:
        ask(gw, key="sk-slow")
    assert refused.value.body["code"] == "rate_limit_exceeded" and "2 requests/min" in refused.value.message
    assert 25 <= int(refused.value.response.headers["retry-after"]) <= 31
    assert upstream_calls(mock, "ok") == 2  # refused before any upstream call
    assert ask(gw, key="sk-free")[0]["x-escalade-model"] == "m"


def test_key_tpm_counts_the_tokens_of_answers(make_gateway, mock):
    gw = make_gateway({
        "models": {"m": {"provider": "mock", "model": "ok?tokens=100"}},
        "routes": {"auto": {"models": ["m"]}},
        "keys": [{"name": "wordy", "key_sha256": sha("sk-wordy"), "tpm": 60}],
    })
    assert ask(gw, key="sk-wordy")[0]["x-escalade-model"] == "m"  # admitted while the bucket had room
    with pytest.raises(openai.RateLimitError) as refused:  # its 102 tokens overfilled it
        ask(gw, key="sk-wordy")
    assert refused.value.body["code"] == "rate_limit_exceeded" and "60 tokens/min" in refused.value.message


def test_budgets_fail_closed_while_redis_is_unreachable(make_gateway, mock, monkeypatch):
    from tests.support.redis import free_port

    monkeypatch.setenv("ESCALADE_DEAD_REDIS", f"redis://127.0.0.1:{free_port()}/0")  # nothing listens
    gw = make_gateway({
        "models": {"m": {"provider": "mock", "model": "ok"}},
        "routes": {"auto": {"models": ["m"]}},
        "keys": [{"name": "capped", "key_sha256": sha("sk-capped"), "budget": {"usd": 5}},
                 {"name": "limited", "key_sha256": sha("sk-limited"), "rpm": 100},
                 {"name": "free", "key_sha256": sha("sk-free")}],
        "state": {"backend": "redis", "redis_url_env": "ESCALADE_DEAD_REDIS"},
    })
    with pytest.raises(openai.APIStatusError) as refused:
        ask(gw, key="sk-capped")
    assert refused.value.status_code == 503 and refused.value.body["code"] == "budget_store_unavailable"
    assert refused.value.response.headers["retry-after"]
    assert ask(gw, key="sk-limited")[0]["x-escalade-model"] == "m"  # rates fall back to a local limiter
    assert ask(gw, key="sk-free")[0]["x-escalade-model"] == "m"
    state = httpx.get(gw.base_url.removesuffix("/v1") + "/readyz").json()["state"]
    assert state["connected"] is False and "cannot reach Redis" in state["degraded"]

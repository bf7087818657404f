"""Hedging end to end: a slow first deployment is raced by the next one; the first to produce a token wins
and the loser's upstream connection is closed (the mock logs `client_closed`)."""

import time

import openai

MODELS = {
    "slow": {"provider": "mock", "model": "SLOW"},
    "quick": {"provider": "mock", "model": "QUICK"},
    "spare": {"provider": "mock", "model": "SPARE"},
}


def client(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0, timeout=30)


def hedged_gateway(make_gateway, **hedge):
    return make_gateway(models=MODELS, routes={"r": {"models": ["slow", "quick", "spare"], "hedge": hedge}})


def chat(gw, **kw):
    raw = client(gw).chat.completions.with_raw_response.create(
        model="r", messages=[{"role": "user", "content": "hi"}], **kw
    )
    return raw.headers, raw.parse()


def closed_by_gateway(mock, model: str) -> bool:
    return bool(mock.wait_for(lambda log: [r for r in log if r["model"] == model and r["outcome"] == "client_closed"]))


def test_unary_hedge_wins_and_the_slow_call_is_closed(make_gateway, mock):
    gw = hedged_gateway(make_gateway, after_s=0.3)
    mock.script("SLOW", ["ok?latency=3"])
    mock.script("QUICK", ["ok"])
    headers, answer = chat(gw)
    assert headers["x-escalade-model"] == "quick"
    assert headers["x-escalade-hedged"] == "true"
    assert headers["x-escalade-attempts"] == "2"
    assert answer.choices[0].message.content == "mock answer to: hi"
    assert closed_by_gateway(mock, "SLOW")
    assert not mock.records("SPARE")


def test_stream_hedge_wins_at_its_first_token_and_the_slow_stream_is_closed(make_gateway, mock):
    gw = hedged_gateway(make_gateway, after_s=0.3)
    mock.script("SLOW", ["ok?first_delay=3"])  # headers at once, then silence: no first token
    mock.script("QUICK", ["ok?tokens=5"])
    raw = client(gw).chat.completions.with_raw_response.create(
        model="r", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert raw.headers["x-escalade-model"] == "quick" and raw.headers["x-escalade-hedged"] == "true"
    assert len(text.split()) == 5
    assert closed_by_gateway(mock, "SLOW")


def test_first_still_wins_when_the_backup_is_slower(make_gateway, mock):
    gw = hedged_gateway(make_gateway, after_s=0.2)
    mock.script("SLOW", ["ok?latency=0.8"])
    mock.script("QUICK", ["ok?latency=3"])
    headers, _ = chat(gw)
    assert headers["x-escalade-model"] == "slow" and headers["x-escalade-hedged"] == "true"
    assert closed_by_gateway(mock, "QUICK")


def test_no_hedge_when_the_first_answers_in_time(make_gateway, mock):
    gw = hedged_gateway(make_gateway, after_s=1.5)
    mock.script("SLOW", ["ok"])
    headers, _ = chat(gw)
    assert headers["x-escalade-model"] == "slow" and "x-escalade-hedged" not in headers
    assert not mock.records("QUICK")


def test_a_fast_failure_falls_back_without_hedging(make_gateway, mock):
    gw = make_gateway(
        models=MODELS, routes={"r": {"models": ["slow", "quick"], "hedge": {"after_s": 1.5}}}, retries={"attempts": 1}
    )
    mock.script("SLOW", ["fault:503"])
    mock.script("QUICK", ["ok"])
    headers, _ = chat(gw)
    assert headers["x-escalade-model"] == "quick" and "x-escalade-hedged" not in headers


def test_both_racers_fail_then_the_third_answers(make_gateway, mock):
    gw = hedged_gateway(make_gateway, after_s=0.2)
    mock.script("SLOW", ["fault:503?delay=0.6"])
    mock.script("QUICK", ["fault:503"])
    mock.script("SPARE", ["ok"])
    headers, _ = chat(gw)
    assert headers["x-escalade-model"] == "spare" and headers["x-escalade-hedged"] == "true"
    models = [r["model"] for r in mock.records()]
    assert (models.count("SLOW"), models.count("QUICK"), models.count("SPARE")) == (2, 2, 1)  # 2 attempts each
    assert headers["x-escalade-attempts"] == "5"


def test_hedge_delay_comes_from_the_first_models_recent_ttft_p95(make_gateway, mock):
    gw = make_gateway(
        models=MODELS,
        routes={"r": {"models": ["slow", "quick", "spare"], "hedge": {"min_after_s": 0.1}}},
        state={"sync_interval_s": 0.05},
    )
    mock.script("SLOW", ["ok?latency=0.05"] * 3 + ["ok?latency=3"])  # quick three times, then stuck
    mock.script("QUICK", ["ok"])
    for _ in range(3):
        headers, _ = chat(gw)  # no figures yet, then p95 ~0.05 s: below min_after_s, never reached
        assert headers["x-escalade-model"] == "slow" and "x-escalade-hedged" not in headers
    deadline = time.monotonic() + 5
    while "slow" not in gw.state.health or gw.state.health["slow"].samples < 3:
        assert time.monotonic() < deadline, "the store did not publish the samples"
        time.sleep(0.02)
    headers, _ = chat(gw)  # now hedged after max(p95, 0.1 s)
    assert headers["x-escalade-model"] == "quick" and headers["x-escalade-hedged"] == "true"
    assert closed_by_gateway(mock, "SLOW")

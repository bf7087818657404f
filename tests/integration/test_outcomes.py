"""Every upstream attempt, and every committed stream's end, reaches the gateway's observers as an Outcome."""

import time

import openai
import pytest

ROUTE = {
    "models": {
        "bad": {"provider": "mock", "model": "fault:status?code=503"},
        "good": {"provider": "mock", "model": "ok"},
        "cutter": {"provider": "mock", "model": "fault:cut?after=3"},
    },
    "routes": {"auto": {"models": ["bad", "good"]}, "cut": {"models": ["cutter"]}},
}


def _client(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0, timeout=30)


def _settled(seen: list, count: int, timeout: float = 5.0) -> list:
    """The stream's end record is made after the client read [DONE]: wait for it (bounded)."""
    end = time.monotonic() + timeout
    while len(seen) < count and time.monotonic() < end:
        time.sleep(0.01)
    return seen


def _watch(gw) -> list:
    seen: list = []
    gw.state.observers.append(seen.append)
    return seen


def test_fallback_reports_each_attempt(make_gateway):
    gw = make_gateway(ROUTE, retries={"attempts": 1})
    seen = _watch(gw)
    _client(gw).chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
    assert [(o.deployment, o.ok, o.phase) for o in seen] == [("bad", False, "attempt"), ("good", True, "attempt")]
    bad, good = seen
    assert bad.error_kind and bad.status == 503 and bad.route == "auto"
    assert good.ttft_s is not None and good.total_s == good.ttft_s and good.output_tokens > 0


def test_stream_reports_commit_then_end(make_gateway):
    gw = make_gateway(ROUTE, retries={"attempts": 1})
    seen = _watch(gw)
    stream = _client(gw).chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}], stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text
    phases = [(o.deployment, o.ok, o.phase) for o in _settled(seen, 3)]
    assert phases == [("bad", False, "attempt"), ("good", True, "attempt"), ("good", True, "end")]
    commit, end = seen[1], seen[2]
    assert commit.ttft_s is not None and commit.total_s is None
    assert end.total_s is not None and end.total_s >= commit.ttft_s and end.output_tokens > 0


def test_cut_stream_end_is_not_ok(make_gateway):
    gw = make_gateway(ROUTE)
    seen = _watch(gw)
    stream = _client(gw).chat.completions.create(model="cut", messages=[{"role": "user", "content": "hi"}], stream=True)
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass
    end = _settled(seen, 2)[-1]
    assert end.phase == "end" and not end.ok and end.error_kind

"""strategy cascade end to end: OpenAI SDK -> escalade -> the mock's replay upstream (recorded answers
with token logprobs, tests/mock_upstream/replay.py).

What a client sees (the answer, x-escalade-* headers, in-band errors) and what reached the upstreams
(the mock's request log), for unary and streaming requests in both hold modes.
"""

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

LARGE_TEXT = "the large model answers"
LARGE = f"ok?text={LARGE_TEXT.replace(' ', '+')}"
CHECKS = ["truncated", "empty", "json_schema", "tool_call", "refusal"]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]  # fmt: skip
SCHEMA = {"type": "json_schema", "json_schema": {"name": "place", "schema": {
    "type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
    "required": ["city", "country"]}}}  # fmt: skip

MODES = [
    pytest.param(False, "full", id="unary"),
    pytest.param(True, "full", id="stream-hold-full"),
    pytest.param(True, "prefix", id="stream-hold-prefix"),
]


def cascade(small: str = "replay:confident", *, hold: str = "full", large: str = LARGE, **gate: Any) -> dict:
    """Policy sections: rung 0 a free local model (the scenario `small`), rung 1 a priced large one."""
    return {
        "models": {
            "small": {"provider": "mock", "model": small, "local": True,
                      "capabilities": ["logprobs", "tools", "json_schema"]},
            "large": {"provider": "mock", "model": large, "price": {"input_per_mtok": 1.0, "output_per_mtok": 10.0}},
        },
        "routes": {
            "auto": {
                "strategy": "cascade",
                "rungs": [{"models": ["small"]}, {"models": ["large"]}],
                "gate": {"checks": CHECKS, "min_score": 0.6, "hold": hold, **gate},
            }
        },
    }  # fmt: skip


def client(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0, timeout=30)


def user(text: str = "What is the capital of France?") -> list[dict]:
    return [{"role": "user", "content": text}]


class Reply:
    """One answer as the client saw it, streamed or not."""

    def __init__(self, headers: httpx.Headers, text: str | None, choice: Any, chunks: list[Any] | None) -> None:
        self.headers = headers
        self.text = text
        self.choice = choice
        self.chunks = chunks

    @property
    def rung(self) -> int:
        return int(self.headers["x-escalade-rung"])

    @property
    def escalations(self) -> int:
        return int(self.headers["x-escalade-escalations"])

    @property
    def gate(self) -> str:
        return self.headers["x-escalade-gate"]


def ask(gw, stream: bool, **kw: Any) -> Reply:
    args = {"model": "auto", "messages": user(), **kw}
    if not stream:
        raw = client(gw).chat.completions.with_raw_response.create(**args)
        answer = raw.parse()
        return Reply(raw.headers, answer.choices[0].message.content, answer.choices[0], None)
    with client(gw).chat.completions.with_streaming_response.create(**args, stream=True) as raw:
        chunks = list(raw.parse())
        headers = raw.headers
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return Reply(headers, text, None, chunks)


def models_called(mock) -> list[str]:
    return [r["model"] for r in mock.records()]


# ---------------------------------------------------------------- accepted at the first rung


@pytest.mark.parametrize(("stream", "hold"), MODES)
def test_a_confident_local_answer_is_returned_with_one_upstream_call(make_gateway, mock, stream, hold):
    gw = make_gateway(cascade(hold=hold))
    reply = ask(gw, stream)
    assert reply.text.startswith("The capital of France is Paris")
    assert reply.headers["x-escalade-model"] == "small"
    assert (reply.rung, reply.escalations) == (0, 0)
    assert reply.gate.startswith("rung=0 pass score=") and "failed" not in reply.gate
    assert models_called(mock) == ["replay:confident"]
    sent = mock.records()[0]["body"]
    assert sent["logprobs"] is True and sent["top_logprobs"] == 5  # asked for the gate, not by the client
    if stream:
        assert all(c.choices[0].logprobs is None for c in reply.chunks if c.choices)
    else:
        assert reply.choice.logprobs is None
        assert float(reply.headers["x-escalade-cost-usd"]) == 0.0


@pytest.mark.parametrize(("stream", "hold"), MODES)
def test_logprobs_the_client_asked_for_are_kept_at_its_own_top_logprobs(make_gateway, mock, stream, hold):
    gw = make_gateway(cascade(hold=hold))
    reply = ask(gw, stream, logprobs=True, top_logprobs=2)
    assert reply.rung == 0
    if stream:
        tokens = [t for c in reply.chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    else:
        tokens = reply.choice.logprobs.content
    assert tokens and "".join(t.token for t in tokens) == reply.text
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].token == t.token for t in tokens)
    assert mock.records()[0]["body"]["top_logprobs"] == 5


def test_reasoning_is_held_with_the_answer_and_delivered_in_order(make_gateway, mock):
    gw = make_gateway(cascade("replay:thinking"))
    reply = ask(gw, True)
    deltas = [c.choices[0].delta for c in reply.chunks if c.choices]
    reasoning = "".join((d.model_extra or {}).get("reasoning") or "" for d in deltas)
    assert reasoning == "The user asks for a capital. France: Paris."
    first_reasoning = next(i for i, d in enumerate(deltas) if (d.model_extra or {}).get("reasoning"))
    first_answer = next(i for i, d in enumerate(deltas) if d.content)
    assert first_reasoning < first_answer and reply.rung == 0


# ---------------------------------------------------------------- escalation


@pytest.mark.parametrize(("stream", "hold"), MODES)
def test_a_low_score_escalates_to_the_next_rung(make_gateway, mock, stream, hold):
    gw = make_gateway(cascade("replay:unsure", hold=hold))
    reply = ask(gw, stream)
    assert reply.text == LARGE_TEXT
    assert reply.headers["x-escalade-model"] == "large"
    assert (reply.rung, reply.escalations) == (1, 1)
    first, second = reply.gate.split("; ")
    assert first.startswith("rung=0 fail score=")
    assert float(first.split("score=")[1].split()[0]) < 0.6
    assert second == "rung=1 answer"
    assert models_called(mock) == ["replay:unsure", LARGE]
    large_body = mock.records()[1]["body"]
    assert "logprobs" not in large_body and "top_logprobs" not in large_body  # the last rung is not gated


@pytest.mark.parametrize(("stream", "hold"), MODES)
@pytest.mark.parametrize(
    ("recording", "extra", "check"),
    [
        ("json-bad", {"response_format": SCHEMA}, "json_schema"),
        ("tool-bad", {"tools": TOOLS}, "tool_call"),
        ("tool-unknown", {"tools": TOOLS}, "tool_call"),
        ("truncated", {}, "truncated"),
        ("empty", {}, "empty"),
    ],
)
def test_each_deterministic_check_escalates_a_confident_but_broken_answer(
    make_gateway, mock, stream, hold, recording, extra, check
):
    gw = make_gateway(cascade(f"replay:{recording}", hold=hold))
    reply = ask(gw, stream, **extra)
    assert reply.headers["x-escalade-model"] == "large" and reply.rung == 1
    failed = reply.gate.split("; ")[0].split("failed=")[1].split(",")
    assert check in failed
    assert len(mock.records()) == 2


@pytest.mark.parametrize("stream", [False, True])
def test_well_formed_json_and_tool_calls_pass(make_gateway, mock, stream):
    gw = make_gateway(cascade("replay:json"))
    assert ask(gw, stream, response_format=SCHEMA).rung == 0
    gw = make_gateway(cascade("replay:tool"))
    reply = ask(gw, stream, tools=TOOLS)
    assert reply.rung == 0
    if not stream:
        assert reply.choice.message.tool_calls[0].function.name == "get_weather"


def test_hold_prefix_judges_only_the_prefix_hold_full_the_whole_answer(make_gateway, mock):
    """The answer starts confident and ends unsure: the prefix passes, the whole does not."""
    prefix = ask(make_gateway(cascade("replay:late-doubt", hold="prefix", prefix_tokens=4)), True)
    assert prefix.rung == 0 and prefix.text.endswith("fifteen million.")
    full = ask(make_gateway(cascade("replay:late-doubt", hold="full")), True)
    assert full.rung == 1 and full.text == LARGE_TEXT


def test_a_rung_falls_back_within_itself_before_escalating(make_gateway, mock):
    sections = cascade()
    sections["models"]["broken"] = {"provider": "mock", "model": "fault:status?code=500", "capabilities": ["logprobs"]}
    sections["routes"]["auto"]["rungs"][0]["models"] = ["broken", "small"]
    reply = ask(make_gateway(sections), False)
    assert reply.headers["x-escalade-model"] == "small" and (reply.rung, reply.escalations) == (0, 0)
    assert reply.headers["x-escalade-attempts"] == "3"  # broken twice (one retry), then small


@pytest.mark.parametrize(("stream", "hold"), MODES)
def test_a_failed_rung_escalates(make_gateway, mock, stream, hold):
    gw = make_gateway(cascade("fault:status?code=503", hold=hold))
    reply = ask(gw, stream)
    assert reply.text == LARGE_TEXT and reply.rung == 1 and reply.escalations == 1
    assert reply.gate == "rung=0 error=UpstreamUnavailable; rung=1 answer"


@pytest.mark.parametrize("stream", [False, True])
def test_when_every_rung_fails_the_client_gets_the_first_error(make_gateway, mock, stream):
    gw = make_gateway(cascade("fault:status?code=503", large="fault:status?code=400"))
    with pytest.raises(openai.APIStatusError) as info:
        ask(gw, stream)
    assert info.value.status_code == 503
    assert info.value.body["code"] == "upstream_unavailable"


def test_a_stream_cut_while_held_is_retried_and_escalated_never_seen_by_the_client(make_gateway, mock):
    gw = make_gateway(cascade("fault:cut?after=4&replay=confident"))
    reply = ask(gw, True)
    assert reply.text == LARGE_TEXT and reply.rung == 1
    assert reply.gate.startswith("rung=0 error=")
    assert models_called(mock).count("fault:cut?after=4&replay=confident") == 2  # the rung's own retry


def test_after_a_prefix_commit_a_cut_is_an_in_band_error_without_done(make_gateway, mock):
    gw = make_gateway(cascade("fault:cut?after=8&replay=confident", hold="prefix", prefix_tokens=3))
    body = {"model": "auto", "messages": user(), "stream": True}
    with httpx.stream("POST", f"{gw.base_url}/chat/completions", json=body, timeout=10) as response:
        assert response.headers["x-escalade-rung"] == "0"
        text = response.read().decode()
    events = [line[6:] for line in text.split("\n\n") if line.startswith("data: ")]
    assert "[DONE]" not in events
    assert "error" in json.loads(events[-1])
    content = "".join(
        c["choices"][0]["delta"].get("content") or "" for c in map(json.loads, events[:-1]) if c.get("choices")
    )
    assert content == "The capital of France is Paris, a city"  # 8 tokens, then the cut
    assert len(mock.records()) == 1  # committed: no retry, no escalation


# ---------------------------------------------------------------- budget


def test_a_rung_over_the_request_cap_is_skipped_and_the_last_one_that_fits_answers_ungated(make_gateway, mock):
    gw = make_gateway(cascade("replay:unsure"))
    reply = ask(gw, False, extra_headers={"x-escalade-max-cost-usd": "0.000001"})
    assert reply.headers["x-escalade-model"] == "small" and reply.rung == 0
    assert reply.gate == "rung=0 answer; rung=1 skip=budget"
    assert models_called(mock) == ["replay:unsure"]
    assert "logprobs" not in mock.records()[0]["body"]  # nothing after it: not gated


def test_the_request_cap_narrows_the_route_cap_but_never_widens_it(make_gateway, mock):
    sections = cascade("replay:unsure")
    sections["routes"]["auto"]["max_cost_usd"] = 0.000001
    gw = make_gateway(sections)
    reply = ask(gw, True, extra_headers={"x-escalade-max-cost-usd": "100"})
    assert reply.headers["x-escalade-model"] == "small"
    assert reply.gate == "rung=0 answer; rung=1 skip=budget"
    generous = ask(make_gateway(cascade("replay:unsure")), False, extra_headers={"x-escalade-max-cost-usd": "100"})
    assert generous.rung == 1
    cost = float(generous.headers["x-escalade-cost-usd"])
    assert 0 < cost < 0.001  # the large rung's usage at its price; the local rung was free


def test_when_no_rung_fits_the_cap_the_request_is_refused(make_gateway, mock):
    sections = cascade()
    sections["models"]["small"]["price"] = {"input_per_mtok": 1.0, "output_per_mtok": 1.0}
    gw = make_gateway(sections)
    with pytest.raises(openai.BadRequestError) as info:
        ask(gw, False, extra_headers={"x-escalade-max-cost-usd": "0.0000001"})
    assert info.value.body["code"] == "cost_cap_exceeded"  # as planning refuses any route no deployment fits
    assert mock.records() == []
    with pytest.raises(openai.BadRequestError) as bad:
        ask(gw, False, extra_headers={"x-escalade-max-cost-usd": "lots"})
    assert bad.value.body["param"] == "x-escalade-max-cost-usd"


def keyed(sections: dict, usd: float) -> dict:
    """The sections plus a client key `k` (sent as sk-cascade) with a daily budget of `usd`."""
    digest = hashlib.sha256(b"sk-cascade").hexdigest()
    return {**sections, "keys": [{"name": "k", "key_sha256": digest, "budget": {"usd": usd, "period": "day"}}]}


def ask_as_key(gw, stream: bool, **kw: Any) -> Reply:
    gw_client = openai.OpenAI(base_url=gw.base_url, api_key="sk-cascade", max_retries=0, timeout=30)
    args = {"model": "auto", "messages": user(), **kw}
    if not stream:
        raw = gw_client.chat.completions.with_raw_response.create(**args)
        return Reply(raw.headers, raw.parse().choices[0].message.content, raw.parse().choices[0], None)
    with gw_client.chat.completions.with_streaming_response.create(**args, stream=True) as raw:
        chunks = list(raw.parse())
        return Reply(raw.headers, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), None, chunks)


def test_what_is_left_of_the_key_budget_caps_the_ladder(make_gateway, mock):
    gw = make_gateway(keyed(cascade("replay:unsure"), usd=0.000001))
    reply = ask_as_key(gw, False)
    assert reply.headers["x-escalade-model"] == "small" and reply.gate == "rung=0 answer; rung=1 skip=budget"
    priced = cascade()
    priced["models"]["small"]["price"] = {"input_per_mtok": 1.0, "output_per_mtok": 1.0}
    gw = make_gateway(keyed(priced, usd=0.000001))
    with pytest.raises(openai.RateLimitError) as info:  # the key's money, not the request: 429
        ask_as_key(gw, False)
    assert info.value.body["code"] == "budget_exceeded" and "remaining budget" in info.value.message


def test_the_key_pays_for_every_rung_streamed_or_not(make_gateway, mock):
    sections = cascade("replay:unsure")
    sections["models"]["small"]["price"] = {"input_per_mtok": 100.0, "output_per_mtok": 100.0}
    spent = []
    for stream in (False, True):
        gw = make_gateway(keyed(sections, usd=1.0))
        reply = ask_as_key(gw, stream)
        assert reply.rung == 1
        if not stream:
            assert gw.state.store.spent("k", "day") == pytest.approx(float(reply.headers["x-escalade-cost-usd"]))
        else:
            store = gw.state.store
            mock.wait_for(lambda _, store=store: (store.spent("k", "day") or 0) >= spent[0] * 0.999)
        spent.append(gw.state.store.spent("k", "day"))
    small = (7 + 11) * 100.0 / 1e6  # the rejected local answer: 7 prompt + 11 answer tokens (mock usage)
    large = (7 * 1.0 + 4 * 10.0) / 1e6  # the large rung's answer: 4 tokens
    assert spent[0] == pytest.approx(small + large) and spent[1] == pytest.approx(spent[0])  # both rungs, both ways


# ---------------------------------------------------------------- shadow mode


def read_records(path: Path, count: int, timeout: float = 10.0) -> list[dict]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return [json.loads(line) for line in lines]
        time.sleep(0.02)
    raise AssertionError(f"{path} has fewer than {count} records")


@pytest.mark.parametrize(("stream", "hold"), MODES)
def test_shadow_mode_asks_the_last_rung_too_and_logs_the_pair(make_gateway, mock, tmp_path, stream, hold):
    log = tmp_path / "shadow.jsonl"
    gw = make_gateway(cascade(hold=hold, shadow={"rate": 1.0, "log": str(log)}))
    reply = ask(gw, stream, messages=user("a secret question about Paris"))
    assert reply.rung == 0 and reply.headers["x-escalade-model"] == "small"
    [record] = read_records(log, 1)
    assert record["route"] == "auto" and record["request_id"] == reply.headers["x-request-id"]
    assert record["agree"] is False and record["score"] > 0.6  # two different answers; a confident local one
    assert record["weight"] == 1.0 and record["failed"] == []
    assert record["cost_large"] > 0
    assert "secret question" not in log.read_text() and "content" not in record
    assert sorted(models_called(mock)) == sorted(["replay:confident", LARGE])
    shadow_body = next(r["body"] for r in mock.records() if r["model"] == LARGE)
    assert "stream" not in shadow_body  # a shadow call reads the whole answer at once


def test_shadow_records_content_only_when_the_route_records_content(make_gateway, mock, tmp_path):
    log = tmp_path / "shadow.jsonl"
    same = "ok?text=" + "The capital of France is Paris, a city on the Seine.".replace(" ", "+")
    sections = cascade(large=same, shadow={"rate": 1.0, "log": str(log)})
    sections["routes"]["auto"]["record_content"] = True
    ask(make_gateway(sections), False, messages=user("where is the Louvre"))
    [record] = read_records(log, 1)
    assert record["content"]["prompt"][0]["content"] == "where is the Louvre"
    assert record["content"]["small"] == record["content"]["large"] and record["agree"] is True


def test_shadow_rate_zero_and_escalated_answers_make_no_shadow_call(make_gateway, mock, tmp_path):
    log = tmp_path / "shadow.jsonl"
    ask(make_gateway(cascade("replay:unsure", shadow={"rate": 1.0, "log": str(log)})), False)
    ask(make_gateway(cascade(shadow={"rate": 0.0, "log": str(log)})), False)
    time.sleep(0.2)
    assert not log.exists()
    assert models_called(mock) == ["replay:unsure", LARGE, "replay:confident"]


# ---------------------------------------------------------------- the trace


@pytest.fixture
def spans():
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


@pytest.mark.parametrize("stream", [False, True])
def test_the_server_span_says_which_rung_answered_and_why(make_gateway, mock, spans, stream):
    from opentelemetry.trace import SpanKind

    gw = make_gateway(cascade("replay:unsure"))
    ask(gw, stream, messages=user("the private prompt"))
    deadline = time.monotonic() + 5  # the SERVER span ends just after the response's last byte
    while not [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER] and time.monotonic() < deadline:
        time.sleep(0.01)
    [server] = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    attrs = server.attributes
    assert attrs["escalade.escalated"] is True and attrs["escalade.escalations"] == 1
    assert attrs["escalade.rung"] == 1 and attrs["escalade.deployment"] == "large"
    assert attrs["escalade.gate.score"] < 0.6 and "escalade.gate.failed_checks" in attrs
    events = [dict(e.attributes) for e in server.events if e.name == "escalade.cascade.rung"]
    assert [(e["escalade.rung"], e["escalade.rung.action"]) for e in events] == [(0, "fail"), (1, "answer")]
    clients = [s for s in spans.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert [s.attributes["escalade.deployment"] for s in clients] == ["small", "large"]
    assert "private prompt" not in json.dumps([dict(s.attributes) for s in spans.get_finished_spans()])


def test_shadow_calls_never_delay_the_client_are_bounded_and_cancelled_on_shutdown(make_gateway, mock, tmp_path):
    log = tmp_path / "shadow.jsonl"
    slow = {"connect_s": 1, "headers_s": 60, "first_token_s": 60, "idle_s": 60, "total_s": 60}
    gw = make_gateway(cascade(large="fault:never", shadow={"rate": 1.0, "log": str(log)}), timeouts=slow)
    for _ in range(6):
        assert ask(gw, False).rung == 0  # answered while the earlier shadow calls hang
    mock.wait_for(lambda records: sum(r["model"] == "fault:never" for r in records) >= 4)
    assert gw.state.shadows.in_flight == 4 and gw.state.shadows.dropped == 2  # at most 4 at once
    gw.stop()  # joins the gateway thread for up to 15 s; the shadow calls would hang for 60
    assert not gw._thread.is_alive() and gw.state.shadows.in_flight == 0
    shadows = [r for r in mock.records() if r["model"] == "fault:never"]
    assert len(shadows) == 4
    mock.wait_for(lambda _: all(r["outcome"] == "client_closed" for r in shadows))
    assert not log.exists()


@pytest.mark.parametrize(("stream", "hold"), MODES)
def test_every_choice_of_an_n_answer_is_judged(make_gateway, mock, stream, hold):
    confident = ask(make_gateway(cascade(hold=hold)), stream, n=2)
    assert confident.rung == 0
    unsure = ask(make_gateway(cascade("replay:unsure", hold=hold)), stream, n=2)
    assert unsure.rung == 1 and unsure.headers["x-escalade-model"] == "large"
    if stream:
        assert {c.choices[0].index for c in confident.chunks if c.choices} == {0, 1}


def test_a_rung_planning_ruled_out_is_reported_as_unavailable(make_gateway, mock):
    sections = cascade()
    sections["models"]["small"]["capabilities"] = ["logprobs"]  # no tools
    reply = ask(make_gateway(sections), False, tools=TOOLS)
    assert reply.headers["x-escalade-model"] == "large"
    assert reply.gate == "rung=0 skip=unavailable; rung=1 answer" and reply.escalations == 0

"""The cascade gate: golden OpenAI-shaped answers (tests/golden/gate) through the real checks and score."""

import json
import math
from pathlib import Path

import msgspec
import pytest

from policies import gate
from policies.gate import (
    Expectations,
    Sample,
    SampleBuilder,
    expectations,
    features,
    judge,
    repetition_stats,
    sample_of,
    score,
)
from policies.loader import PolicyError, parse_policy
from policies.schema import GateConf
from providers.schema.chat import ChatCompletion, ChatCompletionChunk, ChatRequest, Choice

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "gate"
CASES = sorted(p for p in GOLDEN.glob("*.json") if p.name != "repetition.json")


def _sample(case: dict) -> Sample:
    if "response" in case:
        completion = msgspec.convert(case["response"], ChatCompletion)
        return sample_of(completion.choices[0])
    builder = SampleBuilder()
    for raw in case["chunks"]:
        builder.add(msgspec.convert(raw, ChatCompletionChunk))
        if "prefix_tokens" in case and builder.tokens() >= case["prefix_tokens"]:
            return builder.sample(complete=False)
    return builder.sample(complete=True)


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_golden_verdicts(path):
    case = json.loads(path.read_text())
    request = msgspec.convert(case["request"], ChatRequest)
    conf = msgspec.convert(case["gate"], GateConf)
    verdict = judge(_sample(case), expectations(request), conf)
    expect = case["expect"]
    assert (verdict.passed, list(verdict.failed)) == (expect["passed"], expect["failed"]), case["description"]
    if expect["score"] is None:
        assert verdict.score is None
    else:
        assert verdict.score == pytest.approx(expect["score"], abs=1e-6)


def test_goldens_cover_every_check_passing_and_failing():
    seen_fail, seen_pass = set(), set()
    for path in CASES:
        case = json.loads(path.read_text())
        checks = set(case["gate"].get("checks", []))
        failed = set(case["expect"]["failed"])
        seen_fail |= failed
        seen_pass |= checks - failed
    every = set(gate.CHECKS)
    assert every <= seen_fail and every <= seen_pass
    assert "score" in seen_fail


REPETITION = json.loads((GOLDEN / "repetition.json").read_text())


@pytest.mark.parametrize("text", REPETITION["normal"], ids=lambda t: t[:24])
def test_normal_text_is_not_repetition(text):
    sample = Sample(text, (), "stop", (), (), True)
    assert judge(sample, gate.NO_EXPECTATIONS, GateConf(checks=["repetition"])).passed, repetition_stats(text)


@pytest.mark.parametrize("text", REPETITION["looping"], ids=lambda t: t[:24])
def test_looping_text_is_repetition(text):
    sample = Sample(text, (), "length", (), (), True)
    assert judge(sample, gate.NO_EXPECTATIONS, GateConf(checks=["repetition"])).failed == ("repetition",)


def test_repetition_is_judged_on_a_prefix_too():
    loop = "I am not sure. " * 12
    prefix = Sample(loop, (), None, (), (), complete=False)
    assert judge(prefix, gate.NO_EXPECTATIONS, GateConf(checks=["repetition", "truncated", "empty"])).failed == (
        "repetition",
    )


# ---------------------------------------------------------------- score


def test_score_is_none_without_logprobs_and_fails_min_score():
    assert features((), ()) == {}
    assert score({}) is None
    empty = Sample("hello", (), "stop", (), (), True)
    assert judge(empty, gate.NO_EXPECTATIONS, GateConf()).passed
    assert judge(empty, gate.NO_EXPECTATIONS, GateConf(min_score=0.1)).failed == ("score",)


def test_score_scale_half_is_even_odds_and_each_decade_of_odds_adds_a_fourteenth():
    assert score(features((math.log(0.5),), ())) == pytest.approx(0.5)
    p9, p99 = score(features((math.log(0.9),), ())), score(features((math.log(0.99),), ()))
    assert p99 - p9 == pytest.approx(math.log10(99 / 9) / 14)
    assert score(features((0.0,), ())) == 1.0
    assert score(features((-math.inf,), ())) == 0.0
    assert score(features((float("nan"),), ())) == 0.0


def test_score_reads_the_low_quantile_not_the_mean():
    confident = [-0.01] * 40
    one_unsure = [-0.01] * 39 + [-4.0]  # 1 of 40: above the 10th percentile, barely moves the score
    five_unsure = [-0.01] * 35 + [-4.0] * 5  # 5 of 40: the 10th percentile is unsure
    s1, s2, s3 = (score(features(x, ())) for x in (confident, one_unsure, five_unsure))
    assert s1 == pytest.approx(s2) and s3 < s1 - 0.2
    short = [-0.01, -0.01, -4.0]  # up to 10 tokens the quantile is the minimum
    assert score(features(short, ())) == pytest.approx(score(features((-4.0,), ())))


def test_margin_raises_the_score_as_the_runner_up_falls_behind():
    lp = (math.log(0.6),)
    alone = score(features(lp, ()))
    all_rest_on_runner_up = score(features(lp, (math.log(0.6 / 0.4),)))  # margin == log-odds
    close_runner_up = score(features(lp, (math.log(0.6 / 0.35),)))
    far_runner_up = score(features(lp, (math.log(0.6 / 0.01),)))
    assert alone == pytest.approx(all_rest_on_runner_up)
    assert alone < close_runner_up < far_runner_up
    assert features(lp, (None,)).keys() == features(lp, ()).keys()


def test_features_are_finite_json():
    feats = features((-math.inf, -0.5, 0.0), (None, 2.0, math.inf))
    assert all(math.isfinite(v) for v in feats.values())
    assert feats["tokens"] == 3 and feats["min_logprob"] == gate.LOGPROB_FLOOR
    assert feats["q10_margin"] == 2.0 and features((-0.1,), (math.inf,))["q10_margin"] == -gate.LOGPROB_FLOOR
    msgspec.json.encode(feats)


# ---------------------------------------------------------------- samples


def _choice(content, tokens, reasoning=None, **message) -> Choice:
    entries = [{"token": t, "logprob": lp, "top_logprobs": []} for t, lp in tokens]
    return msgspec.convert(
        {
            "message": {"content": content, "reasoning": reasoning, **message},
            "logprobs": {"content": entries},
            "finish_reason": "stop",
        },
        Choice,
    )


def test_punctuation_and_json_syntax_tokens_are_not_scored_unless_nothing_else_is():
    s = sample_of(_choice('{"a": 1}', [('{"', -3.0), ("a", -0.1), ('":', -3.0), (" 1", -0.2), ("}", -3.0)]))
    assert s.logprobs == (-0.1, -0.2)
    s = sample_of(_choice("{}", [("{}", -0.7)]))
    assert s.logprobs == (-0.7,)


def test_reasoning_not_in_logprobs_leaves_them_alone():
    s = sample_of(_choice("Paris.", [("Paris", -0.2), (".", -0.1)], reasoning="The capital of France is Paris."))
    assert s.logprobs == (-0.2,)


def test_explicit_reasoning_argument_wins():
    choice = _choice("4", [("Two", -2.0), (" plus", -2.0), (" two", -2.0), ("4", -0.01)])
    assert sample_of(choice).logprobs == (-2.0, -2.0, -2.0, -0.01)
    assert sample_of(choice, reasoning="Two plus two").logprobs == (-0.01,)


def _chunk(delta, logprobs=None, finish=None, index=0) -> ChatCompletionChunk:
    lp = (
        None if logprobs is None else {"content": [{"token": t, "logprob": v, "top_logprobs": []} for t, v in logprobs]}
    )
    return msgspec.convert(
        {"choices": [{"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}]}, ChatCompletionChunk
    )


def test_builder_counts_answer_chunks_without_logprobs_and_ignores_other_choices():
    b = SampleBuilder()
    b.add(_chunk({"role": "assistant", "content": ""}))
    b.add(_chunk({"reasoning_content": "hmm"}))
    b.add(_chunk({"content": "Hel"}))
    b.add(_chunk({"content": "lo"}))
    b.add(_chunk({"content": "other"}, index=1))
    assert b.tokens() == 2
    s = b.sample(complete=False)
    assert (s.content, s.finish_reason, s.complete, s.logprobs) == ("Hello", None, False, ())
    b.add(_chunk({}, finish="stop"))
    assert b.sample(complete=True).finish_reason == "stop"


def test_builder_splits_a_chunk_that_ends_reasoning_and_starts_the_answer():
    b = SampleBuilder()
    b.add(_chunk({"reasoning": " so 4", "content": "Four"}, logprobs=[(" so", -2.0), (" 4", -2.0), ("Four", -0.05)]))
    assert b.sample(complete=True).logprobs == (-0.05,)
    assert b.tokens() == 1


def test_builder_assembles_tool_calls_and_refusals():
    b = SampleBuilder()
    b.add(_chunk({"tool_calls": [{"index": 1, "id": "c2", "function": {"name": "b", "arguments": ""}}]}))
    b.add(_chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "a", "arguments": '{"x"'}}]}))
    b.add(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}))
    b.add(_chunk({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}))
    b.add(_chunk({"refusal": "I can"}))
    b.add(_chunk({"refusal": "not."}))
    s = b.sample(complete=True)
    assert s.tool_calls == (("a", '{"x": 1}'), ("b", "{}"))
    assert s.refusal == "I cannot."


# ---------------------------------------------------------------- expectations and checks


def _request(**fields) -> ChatRequest:
    return msgspec.convert({"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}, ChatRequest)


def test_expectations_of_a_request():
    assert expectations(_request()) == Expectations(None, {})
    assert expectations(_request(response_format={"type": "json_object"})).json_schema == {}
    schema = {"type": "object"}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    assert expectations(_request(response_format=fmt)).json_schema == schema
    tools = [
        {"type": "function", "function": {"name": "f"}},
        {"type": "function", "function": {"name": "g", "parameters": schema}},
    ]
    e = expectations(_request(tools=tools, tool_choice={"type": "function", "function": {"name": "f"}}))
    assert e.tools == {"f": {}, "g": schema} and e.tool_required
    assert not expectations(_request(tools=tools, tool_choice="auto")).tool_required


def test_tool_arguments_may_be_empty_for_a_tool_without_parameters():
    s = Sample("", (("ping", ""),), "tool_calls", (), (), True)
    assert judge(s, Expectations(None, {"ping": {}}), GateConf(checks=["tool_call"])).passed
    s = Sample("", (("ping", "[1]"),), "tool_calls", (), (), True)  # arguments must be an object
    assert not judge(s, Expectations(None, {"ping": {}}), GateConf(checks=["tool_call"])).passed


def test_a_schema_jsonschema_cannot_use_only_requires_json():
    expect = Expectations({"type": "object", "properties": {"a": {"type": "no-such-type"}}}, {})
    conf = GateConf(checks=["json_schema"])
    assert judge(Sample('{"a": 1}', (), "stop", (), (), True), expect, conf).passed
    assert not judge(Sample("not json", (), "stop", (), (), True), expect, conf).passed
    unresolvable = Expectations({"$ref": "https://example.com/schema.json"}, {})
    assert judge(Sample('{"a": 1}', (), "stop", (), (), True), unresolvable, conf).passed


def test_validators_are_compiled_once_per_schema_text():
    a = {"type": "object", "required": ["x"]}
    b = json.loads(json.dumps(a))  # another request's copy
    assert gate._validator(a) is gate._validator(b) is gate._validator(a)


def test_checks_run_once_in_the_routes_order():
    s = Sample("", (), "length", (), (), True)
    v = judge(s, gate.NO_EXPECTATIONS, GateConf(checks=["empty", "truncated", "empty"]))
    assert v.failed == ("empty", "truncated")


def test_answer_format_spans_lines_and_skips_tool_call_answers():
    conf = GateConf(checks=["answer_format"], answer_format=r"[A-D]")
    assert judge(Sample(" B\n", (), "stop", (), (), True), gate.NO_EXPECTATIONS, conf).passed
    assert not judge(Sample("B) Paris", (), "stop", (), (), True), gate.NO_EXPECTATIONS, conf).passed
    assert judge(Sample("", (("f", "{}"),), "tool_calls", (), (), True), gate.NO_EXPECTATIONS, conf).passed


# ---------------------------------------------------------------- policy validation

POLICY = """
providers: {p: {type: openai, base_url: "http://127.0.0.1:9/v1"}}
models: {m: {provider: p, model: x}}
routes:
  r:
    strategy: cascade
    rungs: [{models: [m]}]
    gate:
%s
"""


@pytest.mark.parametrize(
    ("gate_yaml", "message"),
    [
        ("      checks: [answer_format]", "check and the answer_format regex go together"),
        ("      answer_format: '[A-D]'", "check and the answer_format regex go together"),
        ("      checks: [answer_format]\n      answer_format: '(A'", "answer_format is not a valid regular expression"),
        ("      refusal_patterns: ['ok', '[x']", "refusal_patterns[1] is not a valid regular expression"),
        ("      checks: [truncatd]", "Invalid enum value 'truncatd'"),
        ("      min_score: 1.5", "Expected `float` <= 1"),
    ],
)
def test_invalid_gate_confs_are_refused_with_their_path(gate_yaml, message):
    with pytest.raises(PolicyError) as err:
        parse_policy(POLICY % gate_yaml)
    assert message in str(err.value) and "$.routes.r.gate" in str(err.value)


def test_a_valid_gate_conf_loads():
    policy = parse_policy(POLICY % "      checks: [truncated, refusal]\n      min_score: 0.62\n      hold: prefix")
    assert policy.routes["r"].gate == GateConf(checks=["truncated", "refusal"], min_score=0.62, hold="prefix")


def test_an_answer_that_starts_like_its_reasoning_keeps_its_tokens():
    choice = _choice(
        "Yes, it is.", [("Yes", -0.3), (",", -0.1), (" it", -0.1), (" is", -0.2), (".", -0.1)], reasoning="Yes"
    )
    assert sample_of(choice).logprobs == (-0.3, -0.1, -0.2)

"""The gateway against a real vLLM (the CPU build, tiny random MoE model) that it launches and supervises.

One engine start serves every test of the session (the `stack` fixture in conftest.py); the tests run
in file order and the last two kill the engine (the supervisor must restart it) and stop the gateway
(nothing may be left), so this module runs after every other one that uses the engine.
Needs ESCALADE_VLLM_VENV and ESCALADE_TINY_MODEL (tests/run.sh builds both); skipped without them.
The model's text is random: the assertions are about shape and self-consistency, never wording.
"""

import json
import os
import re
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from local_engine import runfiles
from tests.support.vllm_stack import AVAILABLE, MODEL, Stack, cmdline, log_tail, pids, wait_for

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        not AVAILABLE,
        reason="set ESCALADE_VLLM_VENV and ESCALADE_TINY_MODEL (local_engine/cpu/setup_venv.sh, make_tiny_model.py)",
    ),
    pytest.mark.timeout(600),
]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}},
            "required": ["city"],
        },
    },
}
TOOL_REGEX = r'\[TOOL_CALLS\]get_weather\[ARGS\]\{"city":"Paris","unit":"C"\}'
THINK_REGEX = r"\[THINK\]let me think\[/THINK\]It is sunny\."
USER = [{"role": "user", "content": "What is the weather in Paris?"}]


# ---------------------------------------------------------------- the OpenAI surface, through the gateway


def test_chat_with_logprobs_and_top_logprobs(stack: Stack) -> None:
    args = {"model": "local", "messages": USER, "max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 3}
    raw = stack.client().chat.completions.with_raw_response.create(**args)
    answer = raw.parse()
    assert raw.headers["x-escalade-model"] == "tiny" and raw.headers["x-escalade-route"] == "local"
    assert float(raw.headers["x-escalade-cost-usd"]) == 0.0
    choice = answer.choices[0]
    assert isinstance(choice.message.content, str) and choice.message.content
    tokens = choice.logprobs.content
    assert len(tokens) == answer.usage.completion_tokens > 0
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 3 and t.token for t in tokens)
    again = stack.client().chat.completions.create(**args)
    assert again.choices[0].message.content == choice.message.content  # temperature 0 is deterministic
    assert [t.logprob for t in again.choices[0].logprobs.content] == [t.logprob for t in tokens]


def test_streaming_with_usage_matches_the_unary_answer(stack: Stack) -> None:
    args = {"model": "local", "messages": USER, "max_tokens": 8, "temperature": 0}
    unary = stack.client().chat.completions.create(**args).choices[0].message.content
    chunks = list(stack.client().chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == unary
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_legacy_completions(stack: Stack) -> None:
    raw = stack.client().completions.with_raw_response.create(
        model="local", prompt="The weather today is", max_tokens=8, temperature=0
    )
    answer = raw.parse()
    assert raw.headers["x-escalade-model"] == "tiny"
    assert answer.object == "text_completion" and answer.choices[0].text
    assert answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0


def test_a_tool_call_parsed_by_the_mistral_parser(stack: Stack) -> None:
    forced = {"structured_outputs": {"regex": TOOL_REGEX}, "logit_bias": stack.bias}
    args = {"model": "local", "messages": USER, "tools": [WEATHER_TOOL], "tool_choice": "auto", "max_tokens": 64,
            "temperature": 0, "extra_body": forced}  # fmt: skip
    choice = stack.client().chat.completions.create(**args).choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris", "unit": "C"}
    assert re.fullmatch(r"[A-Za-z0-9]{9}", call.id)  # a Mistral-style id, made by vLLM's parser

    name, arguments, finish = "", "", None
    for chunk in stack.client().chat.completions.create(**args, stream=True):
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                name += delta.function.name or ""
                arguments += delta.function.arguments or ""
            finish = choice.finish_reason or finish
    assert (name, json.loads(arguments), finish) == ("get_weather", {"city": "Paris", "unit": "C"}, "tool_calls")


def test_reasoning_is_parsed_and_reasoning_effort_reaches_the_engine(stack: Stack) -> None:
    forced = {"structured_outputs": {"regex": THINK_REGEX}, "logit_bias": stack.bias}
    message = (
        stack.client()
        .chat.completions.create(model="think", messages=USER, max_tokens=64, temperature=0, extra_body=forced)
        .choices[0]
        .message
    )
    assert message.content == "It is sunny." and message.model_extra.get("reasoning") == "let me think"

    # The chat template writes `effort=<value>` into the prompt, so at temperature 0 the logprobs show
    # which effort the engine saw: the route's `high` must equal a client's `high`, and differ from `none`.
    def first_logprobs(route: str, effort: str | None) -> list[float]:
        extra = {"reasoning_effort": effort} if effort else {}
        answer = stack.client().chat.completions.create(
            model=route, messages=USER, max_tokens=4, temperature=0, logprobs=True, extra_body=extra
        )
        return [t.logprob for t in answer.choices[0].logprobs.content]

    by_route = first_logprobs("think", "none")  # the route overrides the client's "none"
    assert by_route == first_logprobs("local", "high")
    assert by_route != first_logprobs("local", "none")


def test_readyz_shows_the_engine_and_its_load(stack: Stack) -> None:
    body = httpx.get(f"{stack.gw.admin_url}/readyz", timeout=5).json()
    engine = body["engines"]["local"]
    assert body["status"] == "ready" and engine["state"] == "ready" and engine["managed"] is True
    assert engine["waiting"] == 0 and engine["running"] is not None and engine["kv_cache_usage"] is not None


# ---------------------------------------------------------------- failure and shutdown


def test_engine_killed_mid_run_falls_back_then_comes_back(stack: Stack) -> None:
    old = stack.engine.status.pgid
    assert old is not None and runfiles.group_members(old)
    ask = {"model": "auto", "messages": USER, "max_tokens": 8}
    assert stack.client().chat.completions.with_raw_response.create(**ask).headers["x-escalade-model"] == "tiny"

    # A request is in flight at the engine when its whole process group is killed: that request, not
    # yet committed to the client, falls back; so do the next ones. The group is frozen first so that
    # the request is surely still at the engine when the kill lands, however fast the engine is.
    long = {**ask, "max_tokens": 1500, "extra_body": {"ignore_eos": True}}
    with ThreadPoolExecutor(1) as pool:
        os.killpg(old, signal.SIGSTOP)
        in_flight = pool.submit(stack.client().chat.completions.with_raw_response.create, **long)
        time.sleep(0.5)
        os.killpg(old, signal.SIGKILL)
        raw = in_flight.result(timeout=60)
    assert raw.headers["x-escalade-model"] == "backup"
    assert raw.parse().choices[0].message.content == "answer from the fallback"
    raw = stack.client().chat.completions.with_raw_response.create(**ask)
    assert raw.headers["x-escalade-model"] == "backup"

    wait_for(lambda: stack.engine.status.restarts >= 1, 30)
    with pytest.raises(openai.APIStatusError) as refused:
        stack.client().chat.completions.create(model="local", messages=USER, max_tokens=4)
    assert refused.value.status_code == 503
    assert re.search(r"local engine `local` is (restarting|starting)", refused.value.message)
    assert stack.client().chat.completions.with_raw_response.create(**ask).headers["x-escalade-model"] == "backup"

    began = time.monotonic()
    wait_for(lambda: stack.engine.status.ready, 300, lambda: log_tail(stack))
    print(f"\nengine ready again {time.monotonic() - began:.1f}s after its restart began", file=sys.stderr)
    assert stack.engine.status.pgid != old and runfiles.group_members(old) == []
    assert stack.client().chat.completions.with_raw_response.create(**ask).headers["x-escalade-model"] == "tiny"


def test_clean_shutdown_leaves_no_process(stack: Stack) -> None:
    pgid = stack.engine.status.pgid
    record = stack.engine.record_path
    assert pgid is not None and record.exists()
    stack.stop()
    assert runfiles.group_members(pgid) == []
    assert not record.exists()
    leftovers = [pid for pid in pids() if str(MODEL) in cmdline(pid)]
    assert leftovers == [], [cmdline(pid) for pid in leftovers]

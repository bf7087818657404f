"""A cascade over the real CPU vLLM: the tiny random-weight model is rung 0, a mock large model rung 1.

The random model's answers are not confident (its token logprobs are spread over its vocabulary), so
the gate must reject them and escalate: the client gets the large model's answer, and the headers
show a real score computed from the engine's logprobs. Shares the session's one engine start (the
`stack` fixture); this module must run before test_vllm_engine.py, whose last test stops the engine.
"""

import openai
import pytest

from tests.support.vllm_stack import AVAILABLE, Stack

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not AVAILABLE, reason="set ESCALADE_VLLM_VENV and ESCALADE_TINY_MODEL (tests/run.sh)"),
    pytest.mark.timeout(600),
]

USER = [{"role": "user", "content": "What is the capital of France?"}]
LARGE = "answer from the large model"


@pytest.mark.parametrize(
    ("route", "stream"),
    [("cascade-full", False), ("cascade-full", True), ("cascade-prefix", True)],
    ids=["unary", "stream-hold-full", "stream-hold-prefix"],
)
def test_random_local_answers_fail_the_gate_and_escalate(stack: Stack, route: str, stream: bool) -> None:
    assert not stack.stopped, "the shared engine was stopped: run this module before test_vllm_engine.py"
    client = openai.OpenAI(base_url=stack.gw.base_url, api_key="unused", max_retries=0, timeout=120)
    args = {"model": route, "messages": USER, "max_tokens": 12, "temperature": 0}
    if stream:
        with client.chat.completions.with_streaming_response.create(**args, stream=True) as raw:
            text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
            headers = raw.headers
    else:
        raw = client.chat.completions.with_raw_response.create(**args)
        text, headers = raw.parse().choices[0].message.content, raw.headers
    assert text == LARGE
    assert headers["x-escalade-model"] == "large"
    assert (headers["x-escalade-rung"], headers["x-escalade-escalations"]) == ("1", "1")
    rejected, answered = headers["x-escalade-gate"].split("; ")
    assert answered == "rung=1 answer"
    assert rejected.startswith("rung=0 fail score=")
    score = rejected.split("score=")[1].split()[0]
    assert score != "none" and float(score) < 0.5  # a real score, from the engine's token logprobs

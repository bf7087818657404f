"""gateway.dispatch.open_stream: the commit point and the first-token / reasoning-liveness limits."""

import asyncio
import time

import pytest

from gateway.dispatch import open_stream
from providers.base import Call, Timeouts
from providers.errors import UpstreamSilent
from providers.schema.chat import ChatCompletionChunk, ChunkChoice, Delta, ToolCallDelta


def chunk(**delta) -> ChatCompletionChunk:
    return ChatCompletionChunk(choices=[ChunkChoice(delta=Delta(**delta))])


async def paced(items, gaps):
    for item, gap in zip(items, gaps, strict=True):
        await asyncio.sleep(gap)
        yield item


def call(first_token_s=0.2, idle_s=0.3, has_fallback=True, total=5.0) -> Call:
    return Call(
        request_id="r",
        upstream_model="m",
        timeouts=Timeouts(first_token_s=first_token_s, idle_s=idle_s),
        deadline=time.monotonic() + total,
        has_fallback=has_fallback,
    )


async def test_commits_on_first_content_and_holds_the_role_chunk():
    stream = paced([chunk(role="assistant", content=""), chunk(content="hi"), chunk(content="!")], [0, 0, 0])
    committed = await open_stream(stream, call())
    assert [c.choices[0].delta.content for c in committed.held] == ["", "hi"]
    assert not committed.ended
    assert (await anext(committed.rest)).choices[0].delta.content == "!"


async def test_tool_call_is_a_commit_point():
    stream = paced([chunk(tool_calls=[ToolCallDelta(index=0, id="c1")])], [0])
    assert len((await open_stream(stream, call())).held) == 1


async def test_silence_past_first_token_limit_is_silent_error():
    stream = paced([chunk(content="late")], [0.6])
    with pytest.raises(UpstreamSilent, match="no first token"):
        await open_stream(stream, call(first_token_s=0.2))


async def test_last_candidate_waits_past_first_token_limit():
    stream = paced([chunk(content="late")], [0.4])
    committed = await open_stream(stream, call(first_token_s=0.1, has_fallback=False))
    assert committed.held[0].choices[0].delta.content == "late"


async def test_flowing_reasoning_keeps_the_attempt_alive_past_first_token_limit():
    items = [chunk(reasoning_content="thinking") for _ in range(5)] + [chunk(content="answer")]
    stream = paced(items, [0.1] * 6)  # 0.6 s before the answer, first-token limit 0.2 s
    committed = await open_stream(stream, call(first_token_s=0.2, idle_s=0.3))
    assert committed.held[-1].choices[0].delta.content == "answer"


async def test_reasoning_that_stalls_is_bounded_by_the_idle_timeout():
    stream = paced([chunk(reasoning_content="thinking"), chunk(content="x")], [0.05, 0.8])
    with pytest.raises(UpstreamSilent, match="reasoning stalled"):
        await open_stream(stream, call(first_token_s=0.2, idle_s=0.3))


async def test_stream_that_ends_before_content_is_committed_as_ended():
    stream = paced([chunk(role="assistant")], [0])
    committed = await open_stream(stream, call())
    assert committed.ended and len(committed.held) == 1

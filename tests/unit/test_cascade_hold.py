"""gateway.cascade: how a gated rung's stream is held (to its end, or to a prefix) and released."""

import asyncio
import time

import pytest

from gateway.cascade import _Held, _hold, _Live
from gateway.dispatch import open_stream
from providers.base import Call, Timeouts
from providers.errors import UpstreamTimeout
from providers.schema.chat import ChatCompletionChunk, ChunkChoice, Delta


def chunk(finish=None, **delta) -> ChatCompletionChunk:
    return ChatCompletionChunk(choices=[ChunkChoice(delta=Delta(**delta), finish_reason=finish)])


class Upstream:
    """An upstream stream that records how far it was read and whether it was closed."""

    def __init__(self, chunks, stall_after=None):
        self.chunks = chunks
        self.stall_after = stall_after
        self.read = 0
        self.closed = False

    async def stream(self):
        try:
            for i, item in enumerate(self.chunks):
                if self.stall_after is not None and i >= self.stall_after:
                    await asyncio.sleep(3600)
                self.read += 1
                yield item
        finally:
            self.closed = True


def words(n):
    return [chunk(role="assistant", content="")] + [chunk(content=f" w{i}") for i in range(n)] + [chunk(finish="stop")]


def call(idle_s=5.0) -> Call:
    return Call(request_id="r", upstream_model="m", timeouts=Timeouts(idle_s=idle_s), deadline=time.monotonic() + 30)


async def held_stream(upstream, prefix, idle_s=5.0):
    c = call(idle_s)
    committed = await open_stream(upstream.stream(), c)
    held = _Held()
    await _hold(committed, held, c, prefix)
    return committed, held


async def test_hold_full_reads_to_the_end():
    upstream = Upstream(words(10))
    committed, held = await held_stream(upstream, None)
    assert committed.ended and upstream.read == 12 and len(committed.held) == 12
    assert held.finished == {0}


async def test_hold_prefix_stops_at_the_prefix_and_leaves_the_rest_for_the_client():
    upstream = Upstream(words(10))
    committed, held = await held_stream(upstream, 4)
    assert not committed.ended and held.tokens() == 4
    assert "".join(c.choices[0].delta.content or "" for c in committed.held) == " w0 w1 w2 w3"
    rest = [c async for c in committed.rest]
    assert "".join(c.choices[0].delta.content or "" for c in rest) == " w4 w5 w6 w7 w8 w9"


async def test_an_answer_shorter_than_the_prefix_is_held_whole():
    committed, held = await held_stream(Upstream(words(2)), 32)
    assert committed.ended and held.finished == {0}


async def test_a_stall_while_held_is_an_upstream_timeout():
    upstream = Upstream(words(10), stall_after=3)
    c = call(idle_s=0.05)
    committed = await open_stream(upstream.stream(), c)
    with pytest.raises(UpstreamTimeout) as info:
        await _hold(committed, _Held(), c, None)
    assert "held for the gate" in info.value.message and upstream.read == 3
    await committed.rest.aclose()


async def test_the_live_rest_closes_the_upstream_even_if_never_read():
    upstream = Upstream(words(10))
    committed, _ = await held_stream(upstream, 2)
    ended = []
    live = _Live(committed.rest, lambda chunk: None, lambda: ended.append(True))
    await live.aclose()
    assert upstream.closed and not ended


async def test_the_live_rest_reports_its_end_once_read_through():
    committed, _ = await held_stream(Upstream(words(5)), 2)
    seen, ended = [], []
    live = _Live(committed.rest, seen.append, lambda: ended.append(True))
    assert len([c async for c in live]) == len(seen) == 4 and ended == [True]

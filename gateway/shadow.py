"""Shadow mode: a sampled share of accepted cascade answers is also asked of the route's last rung, in
the background, and the pair goes to a JSONL log (one CalibrationRecord a line) for `escalade calibrate`.

A shadow call never delays or fails the client's request: it starts after the answer was accepted, runs
in its own trace, at most `limit` at a time (a sample over the limit is dropped, never queued), and is
cancelled when the gateway shuts down. Records hold scores, features, costs and ids; the prompt and the
answers only when the route sets `record_content: true`.
"""

import asyncio
import contextvars
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import msgspec
from msgspec import UNSET

from gateway.dispatch import Request as Dispatch
from gateway.dispatch import dispatch
from policies.calibrate import CalibrationRecord, agreement
from policies.cascade import Rung
from policies.cost import usage_cost
from policies.gate import Sample, Verdict, sample_of
from providers.base import Inbound
from providers.errors import GatewayError
from providers.schema.chat import ChatRequest

log = logging.getLogger("escalade.shadow")

DEFAULT_LIMIT = 4
"""Shadow calls in flight at once, per gateway process."""


class Shadows:
    """The gateway's shadow calls in flight: bounded, never awaited by a request, cancelled on shutdown."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self.dropped = 0
        """Samples not taken because `limit` calls were already in flight."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._write = asyncio.Lock()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def submit(self, work: Coroutine[Any, Any, None]) -> bool:
        """Start `work` in the background (in a fresh trace context); False when it was dropped."""
        if self._closed or len(self._tasks) >= self.limit:
            work.close()
            self.dropped += 1
            return False
        task = asyncio.get_running_loop().create_task(work, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return True

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("shadow call failed", exc_info=task.exception())

    async def append(self, path: str, line: bytes) -> None:
        """Append one line to the JSONL log (writes are serialised; the file I/O runs off the loop)."""
        async with self._write:
            await asyncio.to_thread(_append, Path(path), line)

    async def aclose(self) -> None:
        """Cancel every shadow call in flight and wait for them to finish (gateway shutdown)."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _append(path: Path, line: bytes) -> None:
    with path.open("ab") as out:
        out.write(line + b"\n")


@dataclass(frozen=True, slots=True)
class Accepted:
    """What the shadow call compares against: the accepted answer, its verdict and cost."""

    sample: Sample
    verdict: Verdict
    cost_usd: float | None
    text: str | None
    """The accepted answer's text, kept only when the route records content."""


async def shadow_call(
    shadows: Shadows, req: Dispatch, inbound: Inbound[ChatRequest], target: Rung, accepted: Accepted
) -> None:
    """Ask the route's last rung the same question (unary), then log the pair's agreement."""
    route = req.runtime.policy.routes[req.plan.route]
    conf = route.gate.shadow if route.gate else None
    if conf is None or not conf.log:
        return
    unary = _unary(inbound)
    sub = replace(
        req,
        deadline=time.monotonic() + req.runtime.policy.timeouts.total_s,
        plan=replace(req.plan, candidates=target.candidates),
    )
    try:
        answer = await dispatch(sub, lambda provider, call: provider.chat(unary, call))
    except GatewayError as error:
        log.info("shadow call for request %s failed: %s", req.request_id, error.kind)
        return
    if not answer.result.choices:
        return
    large = answer.result.choices[0]
    reference = sample_of(large)
    record = CalibrationRecord(
        route=req.plan.route,
        score=accepted.verdict.score,
        agree=agreement(_answer(accepted.sample), _answer(reference)),
        cost_small=accepted.cost_usd or 0.0,
        cost_large=usage_cost(answer.candidate.model.price, answer.result.usage) or 0.0,
        features=dict(accepted.verdict.features),
        request_id=req.request_id,
        at=time.time(),
        weight=1.0 / conf.rate,
        failed=[check for check in accepted.verdict.failed if check != "score"],
    )
    line = msgspec.json.encode(record)
    if route.record_content:
        content = {
            "prompt": msgspec.to_builtins(inbound.typed.messages),
            "small": accepted.text,
            "large": large.message.content,
        }
        line = line[:-1] + b',"content":' + msgspec.json.encode(content) + b"}"
    await shadows.append(conf.log, line)


def _answer(sample: Sample) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    """What `agreement` compares: the answer's text and tool calls."""
    return sample.content, tuple(sample.tool_calls)


def _unary(inbound: Inbound[ChatRequest]) -> Inbound[ChatRequest]:
    """The request as a non-streaming one (a shadow call reads the whole answer at once)."""
    if not inbound.typed.is_stream:
        return inbound
    raw = {k: v for k, v in inbound.raw.items() if k not in ("stream", "stream_options")}
    return Inbound(typed=msgspec.structs.replace(inbound.typed, stream=UNSET, stream_options=UNSET), raw=raw)

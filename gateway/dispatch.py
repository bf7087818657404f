"""Runs a Plan: attempts with tenacity retries, fallback to the next deployment, one span per attempt.

Retry and fallback happen only before the commit point. For a unary call that is the whole call;
for a stream it is the first chunk that carries content or a tool call (`open_stream`): after it
the client has bytes and the answer can no longer change hands.
"""

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from tenacity import AsyncRetrying, RetryCallState, stop_never

from gateway.hedge import race
from gateway.instrument import RequestRecord, abandoned, attempt_span, note_retry
from gateway.observe import Observer, notify
from gateway.runtime import Runtime
from gateway.store.base import Store
from policies.health import Outcome
from policies.retry import Step, next_step
from policies.router import Candidate, Plan
from policies.strategies import larger_context
from providers.base import Call, Provider
from providers.errors import ContextLengthExceeded, GatewayError, NoEligibleRoute, UpstreamSilent

R = TypeVar("R")
C = TypeVar("C")

Attempt = Callable[[Provider, Call], Awaitable[R]]


@dataclass(slots=True)
class Answer(Generic[R]):
    result: R
    candidate: Candidate
    attempts: int
    """Upstream attempts this request made, over all deployments."""
    hedged: bool = False
    """A hedge started: a second deployment raced the first."""


@dataclass(slots=True)
class Committed(Generic[C]):
    """A stream past its commit point: the chunks read so far, and the rest still to read."""

    held: list[C]
    rest: AsyncIterator[C]
    ended: bool
    started: float = 0.0
    """time.monotonic() when the attempt that produced this stream began."""
    span: Any = None
    """The attempt's CLIENT span, open until the stream ends (None while tracing is off)."""


@dataclass(slots=True)
class Request:
    """What dispatch needs to know about the client request."""

    request_id: str
    operation: str
    """GenAI operation name: chat, text_completion, embeddings."""
    deadline: float
    runtime: Runtime
    plan: Plan
    observers: Sequence[Observer] = ()
    """Told the Outcome of every upstream attempt (the state store, metrics)."""
    guard: Store | None = None
    """The state store: half-open probe claims and the retry budget (None: neither applies)."""
    record: RequestRecord | None = None
    """The request's telemetry record (gateway/instrument.py): spans, metrics, the log line."""


async def dispatch(req: Request, attempt: Attempt[R]) -> Answer[R]:
    """Try the plan's candidates in order; raise the FIRST error when none answers.

    The first error is what the client needs to see (the primary's 503, not a fallback's 400 about
    a parameter it does not support). With hedging, the first two candidates race (gateway.hedge).
    After a context-length error only candidates with a larger context window are tried, and only
    when the route has `context_fallback`.
    """
    run = _Run(req, attempt)
    hedge_after = req.plan.hedge_after_s
    for index in range(len(req.plan.candidates)):
        if not run.worth_trying(index) or not await run.admitted(index):
            continue
        if index == 0 and hedge_after is not None and len(req.plan.candidates) > 1:
            raced = await race(run.start(0), run.backup, hedge_after, _release)
            run.hedged = raced.started > 1
            if raced.winner is not None:
                return run.answer(raced.winner, raced.result)  # type: ignore[arg-type]
            if not all([run.failed(i, error) for i, error in raced.errors]):  # record every error
                break
            continue
        try:
            return run.answer(index, await run.start(index))
        except GatewayError as error:
            if not run.failed(index, error):
                break
    raise (
        run.errors[0]
        if run.errors
        else NoEligibleRoute(
            f"route {req.plan.route} has no deployment to try (half-open circuits are being probed)", retry_after_s=1.0
        )
    )


class _Run(Generic[R]):
    """One request's walk through its candidates: attempts counted, errors kept, what is left worth trying."""

    def __init__(self, req: Request, attempt: Attempt[R]) -> None:
        self.req = req
        self.attempt = attempt
        self.candidates = req.plan.candidates
        self.counters = [_Counter() for _ in self.candidates]
        self.route = req.runtime.policy.routes.get(req.plan.route)
        self.errors: list[GatewayError] = []
        self.tried: set[int] = set()
        self.too_long: Candidate | None = None
        """The last candidate whose context window the request overflowed."""
        self.hedged = False

    def worth_trying(self, index: int) -> bool:
        """Not tried yet, and (after a context-length error) with a larger context window."""
        return index not in self.tried and (
            self.too_long is None or larger_context(self.candidates[index], self.too_long)
        )

    async def admitted(self, index: int) -> bool:
        """May this candidate be tried now? A half-open circuit admits one probe at a time."""
        guard, name = self.req.guard, self.candidates[index].name
        if guard is not None and guard.half_open(name) and not await guard.claim_probe(name):
            return False  # its circuit waits for one probe, and another request is it
        if guard is not None:
            guard.first_attempt(name)
        return True

    def start(self, index: int) -> Awaitable[R]:
        self.tried.add(index)
        candidate = self.candidates[index]
        provider = self.req.runtime.providers[candidate.model.provider]
        is_last = index == len(self.candidates) - 1
        return _with_retries(self.req, candidate, provider, self.attempt, self.counters[index], is_last)

    async def backup(self) -> R:
        """The hedge: the second candidate, if the store admits it now."""
        if not await self.admitted(1):
            name = self.candidates[1].name
            raise NoEligibleRoute(f"{name}: its half-open circuit is being probed", retry_after_s=1.0)
        return await self.start(1)

    def answer(self, index: int, result: R) -> Answer[R]:
        attempts = sum(c.n for c in self.counters)
        return Answer(result=result, candidate=self.candidates[index], attempts=attempts, hedged=self.hedged)

    def failed(self, index: int, error: GatewayError) -> bool:
        """Record a candidate's failure; may the next candidate be tried?"""
        self.errors.append(error)
        if isinstance(error, ContextLengthExceeded):
            self.too_long = self.candidates[index]
            return self.route is not None and self.route.context_fallback
        return getattr(error, "escalade_step", None) != "fail" and time.monotonic() < self.req.deadline


async def _release(result: Any) -> None:
    """A hedge loser that reached its commit point anyway: close its stream."""
    if isinstance(result, Committed):
        abandoned(result, "hedge_lost")
        await _close(result.rest)


class _Counter:
    __slots__ = ("n", "retry_reason")

    def __init__(self) -> None:
        self.n = 0
        self.retry_reason: str | None = None


async def _with_retries(
    req: Request, candidate: Candidate, provider: Provider, attempt: Attempt[R], counter: _Counter, is_last: bool
) -> R:
    """One deployment: the first attempt runs bare (the common, successful case pays nothing for
    retry machinery); after a failure the policy's decision says whether tenacity drives more."""
    conf = req.runtime.policy.retries

    def step_after(error: GatewayError, attempt_number: int) -> Step:
        step = next_step(
            error,
            attempt=attempt_number,
            conf=conf,
            now=time.monotonic(),
            deadline=req.deadline,
            rand=random.random(),  # noqa: S311 - jitter, not cryptography
        )
        if step.action == "retry" and req.guard is not None:
            step = _within_budget(step, req.guard, candidate.name)
        error.escalade_step = step.action  # type: ignore[attr-defined]
        note_retry(req, candidate, step, attempt_number, counter)
        return step

    def decide(state: RetryCallState) -> bool:
        error = state.outcome.exception() if state.outcome else None
        if not isinstance(error, GatewayError):
            return False  # cancellation and bugs are not retried
        state.escalade_step = step_after(error, counter.n)  # type: ignore[attr-defined]
        return state.escalade_step.action == "retry"  # type: ignore[attr-defined]

    def wait(state: RetryCallState) -> float:
        step: Step = state.escalade_step  # type: ignore[attr-defined]
        return step.wait_s

    async def one_attempt() -> R:
        counter.n += 1
        call = Call(
            request_id=req.request_id,
            upstream_model=candidate.model.model,
            timeouts=req.runtime.policy.timeouts,
            deadline=req.deadline,
            overrides=candidate.overrides,
            headers={"x-request-id": req.request_id},
            has_fallback=not is_last,
        )
        started = time.monotonic()
        with attempt_span(req, candidate, counter.n, call.headers, counter.retry_reason) as traced:
            try:
                result = await attempt(provider, call)
            except GatewayError as error:
                if req.observers:
                    notify(req.observers, failed_outcome(req.plan.route, candidate.name, error, started))
                raise
            traced.answered(result)
        if req.observers:
            notify(req.observers, success_outcome(req.plan.route, candidate.name, result, started))
        return result

    try:
        return await one_attempt()
    except GatewayError as error:
        first = step_after(error, 1)
        if first.action != "retry":
            raise
        wait_first = first.wait_s
    await asyncio.sleep(wait_first)
    retrying = AsyncRetrying(stop=stop_never, wait=wait, retry=decide, reraise=True, sleep=asyncio.sleep)
    return await retrying(one_attempt)


def _within_budget(step: Step, guard: Store, deployment: str) -> Step:
    """A retry the deployment's retry budget cannot pay for becomes a fallback."""
    return step if guard.allow_retry(deployment) else Step("fallback", reason="retry budget spent")


def failed_outcome(route: str, deployment: str, error: GatewayError, started: float) -> Outcome:
    return Outcome(
        route=route,
        deployment=deployment,
        ok=False,
        error_kind=error.kind,
        status=error.status,
        retry_after_s=getattr(error, "retry_after_s", None),
        ttft_s=None,
        total_s=time.monotonic() - started,
        at=time.time(),
    )


def success_outcome(route: str, deployment: str, result: Any, started: float) -> Outcome:
    """A stream's attempt ends at its commit point (TTFT); a unary call's first token is its last."""
    elapsed = time.monotonic() - started
    if isinstance(result, Committed):
        result.started = started
        return Outcome(route=route, deployment=deployment, ok=True, ttft_s=elapsed, at=time.time())
    usage = getattr(result, "usage", None)
    return Outcome(
        route=route,
        deployment=deployment,
        ok=True,
        ttft_s=elapsed,
        total_s=elapsed,
        input_tokens=getattr(usage, "prompt_tokens", None) if usage else None,
        output_tokens=getattr(usage, "completion_tokens", None) if usage else None,
        at=time.time(),
    )


async def open_stream(provider_stream: AsyncIterator[C], call: Call, provider: str = "upstream") -> Committed[C]:
    """Read a stream up to its commit point: the first chunk carrying content or a tool call.

    The first-token limit runs until the upstream shows progress (answer or reasoning text) and
    applies only when another attempt or deployment could still answer: the last candidate is given
    until the request deadline. Once reasoning flows, each gap is bounded by the idle timeout.
    """
    timeouts = call.timeouts
    limit = min(call.deadline, time.monotonic() + timeouts.first_token_s) if call.has_fallback else call.deadline
    waiting_for = f"no first token within {timeouts.first_token_s:g}s"
    held: list[C] = []
    try:
        while True:
            try:
                async with asyncio.timeout_at(_loop_time(limit)):
                    chunk = await anext(provider_stream)
            except StopAsyncIteration:
                return Committed(held=held, rest=provider_stream, ended=True)
            held.append(chunk)
            if chunk.carries_answer():  # type: ignore[attr-defined]
                return Committed(held=held, rest=provider_stream, ended=False)
            if chunk.shows_progress():  # type: ignore[attr-defined]
                limit = min(call.deadline, time.monotonic() + timeouts.idle_s)
                waiting_for = f"reasoning stalled for {timeouts.idle_s:g}s before the answer"
    except TimeoutError:
        await _close(provider_stream)
        raise UpstreamSilent(f"{provider}: {waiting_for}", provider=provider) from None
    except BaseException:
        await _close(provider_stream)
        raise


async def _close(stream: AsyncIterator[Any]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


def _loop_time(deadline: float) -> float:
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())

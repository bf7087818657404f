"""strategy cascade: rung after rung until an answer passes the gate (policies/gate.py).

Each rung is dispatched like a route of its own (its deployments in plan order, with retries and
fallback: gateway/dispatch.py). A gated rung is asked for token logprobs, its answer is judged, and a
rejected answer or a failed rung escalates to the next rung. The last rung that can run answers
without a gate. Before a rung runs, its estimated cost must fit what is left of the cost cap (the
route's max_cost_usd, the request's x-escalade-max-cost-usd, the key's budget); a rung that does not
fit is skipped.

Streams hold a gated rung's output back until the gate decides. `hold: full` reads the whole answer
first; `hold: prefix` reads the first `prefix_tokens` answer tokens, judges them, then commits and
streams the rest live: after that there is no escalation, and a failure is the usual in-band error.
Reasoning chunks before the answer are held with it.
"""

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import msgspec

from gateway.dispatch import Answer, Committed, dispatch, open_stream
from gateway.dispatch import Request as Dispatch
from gateway.facts import MAX_COST_HEADER, parse_cost_cap
from gateway.instrument import abandoned, cascade_step
from gateway.shadow import Accepted, Shadows, shadow_call
from gateway.store.admission import BudgetExceeded
from gateway.telemetry import current_span, tracing_active
from policies.cascade import (
    CostCapExceeded,
    Rung,
    Step,
    can_follow,
    client_logprobs,
    combine,
    cost_limit,
    escalations,
    estimate,
    gate_header,
    gate_overrides,
    left_of,
    rungs_of,
    with_gate_overrides,
    within,
)
from policies.cost import Size, estimate_cost, request_size, usage_cost
from policies.gate import Sample, SampleBuilder, Verdict, expectations, judge, sample_of
from policies.router import Candidate, capabilities_of
from policies.schema import GateConf
from providers.base import Call, Inbound, Provider
from providers.errors import GatewayError, UpstreamTimeout
from providers.schema.chat import ChatCompletion, ChatCompletionChunk, ChatRequest, ChunkChoice, Usage
from providers.schema.codec import encode

Attempt = Callable[[Provider, Call], Awaitable[Any]]
Charge = Callable[[float, Usage | None], None]
"""Bills a rung's cost and tokens to the client's key (gateway/store/admission.py settle)."""


def _report(route: str, steps: list[Step], step: Step) -> None:
    """Every rung's fate passes through here, once: pass/fail verdicts, failed rungs, skipped rungs and
    the ungated answer. The response headers are read from `steps`; the trace is set here (metrics
    hook here too)."""
    steps.append(step)
    if not tracing_active():
        return
    span = current_span()
    event: dict[str, Any] = {"escalade.route": route, "escalade.rung": step.rung, "escalade.rung.action": step.action}
    if step.deployment:
        event["escalade.deployment"] = step.deployment
    if step.why:
        event["escalade.rung.why"] = step.why
    if step.action in ("pass", "fail"):
        if step.score is not None:
            event["escalade.gate.score"] = step.score
            span.set_attribute("escalade.gate.score", step.score)
        event["escalade.gate.failed_checks"] = tuple(step.failed)
        span.set_attribute("escalade.gate.failed_checks", tuple(step.failed))
    span.add_event("escalade.cascade.rung", event)
    span.set_attribute("escalade.escalations", escalations(steps))
    span.set_attribute("escalade.escalated", escalations(steps) > 0)
    if step.action in ("pass", "answer"):
        span.set_attribute("escalade.rung", step.rung)


@dataclass(slots=True)
class _Held:
    """A gated stream's gate samples, one builder per choice, fed with every chunk read."""

    builders: dict[int, SampleBuilder] = field(default_factory=dict)
    finished: set[int] = field(default_factory=set)
    usage: Usage | None = None
    text: list[str] | None = None
    """The answer's text, collected only when the route records content (for shadow records)."""

    def add(self, chunk: ChatCompletionChunk) -> None:
        if isinstance(chunk.usage, Usage):
            self.usage = chunk.usage
        for choice in chunk.choices:
            builder = self.builders.get(choice.index)
            if builder is None:
                builder = self.builders[choice.index] = SampleBuilder()
            builder.add(_as_only_choice(chunk, choice))
            if choice.finish_reason:
                self.finished.add(choice.index)
            if self.text is not None and choice.index == 0 and isinstance(choice.delta.content, str):
                self.text.append(choice.delta.content)

    def take(self, other: "_Held") -> None:
        """Keep what the attempt that answered read (an earlier, failed attempt's reads are dropped)."""
        self.builders, self.finished, self.usage, self.text = other.builders, other.finished, other.usage, other.text

    def tokens(self) -> int:
        return sum(builder.tokens() for builder in self.builders.values())

    def reached(self, prefix: int) -> bool:
        """Every unfinished choice has `prefix` answer tokens. Once every choice has finished, only the
        stream's end is left to read: the gate then sees the whole answer."""
        unfinished = [b for index, b in self.builders.items() if index not in self.finished]
        return bool(unfinished) and all(builder.tokens() >= prefix for builder in unfinished)

    def verdict(self, conf: GateConf, expect: Any, *, complete: bool) -> Verdict:
        if not self.builders:
            return Verdict(passed=False, score=None, failed=("empty",), features={})
        return combine([judge(b.sample(complete=complete), expect, conf) for b in self.builders.values()])

    def first_sample(self) -> Sample:
        return self.builders[min(self.builders)].sample(complete=True)


class Cascade:
    """One request's walk down a cascade route's rungs. `unary()` or `stream()` runs it; `headers()` and
    `cost()` then describe what happened."""

    def __init__(
        self,
        req: Dispatch,
        inbound: Inbound[ChatRequest],
        *,
        body_bytes: int,
        request_cap: float | None = None,
        key_left: float | None = None,
        shadows: Shadows,
        charge: Charge = lambda usd, usage: None,
    ) -> None:
        self.req = req
        self.inbound = inbound
        self.route = req.runtime.policy.routes[req.plan.route]
        self.gate = self.route.gate or GateConf()
        self.expect = expectations(inbound.typed)
        n = inbound.typed.n if isinstance(inbound.typed.n, int) else 1
        self.size = request_size(body_bytes, inbound.typed.output_cap, n)
        self.limit = cost_limit(self.route.max_cost_usd, request_cap, key_left)
        self.key_limits = key_left is not None and key_left == self.limit
        """The key's budget is the tightest cap: running out of it is the key's 429, not a 400."""
        self.charge = charge
        self.rungs = rungs_of(req.plan)
        self.shadows = shadows
        self.steps: list[Step] = []
        self.spent = 0.0
        self.attempts = 0
        self.cost_known = True
        """False once a live stream answers: its cost is known only at its end."""
        self.first_error: GatewayError | None = None

    @classmethod
    def for_request(
        cls,
        req: Dispatch,
        inbound: Inbound[ChatRequest],
        headers: Mapping[str, str],
        *,
        key_left: float | None,
        shadows: Shadows,
        charge: Charge,
    ) -> "Cascade":
        """The cascade for a client request: its size from the body it sent, its cap from its header and
        what is left of its key's budget (`key_left`, None: no key budget)."""
        length = headers.get("content-length")
        body_bytes = int(length) if length and length.isdigit() else len(encode(inbound.raw))
        cap = parse_cost_cap(headers.get(MAX_COST_HEADER))
        return cls(
            req, inbound, body_bytes=body_bytes, request_cap=cap, key_left=key_left, shadows=shadows, charge=charge
        )

    # ------------------------------------------------------------ what the answer says about the walk

    def headers(self) -> dict[str, str]:
        answered = next(step for step in reversed(self.steps) if step.action in ("pass", "answer"))
        return {
            "x-escalade-rung": str(answered.rung),
            "x-escalade-escalations": str(escalations(self.steps)),
            "x-escalade-gate": gate_header(self.steps),
        }

    def cost(self) -> float | None:
        """USD spent over every rung, when known before the answer leaves (not for a live stream)."""
        return self.spent if self.cost_known else None

    # ------------------------------------------------------------ unary

    async def unary(self) -> Answer[ChatCompletion]:
        for rung, candidates, gated in self._ladder():
            answer = await self._run(rung, self._sub(candidates, gated), self._chat(gated))
            if answer is None:
                continue
            result: ChatCompletion = answer.result
            cost = self._spend(answer.candidate, result.usage)
            self.charge(cost, result.usage)
            if not gated:
                self._answered(rung, answer.candidate, cost)
                return self._final(answer)
            verdict = self._judge_choices(result)
            self._judged(rung, answer.candidate, verdict, cost)
            if verdict.passed:
                for choice in result.choices:
                    choice.logprobs = client_logprobs(choice.logprobs, self.inbound.typed)
                if result.choices and self._shadow_sampled():
                    small = sample_of(result.choices[0])
                    self._shadow(Accepted(small, verdict, cost, result.choices[0].message.content))
                return self._final(answer)
        raise self._exhausted()

    def _chat(self, gated: bool) -> Attempt:
        async def attempt(provider: Provider, call: Call) -> ChatCompletion:
            self.attempts += 1
            call.has_fallback = call.has_fallback or gated
            return await provider.chat(self.inbound, call)

        return attempt

    def _judge_choices(self, result: ChatCompletion) -> Verdict:
        if not result.choices:
            return Verdict(passed=False, score=None, failed=("empty",), features={})
        return combine([judge(sample_of(choice), self.expect, self.gate) for choice in result.choices])

    # ------------------------------------------------------------ streaming

    async def stream(self) -> Answer[Committed[ChatCompletionChunk]]:
        for rung, candidates, gated in self._ladder():
            held = _Held()
            answer = await self._run(rung, self._sub(candidates, gated), self._open(gated, held))
            if answer is None:
                continue
            if not gated:
                self.cost_known = False
                self._answered(rung, answer.candidate, None)
                return self._final(answer)
            committed: Committed[ChatCompletionChunk] = answer.result
            verdict = held.verdict(self.gate, self.expect, complete=committed.ended)
            seen = None if committed.ended else held.tokens()
            cost = self._spend(answer.candidate, held.usage, seen)
            self._judged(rung, answer.candidate, verdict, cost)
            if verdict.passed:
                return self._final(replace(answer, result=self._release(committed, held, verdict, cost)))
            self.charge(cost, held.usage)  # a passed-over rung; the answering stream is billed by the relay
            abandoned(committed, "gate_failed")
            await _close(committed.rest)
        raise self._exhausted()

    def _open(self, gated: bool, held: _Held) -> Attempt:
        """An attempt that opens the stream; for a gated rung it also reads what the gate must see."""
        prefix = self.gate.prefix_tokens if self.gate.hold == "prefix" else None
        keep_text = self.route.record_content and self.gate.shadow is not None

        async def attempt(provider: Provider, call: Call) -> Committed[ChatCompletionChunk]:
            self.attempts += 1
            call.has_fallback = call.has_fallback or gated
            committed = await open_stream(provider.chat_stream(self.inbound, call), call, provider.name)
            if not gated:
                return committed
            fresh = _Held(text=[] if keep_text else None)
            try:
                await _hold(committed, fresh, call, prefix)
            except BaseException:
                await _close(committed.rest)
                raise
            held.take(fresh)
            return committed

        return attempt

    def _release(
        self, committed: Committed[ChatCompletionChunk], held: _Held, verdict: Verdict, cost: float
    ) -> Committed[ChatCompletionChunk]:
        """The accepted stream as the client gets it: logprobs only as it asked for them; a prefix-held
        stream goes on live (and its shadow, if sampled, starts once it has ended)."""
        for chunk in committed.held:
            self._for_client(chunk)
        shadow = self._shadow_sampled()
        if committed.ended:
            if shadow:
                self._shadow(Accepted(held.first_sample(), verdict, cost, _joined(held.text)))
            return committed
        self.cost_known = False
        committed.rest = self._live(committed.rest, held if shadow else None, verdict)
        return committed

    def _live(self, rest: AsyncIterator[ChatCompletionChunk], held: _Held | None, verdict: Verdict) -> "_Live":
        def on_chunk(chunk: ChatCompletionChunk) -> None:
            if held is not None:
                held.add(chunk)
            self._for_client(chunk)

        def on_end() -> None:
            if held is not None:
                self._shadow(Accepted(held.first_sample(), verdict, None, _joined(held.text)))

        return _Live(rest, on_chunk, on_end)

    def _for_client(self, chunk: ChatCompletionChunk) -> None:
        for choice in chunk.choices:
            if choice.logprobs is not None:
                choice.logprobs = client_logprobs(choice.logprobs, self.inbound.typed)

    # ------------------------------------------------------------ the ladder

    def _ladder(self) -> Iterator[tuple[Rung, tuple[Candidate, ...], bool]]:
        """Each rung that can run, with the candidates that fit the budget and whether it is gated (a
        later rung could still run after it). Rungs that cannot run are reported as skipped."""
        planned = {rung.number: rung for rung in self.rungs}
        for number in range(len(self.route.rungs)):
            rung = planned.get(number)
            if rung is None:
                self._step(Step(number, "skip", why=self._why_unplanned(number)))
                continue
            if time.monotonic() >= self.req.deadline:
                return
            fits = within(rung.candidates, self.size, left_of(self.limit, self.spent))
            if not fits:
                self._step(Step(number, "skip", why="budget"))
                continue
            after = left_of(self.limit, self.spent + estimate(fits[0], self.size))
            later = [r for r in self.rungs if r.number > number]
            yield rung, fits, can_follow(later, self.size, after)

    def _why_unplanned(self, number: int) -> str:
        """Why planning left a rung without deployments: all over the cost cap, or not able or not
        available now (capabilities, context window, engine readiness, circuit; the span's
        escalade.skipped names each)."""
        models = [self.req.runtime.policy.models[name] for name in self.route.rungs[number].models]
        over = self.limit is not None and all(estimate_cost(m.price, self.size) > self.limit for m in models)
        return "budget" if over else "unavailable"

    def _sub(self, candidates: tuple[Candidate, ...], gated: bool) -> Dispatch:
        """The dispatch of one rung; a gated rung's deployments that can are asked for logprobs."""
        if gated:
            extra = gate_overrides(self.inbound.typed)
            policy = self.req.runtime.policy
            candidates = tuple(
                with_gate_overrides(c, extra) if "logprobs" in capabilities_of(policy, c.model) else c
                for c in candidates
            )
        first = bool(self.rungs) and candidates[0].rung == self.rungs[0].number
        hedge = self.req.plan.hedge_after_s if first else None  # the plan's hedge races its first rung's two
        return replace(self.req, plan=replace(self.req.plan, candidates=candidates, hedge_after_s=hedge))

    async def _run(self, rung: Rung, sub: Dispatch, attempt: Attempt) -> Answer[Any] | None:
        """One rung's dispatch; a failure (after its retries and fallback) is reported and escalates."""
        try:
            return await dispatch(sub, attempt)
        except GatewayError as error:
            self.first_error = self.first_error or error
            self._step(Step(rung.number, "error", why=error.kind))
            return None

    def _spend(self, candidate: Candidate, usage: Usage | None, seen_tokens: int | None = None) -> float:
        """Count a rung's cost: from its usage, else estimated (from the tokens read, for a stream the
        gateway closed early)."""
        cost = usage_cost(candidate.model.price, usage)
        if cost is None:
            output = self.size.output_tokens if seen_tokens is None else seen_tokens
            cost = estimate_cost(candidate.model.price, Size(self.size.prompt_tokens, output))
        self.spent += cost
        return cost

    def _answered(self, rung: Rung, candidate: Candidate, cost: float | None) -> None:
        """The ungated answer; the rungs after it, which could not run, are reported as skipped."""
        self._step(Step(rung.number, "answer", candidate.name, cost_usd=cost))
        planned = {r.number for r in self.rungs}
        for number in range(rung.number + 1, len(self.route.rungs)):
            self._step(Step(number, "skip", why="budget" if number in planned else self._why_unplanned(number)))

    def _judged(self, rung: Rung, candidate: Candidate, verdict: Verdict, cost: float) -> None:
        action = "pass" if verdict.passed else "fail"
        self._step(Step(rung.number, action, candidate.name, verdict.score, tuple(verdict.failed), cost_usd=cost))

    def _step(self, step: Step) -> None:
        _report(self.req.plan.route, self.steps, step)
        cascade_step(self.req.record, self.req.plan.route, step)  # gate decision and escalation metrics

    def _final(self, answer: Answer[Any]) -> Answer[Any]:
        return replace(answer, attempts=self.attempts)

    def _exhausted(self) -> GatewayError:
        """Why no rung answered: the first rung error, else the budget, else the deadline."""
        if self.first_error is not None:
            return self.first_error
        route = self.req.plan.route
        if any(step.action == "skip" for step in self.steps):
            cap = f"${self.limit:.6f}" if self.limit is not None else "the cap"
            cap = f"this key's remaining budget ({cap})" if self.key_limits else f"the cost cap of {cap}"
            if not self.steps or all(step.action == "skip" for step in self.steps):
                cheapest = min(estimate(c, self.size) for r in self.rungs for c in r.candidates)
                why = f"no rung of route {route} fits {cap} (the cheapest needs about ${cheapest:.6f})"
            else:
                why = f"route {route}: the answer failed the gate and no later rung fits what is left of {cap}"
            return BudgetExceeded(why) if self.key_limits else CostCapExceeded(why)
        return UpstreamTimeout(f"route {route}: the request's time ran out before a rung answered")

    # ------------------------------------------------------------ shadow mode

    def _shadow_sampled(self) -> bool:
        conf = self.gate.shadow
        return bool(conf and conf.log and conf.rate > 0 and random.random() < conf.rate)  # noqa: S311 - sampling

    def _shadow(self, accepted: Accepted) -> None:
        target = self.rungs[-1]
        self.shadows.submit(shadow_call(self.shadows, self.req, self.inbound, target, accepted))


def _as_only_choice(chunk: ChatCompletionChunk, choice: ChunkChoice) -> ChatCompletionChunk:
    """The chunk as a builder sees it: a SampleBuilder follows one choice, index 0 (n > 1 gets one
    builder per choice, each fed its choice as index 0)."""
    if choice.index == 0 and len(chunk.choices) == 1:
        return chunk
    return msgspec.structs.replace(chunk, choices=[msgspec.structs.replace(choice, index=0)])


class _Live:
    """The rest of a prefix-committed stream as the client gets it. A class, not an async generator:
    `aclose()` must close the upstream stream even when the relay never started reading it."""

    def __init__(
        self,
        rest: AsyncIterator[ChatCompletionChunk],
        on_chunk: Callable[[ChatCompletionChunk], None],
        on_end: Callable[[], None],
    ) -> None:
        self._rest = rest
        self._on_chunk = on_chunk
        self._on_end = on_end

    def __aiter__(self) -> "_Live":
        return self

    async def __anext__(self) -> ChatCompletionChunk:
        try:
            chunk = await anext(self._rest)
        except StopAsyncIteration:
            self._on_end()
            raise
        self._on_chunk(chunk)
        return chunk

    async def aclose(self) -> None:
        await _close(self._rest)


async def _hold(committed: Committed[ChatCompletionChunk], held: _Held, call: Call, prefix: int | None) -> None:
    """Read on from the commit point, holding every chunk: to the end, or (prefix) until each choice has
    `prefix` answer tokens. Each gap is bounded by the idle timeout, the whole by the deadline."""
    for chunk in committed.held:
        held.add(chunk)
    loop = asyncio.get_running_loop()
    idle = call.timeouts.idle_s
    while not committed.ended and not (prefix is not None and held.reached(prefix)):
        now = time.monotonic()
        limit = min(call.deadline, now + idle)
        try:
            async with asyncio.timeout_at(loop.time() + (limit - now)):
                chunk = await anext(committed.rest, None)
        except TimeoutError:
            which = "total time limit" if limit >= call.deadline else f"idle timeout ({idle:g}s)"
            raise UpstreamTimeout(f"upstream stream stopped while held for the gate: {which} reached") from None
        if chunk is None:
            committed.ended = True
            break
        committed.held.append(chunk)
        held.add(chunk)


async def _close(stream: AsyncIterator[Any]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


def _joined(parts: list[str] | None) -> str | None:
    return "".join(parts) if parts is not None else None

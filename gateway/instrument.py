"""Per-request instrumentation: one record per client request, filled on the way, closed exactly once.

`Instrumented` (ASGI middleware on the client listener's inference endpoints) opens the record and the
request's SERVER span; when the response has been sent (a stream: when it ended) it records the
request metrics, writes the request's log line and ends the span. On the way, `_prepare` names the
route (`note_route`, `planned`), dispatch opens one CLIENT span per attempt (`attempt_span`) and
counts retries (`note_retry`), and the endpoints say who answered and at what cost.

Tracing off costs a `tracing_active()` check per hook and creates no span object.
"""

import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from msgspec import UNSET

from gateway import telemetry
from gateway.logs import log_request, request_log
from gateway.metrics import NO_MODEL, UNKNOWN_ROUTE, GatewayMetrics
from policies.cost import usage_cost
from providers.schema.codec import encode

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from gateway.dispatch import Committed
    from gateway.dispatch import Request as Dispatch
    from gateway.state import GatewayState
    from policies.retry import Step
    from policies.router import Candidate, Plan
    from policies.schema import Policy

P = TypeVar("P")
RECORD_KEY = "escalade_record"
REQUEST_ID_KEY = "escalade_request_id"
INSTRUMENTED = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")
_INFO = logging.INFO


@dataclass(slots=True)
class RequestRecord:
    """What one client request did, as metrics, the log line and the SERVER span report it."""

    metrics: GatewayMetrics | None
    started: float
    """time.perf_counter() when the request arrived."""
    span: "Span | None" = None
    """The SERVER span (None while tracing is off)."""
    traced: bool = False
    """The SERVER span is sampled: only then are the routing and attempt spans made (same as the sampler's
    parent-based decision, without building spans nobody records)."""
    route: str = UNKNOWN_ROUTE
    """A route of the policy, or `unknown`: never the client's raw string (metric label cardinality)."""
    deployment: str = NO_MODEL
    stream: bool = False
    """The client asked for a stream."""
    attempts: int = 0
    error_type: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    ttft_s: float | None = None
    truncated: bool = False
    prompt: str | None = None
    """The request's messages as JSON, only when tracing is on and the route records content."""
    extra: dict[str, Any] = field(default_factory=dict)


def record_of(scope: Any) -> RequestRecord | None:
    return scope.get(RECORD_KEY)  # type: ignore[no-any-return]


def request_id(scope: Any) -> str:
    """The client's x-request-id when it is sane, else a new one; remembered in the ASGI scope."""
    rid = scope.get(REQUEST_ID_KEY)
    if rid is None:
        given = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given = value.decode("latin-1")
                break
        # a correlation id, not a secret: the fast PRNG is enough (os.urandom costs a syscall a request)
        rid = given if given and _REQUEST_ID.fullmatch(given) else f"{random.getrandbits(96):024x}"
        scope[REQUEST_ID_KEY] = rid
    return rid  # type: ignore[no-any-return]


# ---------------------------------------------------------------- the middleware


class Instrumented:
    """ASGI middleware: opens the request's record and SERVER span, closes both after the last byte."""

    def __init__(self, app: Any, state: "GatewayState") -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in INSTRUMENTED:
            await self.app(scope, receive, send)
            return
        rec = RequestRecord(metrics=self.state.metrics, started=time.perf_counter())
        scope[RECORD_KEY] = rec
        request_id(scope)
        token = None
        if telemetry.tracing_active():
            rec.span, token = telemetry.start_server_span(scope["method"], scope["path"], scope["headers"])
            rec.traced = rec.span.is_recording()
        status = 0

        async def watched(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            _close(rec, status or 500, scope, token)


def _close(rec: RequestRecord, status: int, scope: Any, token: object) -> None:
    duration = time.perf_counter() - rec.started
    if rec.error_type is None and status >= 400:
        rec.error_type = f"http_{status}"
    if rec.metrics is not None:
        rec.metrics.request_done(rec.route, rec.deployment, status, duration, rec.stream, rec.error_type, rec.ttft_s)
    if request_log.isEnabledFor(_INFO):
        log_request(
            {
                "request_id": scope.get(REQUEST_ID_KEY),
                "trace_id": telemetry.trace_id_of(rec.span, scope["headers"]),
                "method": scope["method"],
                "path": scope["path"],
                "route": rec.route,
                "deployment": rec.deployment,
                "status": status,
                "duration_ms": round(duration * 1000, 3),
                "stream": rec.stream,
                "ttft_ms": round(rec.ttft_s * 1000, 3) if rec.ttft_s is not None else None,
                "attempts": rec.attempts,
                "input_tokens": rec.input_tokens,
                "output_tokens": rec.output_tokens,
                "cost_usd": rec.cost_usd,
                "error_type": rec.error_type,
                **rec.extra,
            }
        )
    if rec.span is not None:
        attributes: dict[str, Any] = {"escalade.route": rec.route, "escalade.deployment": rec.deployment}
        if rec.error_type is not None:
            attributes["error.type"] = rec.error_type
        if rec.cost_usd is not None:
            attributes["escalade.cost_usd"] = rec.cost_usd
        if rec.ttft_s is not None:  # a stream that reached its commit point
            attributes["escalade.stream.truncated"] = rec.truncated
        telemetry.end_server_span(rec.span, token, status, attributes)


def note_error(scope: Any, kind: str) -> None:
    """An exception handler turned the request into an error response of this kind."""
    rec = scope.get(RECORD_KEY)
    if rec is not None:
        rec.error_type = kind


# ---------------------------------------------------------------- route and plan


def note_route(rec: RequestRecord | None, route: str, policy: "Policy", inbound: Any) -> None:
    """The request names `route`: the label it gets (a policy route or `unknown`), and its content when
    the route records content and tracing is on."""
    if rec is None:
        return
    rec.stream = getattr(inbound.typed, "is_stream", False) is True
    conf = policy.routes.get(route)
    if conf is None:
        return
    rec.route = route
    if conf.record_content and rec.traced:
        rec.prompt = _prompt_json(inbound.typed)


def _prompt_json(typed: Any) -> str:
    for name in ("messages", "prompt", "input"):
        value = getattr(typed, name, None)
        if value is not None:
            return encode(value).decode()
    return "[]"


def planned(rec: RequestRecord | None, route: str, version: str, make_plan: Callable[[], "Plan"]) -> "Plan":
    """Run the routing decision; with tracing on, record it as a span (also when it refuses the request)."""
    if rec is None or not rec.traced:
        return make_plan()
    start = time.time_ns()
    try:
        the_plan = make_plan()
    except Exception as error:
        telemetry.routing_span(route, None, (), (), version, start, error)
        raise
    candidates = [c.name for c in the_plan.candidates]
    telemetry.routing_span(the_plan.route, the_plan.strategy, candidates, the_plan.skipped, version, start)
    return the_plan


# ---------------------------------------------------------------- attempts


class _NoAttempt:
    """The attempt scope while tracing is off: nothing to do."""

    __slots__ = ()

    def __enter__(self) -> "_NoAttempt":
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def answered(self, result: Any) -> None:
        return None


NO_ATTEMPT = _NoAttempt()


class AttemptScope:
    """One attempt's CLIENT span, current while the attempt runs.

    A failure ends it with `error.type`; `answered` sets the response attributes and ends it, except
    for a stream past its commit point, whose span lives on (on `Committed.span`) until the stream ends.
    """

    __slots__ = ("deployment", "req", "span", "started", "token")

    def __init__(self, req: "Dispatch", deployment: str, span: "Span", token: object) -> None:
        self.req = req
        self.deployment = deployment
        self.span: Span | None = span
        self.token = token
        self.started = time.monotonic()

    def __enter__(self) -> "AttemptScope":
        return self

    def __exit__(self, _type: object, error: BaseException | None, _tb: object) -> None:
        telemetry.leave(self.token)
        span = self.span
        if span is not None:
            self.span = None
            if error is not None:
                telemetry.fail_span(span, error)
            else:
                span.end()

    def answered(self, result: Any) -> None:
        span = self.span
        if span is None:
            return
        self.span = None
        elapsed_ms = round((time.monotonic() - self.started) * 1000, 3)
        attributes: dict[str, Any] = {"escalade.ttft_ms": elapsed_ms}
        held = getattr(result, "held", None)
        if held is not None:  # a stream at its commit point
            first = held[0] if held else None
            if first is not None and first.model:
                attributes["gen_ai.response.model"] = first.model
            attributes["escalade.stream.committed"] = True
            span.set_attributes(attributes)
            result.span = span
            return
        if getattr(result, "model", None):
            attributes["gen_ai.response.model"] = result.model
        _usage_attributes(attributes, getattr(result, "usage", None), self.req, self.deployment)
        choices = getattr(result, "choices", None)
        if choices:
            reasons = tuple([c.finish_reason for c in choices if c.finish_reason])
            if reasons:
                attributes["gen_ai.response.finish_reasons"] = reasons
            rec = self.req.record
            if rec is not None and rec.prompt is not None:
                attributes["gen_ai.output.messages"] = _output_json(choices)
        span.set_attributes(attributes)
        span.end()


def _usage_attributes(attributes: dict[str, Any], usage: Any, req: "Dispatch", deployment: str) -> None:
    if not usage:
        return
    attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
    completion = getattr(usage, "completion_tokens", None)
    if completion is not None:
        attributes["gen_ai.usage.output_tokens"] = completion
        model = req.runtime.policy.models.get(deployment)
        if model is not None:
            cost = usage_cost(model.price, usage)
            if cost is not None:
                attributes["escalade.cost_usd"] = cost


def _output_json(choices: Any) -> str:
    out = []
    for c in choices:
        message = getattr(c, "message", None)
        if message is not None:
            out.append({"role": message.role, "content": message.content, "finish_reason": c.finish_reason})
        else:
            out.append({"role": "assistant", "content": getattr(c, "text", None), "finish_reason": c.finish_reason})
    return encode(out).decode()


def attempt_span(
    req: "Dispatch", candidate: "Candidate", number: int, headers: dict[str, str], retry_reason: str | None = None
) -> "AttemptScope | _NoAttempt":
    """The CLIENT span of one upstream attempt, per the GenAI conventions (no span while tracing is off).

    With the policy's `telemetry.propagate_trace_context`, the attempt's `traceparent` goes into `headers`.
    """
    rec = req.record
    runtime = req.runtime
    propagate = runtime.policy.telemetry.propagate_trace_context
    if rec is not None and not rec.traced:  # tracing off, or this request not sampled: no span to make
        if propagate and rec.span is not None:
            telemetry.inject(rec.span, headers)  # the upstream joins the trace, unsampled
        return NO_ATTEMPT
    if rec is None and not telemetry.tracing_active():
        return NO_ATTEMPT
    key = (req.operation, req.plan.route, candidate.name, candidate.rung, number)
    head = runtime.span_heads.get(key)
    if head is None:
        head = _attempt_head(req, candidate, number)
        if len(runtime.span_heads) < 4096:
            runtime.span_heads[key] = head
    attributes = dict(head)
    if retry_reason:
        attributes["escalade.retry.reason"] = retry_reason
    if rec is not None and rec.prompt is not None:
        attributes["gen_ai.input.messages"] = rec.prompt
    span, token = telemetry.start_attempt_span(
        req.operation, candidate.model.model, attributes, headers if propagate else None
    )
    return AttemptScope(req, candidate.name, span, token)


def _attempt_head(req: "Dispatch", candidate: "Candidate", number: int) -> dict[str, Any]:
    """The attributes an attempt span starts with that follow from the policy and the attempt alone."""
    runtime = req.runtime
    model = candidate.model
    conf = runtime.provider_confs.get(model.provider)
    kind = type(conf).__struct_config__.tag if conf is not None else None  # type: ignore[attr-defined]
    system = telemetry.PROVIDER_NAMES.get(kind or "", kind or model.provider)
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": req.operation,
        "gen_ai.provider.name": system,
        "gen_ai.system": system,
        "gen_ai.request.model": model.model,
        "escalade.route": req.plan.route,
        "escalade.deployment": candidate.name,
        "escalade.attempt": number,
        "escalade.policy.version": runtime.version,
    }
    server = telemetry.server_of(getattr(conf, "base_url", None))
    if server is not None:
        attributes["server.address"], attributes["server.port"] = server
    if candidate.rung:
        attributes["escalade.rung"] = candidate.rung
    return attributes


def note_retry(req: "Dispatch", candidate: "Candidate", step: "Step", attempt: int, counter: Any) -> None:
    """After a failed attempt: when the step is a retry of `candidate` (after `step.wait_s`), count it, show
    the backoff on the trace, and remember the reason for the next attempt's span (`counter.retry_reason`)."""
    if step.action != "retry":
        return
    counter.retry_reason = step.reason
    rec = req.record
    if rec is None:
        return
    if rec.metrics is not None:
        rec.metrics.retried(req.plan.route, candidate.name, step.reason or "error")
    if rec.traced:
        telemetry.add_event(
            "escalade.backoff",
            {
                "escalade.deployment": candidate.name,
                "escalade.attempt": attempt,
                "escalade.retry.reason": step.reason or "error",
                "escalade.backoff_ms": round(step.wait_s * 1000, 3),
            },
        )


# ---------------------------------------------------------------- answers


def answered(rec: RequestRecord | None, deployment: str, attempts: int, usage: Any, cost: float | None) -> None:
    """A unary request got its answer from `deployment`."""
    if rec is None:
        return
    rec.deployment = deployment
    rec.attempts = attempts
    if usage:
        rec.input_tokens = usage.prompt_tokens
        rec.output_tokens = getattr(usage, "completion_tokens", None)
    rec.cost_usd = cost


def committed(rec: RequestRecord | None, deployment: str, attempts: int) -> None:
    """A streaming request reached its commit point on `deployment`."""
    if rec is None:
        return
    rec.deployment = deployment
    rec.attempts = attempts
    rec.ttft_s = time.perf_counter() - rec.started


class StreamWatch:
    """What a traced stream's relay saw: finish reasons, and the text when the route records content."""

    __slots__ = ("finish_reasons", "text")

    def __init__(self, keep_text: bool) -> None:
        self.finish_reasons: list[str] = []
        self.text: list[str] | None = [] if keep_text else None

    def see(self, chunk: Any) -> None:
        for choice in chunk.choices:
            if choice.finish_reason:
                self.finish_reasons.append(choice.finish_reason)
            if self.text is not None:
                content = getattr(choice, "delta", None)
                content = content.content if content is not None else getattr(choice, "text", None)
                if content and content is not UNSET:
                    self.text.append(content)


class _NoWatch:
    __slots__ = ()

    def see(self, chunk: Any) -> None:
        return None


NO_WATCH = _NoWatch()


def stream_watch(rec: RequestRecord | None, stream: "Committed[Any]") -> "StreamWatch | _NoWatch":
    """A watch for the relay when the stream's attempt is traced; one that sees nothing otherwise."""
    if stream.span is None:
        return NO_WATCH
    return StreamWatch(keep_text=rec is not None and rec.prompt is not None)


def stream_ended(
    rec: RequestRecord | None,
    stream: "Committed[Any]",
    price: Any,
    usage: Any,
    failure: BaseException | None,
    completed: bool,
    watch: "StreamWatch | _NoWatch",
) -> None:
    """The relay of a committed stream is over: complete, cut by an upstream failure, or left by the client."""
    cost = usage_cost(price, usage) if usage and price is not None else None
    if rec is not None:
        if usage:
            rec.input_tokens = usage.prompt_tokens
            rec.output_tokens = usage.completion_tokens
        rec.cost_usd = cost
        rec.truncated = not completed
        if failure is not None:
            rec.error_type = getattr(failure, "kind", type(failure).__name__)
        elif not completed:
            rec.error_type = "ClientDisconnected"
    span = stream.span
    if span is not None:
        stream.span = None
        _end_stream_span(span, usage, cost, failure, completed, watch)


def abandoned(stream: "Committed[Any]", why: str) -> None:
    """A stream dropped at its commit point (`hedge_lost`: the other attempt won; `gate_failed`: a cascade
    rung's answer was passed over): its span ends, saying so in `escalade.stream.dropped`."""
    span = stream.span
    if span is not None:
        stream.span = None
        span.set_attribute("escalade.stream.dropped", why)
        span.end()


def cascade_step(rec: RequestRecord | None, route: str, step: Any) -> None:
    """A cascade rung's fate (policies.cascade.Step): gate decisions and escalations for the metrics.

    The escalation reason is the first failed check (`score` when the score was too low, `json_schema`,
    `truncated`...) or, for a rung that failed, its error type: names from fixed sets, never text."""
    metrics = rec.metrics if rec is not None else None
    if metrics is None:
        return
    if step.action in ("pass", "fail"):
        metrics.gate_decision(route, step.rung, step.action == "pass")
    if step.action == "fail":
        metrics.escalation(route, step.rung, step.failed[0] if step.failed else "low_score")
    elif step.action == "error":
        metrics.escalation(route, step.rung, step.why or "error")


def _end_stream_span(
    span: "Span", usage: Any, cost: float | None, failure: BaseException | None, completed: bool, watch: Any
) -> None:
    attributes: dict[str, Any] = {"escalade.stream.truncated": not completed}
    if usage:
        attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
        attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
    if cost is not None:
        attributes["escalade.cost_usd"] = cost
    if isinstance(watch, StreamWatch):
        reasons = watch.finish_reasons
        if reasons:
            attributes["gen_ai.response.finish_reasons"] = tuple(reasons)
        if watch.text is not None:
            message = {"role": "assistant", "content": "".join(watch.text), "finish_reason": next(iter(reasons), None)}
            attributes["gen_ai.output.messages"] = encode([message]).decode()
    span.set_attributes(attributes)
    if failure is not None:
        telemetry.fail_span(span, failure)
    else:  # complete, or the client left (truncated, but the upstream did nothing wrong)
        span.end()

"""The OpenAI-compatible endpoints: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models.

The three inference endpoints are Litestar ASGI handlers: they read the ASGI scope and body and write the
response messages themselves. Litestar still routes them, runs the app middleware (gateway/instrument.py)
and turns every exception into an OpenAI-shaped error (gateway/errors.py); what they skip is its request
and response objects, which cost about a fifth of a request's CPU on this path (README, Performance).
"""

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from litestar import Request, Response, asgi, get
from litestar.exceptions import MethodNotAllowedException
from msgspec import UNSET

from gateway import instrument
from gateway.auth import Principal, authenticate, authorize_route
from gateway.cascade import Cascade
from gateway.dispatch import Answer, Committed, dispatch, open_stream
from gateway.dispatch import Request as Dispatch
from gateway.errors import ClientDisconnected
from gateway.facts import MAX_COST_HEADER, request_facts
from gateway.ingress import check_caps, decode_inbound, read_body
from gateway.observe import notify
from gateway.sse import DONE, error_frame, frame
from gateway.state import GatewayState
from gateway.store.admission import admit, budget_left, settle
from policies.cost import usage_cost
from policies.health import Outcome
from policies.router import Candidate, Plan, plan, routes_for_key
from providers.base import Call, Inbound, Provider
from providers.capabilities import required_by_chat
from providers.errors import GatewayError, UpstreamTimeout
from providers.schema.chat import Usage
from providers.schema.codec import (
    decode_chat_request,
    decode_completion_request,
    decode_embedding_request,
    encode,
)
from providers.schema.completions import ModelCard, ModelList

Needs = Callable[[Any], frozenset[str]]
_COMPLETIONS = frozenset({"completions"})
_EMBEDDINGS = frozenset({"embeddings"})
log = logging.getLogger("escalade.stream")
JSON = "application/json"
SSE = "text/event-stream"
_JSON_TYPE = (b"content-type", b"application/json")
_SSE_HEAD = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"x-accel-buffering", b"no")]


@dataclass(slots=True)
class Prepared:
    state: GatewayState
    principal: Principal
    inbound: Inbound[Any]
    dispatch: Dispatch
    headers: Mapping[str, str]
    """The client's request headers (lower-case names; the last one wins when a name repeats)."""


def gateway_state(request: Request[Any, Any, Any]) -> GatewayState:
    return request.app.state.gateway  # type: ignore[no-any-return]


def request_id_of(request: Request[Any, Any, Any]) -> str:
    """The client's x-request-id when it is sane, else a new one; remembered on the request."""
    return instrument.request_id(request.scope)


async def _body_chunks(receive: Any) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


async def _prepare(scope: Any, receive: Any, decode: Callable[[bytes], Any], operation: str, needs: Needs) -> Prepared:
    """Auth (before the body is read), body, decode, caps, route: everything before the first upstream byte."""
    if scope["method"] != "POST":
        raise MethodNotAllowedException(headers={"allow": "POST"})
    state: GatewayState = scope["litestar_app"].state.gateway
    runtime = state.runtime  # read once: this request lives under this policy version
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
    principal = authenticate(headers.get("authorization"), runtime, loopback=state.loopback)
    await admit(state, principal.name)
    server = runtime.policy.server
    body = await read_body(_body_chunks(receive), headers.get("content-length"), server.max_request_bytes)
    inbound = decode_inbound(body, decode)
    check_caps(inbound.typed, server)
    route = inbound.typed.model
    record = instrument.record_of(scope)
    instrument.note_route(record, route, runtime.policy, inbound)
    authorize_route(principal, route, runtime)
    facts = request_facts(len(body), inbound.typed, headers.get(MAX_COST_HEADER))
    needed = needs(inbound.typed)
    the_plan: Plan = instrument.planned(
        record,
        route,
        runtime.version,
        lambda: plan(runtime.policy, route, state.signals, needed, state.health, time.time(), facts, random.random),
    )
    deadline = time.monotonic() + runtime.policy.timeouts.total_s
    return Prepared(
        state=state,
        principal=principal,
        inbound=inbound,
        dispatch=Dispatch(
            request_id=instrument.request_id(scope),
            operation=operation,
            deadline=deadline,
            runtime=runtime,
            plan=the_plan,
            observers=state.observers,
            guard=state.store,
            record=record,
        ),
        headers=headers,
    )


def _headers(prep: Prepared, answer: Answer[Any], cost: float | None = None) -> dict[str, str]:
    headers = {
        "x-request-id": prep.dispatch.request_id,
        "x-escalade-route": prep.dispatch.plan.route,
        "x-escalade-model": answer.candidate.name,
        "x-escalade-attempts": str(answer.attempts),
        "x-escalade-policy-version": prep.dispatch.runtime.version,
        "cache-control": "no-store",
    }
    if cost is not None:
        headers["x-escalade-cost-usd"] = f"{cost:.8f}"
    if answer.hedged:
        headers["x-escalade-hedged"] = "true"
    return headers


def _raw(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]


class _Exchange:
    """The response side of one request: its messages out, and the client's disconnect watched meanwhile.

    Once the request body is read, one watcher task waits for `http.disconnect`; if it comes before the
    response is complete, the request's own task is cancelled (and with it the upstream call, which
    closes its connection) and the endpoint ends with ClientDisconnected. No second task runs the work.

    The watcher is not cancelled when the endpoint is done: it ends by itself on the `http.disconnect` the
    server sends once the response is complete (ASGI), with no exception made. (Cancelling it made a
    CancelledError whose traceback held the request's frames in a reference cycle: some fifty objects per
    request left for the cyclic garbage collector.)
    """

    __slots__ = ("_finished", "_gone", "_send", "_task", "_watcher")

    def __init__(self, receive: Any, send: Any) -> None:
        self._send = send
        self._finished = False
        self._gone = False
        self._task = asyncio.current_task()
        self._watcher = asyncio.ensure_future(self._watch(receive))

    async def _watch(self, receive: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not self._finished and self._task is not None:
                    self._gone = True
                    self._task.cancel()
                return

    def close(self) -> None:
        """The endpoint is done (answered, or raised for the error handler to answer): a disconnect from
        now on cancels nothing."""
        self._finished = True

    def disconnected(self) -> bool:
        """After a CancelledError: True when it was the client leaving (and the cancellation is taken back)."""
        if self._gone and self._task is not None:
            self._task.uncancel()
            return True
        return False

    async def json(self, body: bytes, headers: dict[str, str]) -> None:
        raw = [_JSON_TYPE, (b"content-length", str(len(body)).encode()), *_raw(headers)]
        await self._send({"type": "http.response.start", "status": 200, "headers": raw})
        self._finished = True
        await self._send({"type": "http.response.body", "body": body})

    async def sse(self, events: AsyncIterator[bytes], headers: dict[str, str]) -> None:
        send = self._send
        await send({"type": "http.response.start", "status": 200, "headers": [*_SSE_HEAD, *_raw(headers)]})
        async with contextlib.aclosing(events):  # its `finally` (upstream closed, stream recorded) runs however it ends
            async for event in events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
        self._finished = True
        await send({"type": "http.response.body", "body": b""})


Endpoint = Callable[[Prepared, _Exchange], Coroutine[Any, Any, None]]


async def _serve(scope: Any, receive: Any, send: Any, prep: Prepared, endpoint: Endpoint) -> None:
    """Run `endpoint` for a prepared request; a client that leaves first cancels it (ClientDisconnected)."""
    exchange = _Exchange(receive, send)
    try:
        await endpoint(prep, exchange)
    except asyncio.CancelledError:
        if exchange.disconnected():
            raise ClientDisconnected from None
        raise
    finally:
        exchange.close()


# ---------------------------------------------------------------- endpoints

ProviderCall = Callable[[Provider, Inbound[Any], Call], Coroutine[Any, Any, Any]]


@asgi("/v1/chat/completions", copy_scope=False)
async def chat_completions(scope: Any, receive: Any, send: Any) -> None:
    prep = await _prepare(scope, receive, decode_chat_request, "chat", required_by_chat)
    if prep.dispatch.plan.strategy == "cascade":
        endpoint: Endpoint = _cascade
    else:
        endpoint = _CHAT_STREAM if prep.inbound.typed.is_stream else _CHAT
    await _serve(scope, receive, send, prep, endpoint)


@asgi("/v1/completions", copy_scope=False)
async def completions(scope: Any, receive: Any, send: Any) -> None:
    prep = await _prepare(scope, receive, decode_completion_request, "text_completion", lambda _: _COMPLETIONS)
    await _serve(scope, receive, send, prep, _COMPLETION_STREAM if prep.inbound.typed.is_stream else _COMPLETION)


@asgi("/v1/embeddings", copy_scope=False)
async def embeddings(scope: Any, receive: Any, send: Any) -> None:
    prep = await _prepare(scope, receive, decode_embedding_request, "embeddings", lambda _: _EMBEDDINGS)
    await _serve(scope, receive, send, prep, _EMBEDDING)


def _unary(call_provider: ProviderCall, *, priced: bool = True) -> Endpoint:
    async def endpoint(prep: Prepared, out: _Exchange) -> None:
        answer = await dispatch(prep.dispatch, lambda provider, call: call_provider(provider, prep.inbound, call))
        usage = answer.result.usage
        cost = usage_cost(answer.candidate.model.price, usage) if priced else None
        settle(prep.state, prep.principal.name, cost, usage)
        instrument.answered(prep.dispatch.record, answer.candidate.name, answer.attempts, usage, cost)
        await out.json(encode(answer.result), _headers(prep, answer, cost))

    return endpoint


async def _cascade(prep: Prepared, out: _Exchange) -> None:
    """strategy cascade (gateway/cascade.py): rungs until an answer passes the gate; it leaves like any other."""
    key = prep.principal.name
    run = Cascade.for_request(
        prep.dispatch,
        prep.inbound,
        prep.headers,
        key_left=budget_left(prep.state, key),
        shadows=prep.state.shadows,
        charge=lambda usd, usage: settle(prep.state, key, usd, usage),
    )
    if not prep.inbound.typed.is_stream:
        answer = await run.unary()
        headers = {**_headers(prep, answer, run.cost()), **run.headers()}
        usage = answer.result.usage
        instrument.answered(prep.dispatch.record, answer.candidate.name, answer.attempts, usage, run.cost())
        await out.json(encode(answer.result), headers)
        return
    answer = await run.stream()
    headers = {**_headers(prep, answer, run.cost()), **run.headers()}
    instrument.committed(prep.dispatch.record, answer.candidate.name, answer.attempts)
    want_usage = prep.inbound.typed.wants_usage_chunk
    await out.sse(_sse_body(answer.result, prep, answer.candidate, want_usage=want_usage), headers)


@get("/v1/models")
async def list_models(request: Request[Any, Any, Any]) -> Response[bytes]:
    state = gateway_state(request)
    runtime = state.runtime
    principal = authenticate(request.headers.get("authorization"), runtime, loopback=state.loopback)
    created = int(runtime.loaded_at)
    cards = [ModelCard(id=name, created=created) for name in routes_for_key(runtime.policy, principal.routes)]
    return Response(
        content=encode(ModelList(data=cards)), media_type=JSON, headers={"x-request-id": request_id_of(request)}
    )


@get("/v1/models/{name:str}")
async def get_model(request: Request[Any, Any, Any]) -> Response[bytes]:
    name = request.path_params["name"]
    state = gateway_state(request)
    runtime = state.runtime
    principal = authenticate(request.headers.get("authorization"), runtime, loopback=state.loopback)
    authorize_route(principal, name, runtime)
    card = ModelCard(id=name, created=int(runtime.loaded_at))
    return Response(content=encode(card), media_type=JSON, headers={"x-request-id": request_id_of(request)})


# ---------------------------------------------------------------- streaming


def _streaming(open_provider_stream: Callable[..., Any]) -> Endpoint:
    """Retry and fall back until one deployment's stream reaches its commit point, then relay it."""

    async def endpoint(prep: Prepared, out: _Exchange) -> None:
        async def attempt(provider: Provider, call: Call) -> Committed[Any]:
            return await open_stream(open_provider_stream(provider, prep.inbound, call), call, provider.name)

        answer = await dispatch(prep.dispatch, attempt)
        instrument.committed(prep.dispatch.record, answer.candidate.name, answer.attempts)
        want_usage = prep.inbound.typed.wants_usage_chunk
        await out.sse(_sse_body(answer.result, prep, answer.candidate, want_usage=want_usage), _headers(prep, answer))

    return endpoint


_CHAT = _unary(lambda p, i, c: p.chat(i, c))
_CHAT_STREAM = _streaming(lambda p, i, c: p.chat_stream(i, c))
_COMPLETION = _unary(lambda p, i, c: p.completion(i, c))
_COMPLETION_STREAM = _streaming(lambda p, i, c: p.completion_stream(i, c))
_EMBEDDING = _unary(lambda p, i, c: p.embeddings(i, c), priced=False)


async def _sse_body(
    committed: Committed[Any], prep: Prepared, candidate: Candidate, *, want_usage: bool
) -> AsyncIterator[bytes]:
    """Chunks out as SSE. After the commit point an upstream failure is ONE in-band error event and the
    stream closes without [DONE]: a cut answer never looks complete."""
    timeouts = prep.dispatch.runtime.policy.timeouts
    deadline = prep.dispatch.deadline
    rest = committed.rest
    usage: Any = None
    failure: GatewayError | None = None
    completed = False
    watch = instrument.stream_watch(prep.dispatch.record, committed)
    try:
        for chunk in committed.held:
            watch.see(chunk)
            usage = chunk.usage if isinstance(chunk.usage, Usage) else usage
            out = _client_chunk(chunk, want_usage)
            if out is not None:
                yield out
        if not committed.ended:
            loop = asyncio.get_running_loop()
            while True:
                now = time.monotonic()
                limit = min(deadline, now + timeouts.idle_s)
                try:
                    async with asyncio.timeout_at(loop.time() + (limit - now)):
                        chunk = await anext(rest, None)
                except TimeoutError:
                    which = "total time limit" if limit >= deadline else f"idle timeout ({timeouts.idle_s:g}s)"
                    raise UpstreamTimeout(f"upstream stream stopped: {which} reached") from None
                if chunk is None:
                    break
                watch.see(chunk)
                usage = chunk.usage if isinstance(chunk.usage, Usage) else usage
                out = _client_chunk(chunk, want_usage)
                if out is not None:
                    yield out
        completed = True
        yield DONE
    except GatewayError as error:
        failure = error
        yield error_frame(error)
    except Exception:  # a bug must still end the stream as cut, never as complete
        log.exception("stream relay failed (request %s)", prep.dispatch.request_id)
        failure = GatewayError(f"internal error (request id {prep.dispatch.request_id})")
        yield error_frame(failure)
    finally:
        aclose = getattr(rest, "aclose", None)
        if aclose is not None:
            await aclose()
        if prep.dispatch.observers:
            notify(prep.dispatch.observers, _stream_end(prep, candidate.name, committed.started, usage, failure))
        price = candidate.model.price
        settle(prep.state, prep.principal.name, usage_cost(price, usage), usage)
        instrument.stream_ended(prep.dispatch.record, committed, price, usage, failure, completed, watch)


def _stream_end(prep: Prepared, deployment: str, started: float, usage: Any, failure: GatewayError | None) -> Outcome:
    """A committed stream's end: its total time and tokens, or that it was cut (and why)."""
    return Outcome(
        route=prep.dispatch.plan.route,
        deployment=deployment,
        ok=failure is None,
        phase="end",
        error_kind=failure.kind if failure else None,
        status=failure.status if failure else None,
        total_s=time.monotonic() - started if started else None,
        input_tokens=usage.prompt_tokens if usage else None,
        output_tokens=usage.completion_tokens if usage else None,
        at=time.time(),
    )


def _client_chunk(chunk: Any, want_usage: bool) -> bytes | None:
    """The chunk as the client asked for it: escalade always asks upstream for usage, the client may not."""
    if not want_usage:
        if not chunk.choices and isinstance(chunk.usage, Usage):
            return None
        chunk.usage = UNSET
    return frame(chunk)


ROUTES = [chat_completions, completions, embeddings, list_models, get_model]

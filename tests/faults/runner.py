"""Run one fault scenario in one mode: mock upstream -> real gateway -> official OpenAI SDK.

`run_cell` starts a gateway whose policy points `auto` at the scenario's primary (and backup), makes
one request the way an application would, and returns what the client saw, what reached the upstream,
what the trace recorded, and every way that differs from the scenario's expectation (`failures`).
Both tests/integration/test_faults.py and tests/bench/bench_faults.py call it.
"""

import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from policies.health import Outcome
from tests.faults.scenarios import BASE_RETRIES, BASE_TIMEOUTS, SECRET_IN_ERROR, TEXT, Expect, Mode, Scenario
from tests.support.gateway import GatewayThread, mock_policy, write_policy

KEY_ENV = "ESCALADE_FAULTS_PROVIDER_KEY"
PROVIDER_KEY = "sk-faults-canary-4f2d9c1e7b3a5d60"
"""The provider key escalade sends upstream: no client-visible byte and no span may contain it."""
CLIENT_KEY = "faults-client-key"
SECRETS = (PROVIDER_KEY, SECRET_IN_ERROR)
GIVE_UP_S = 0.5
"""A "give-up" client's timeout."""
HANG_SLACK_S = 2.0
"""An answer later than the deadline plus this is a hang."""
UPSTREAM_MODEL = {"primary": "PRIMARY", "backup": "BACKUP"}
PROMPT = [{"role": "user", "content": "fault suite"}]


# ---------------------------------------------------------------- helpers around the gateway


def install_span_exporter() -> InMemorySpanExporter:
    """An in-memory exporter on the global SDK tracer provider (installed if none is)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


class Sink:
    """A listener nothing should ever reach (a redirect target): counts the connections it accepts."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="faults-sink", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()


class DeadPort:
    """A loopback port that refuses connections: bound (so nobody else takes it) but not listening."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"

    def close(self) -> None:
        self._sock.close()


class _TeeStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, wire: bytearray) -> None:
        self._inner = inner
        self._wire = wire

    def __iter__(self) -> Iterator[bytes]:
        for piece in self._inner:
            self._wire += piece
            yield piece

    def close(self) -> None:
        self._inner.close()


class Tee(httpx.BaseTransport):
    """The SDK's transport, keeping a copy of every response byte it reads (the wire view of a stream)."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self.wire = bytearray()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_TeeStream(response.stream, self.wire),  # type: ignore[arg-type]
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._inner.close()


@dataclass
class Env:
    """What a run needs: the mock upstream (a tests.mock_upstream ThreadHandle), a scratch directory,
    the span exporter, the sink and the dead port."""

    mock: Any
    tmp: Path
    spans: InMemorySpanExporter
    sink: Sink
    dead: DeadPort


# ---------------------------------------------------------------- one run


@dataclass
class Seen:
    """What happened in one run."""

    elapsed_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    text: str = ""
    finish: str | None = None
    error: Exception | None = None
    wire: bytes = b""
    client_left_at: float | None = None
    cancel_lag_s: float | None = None
    """Client left -> the upstream saw its connection close."""
    served: str = ""
    """A sequence of requests: who answered each one completely (p: primary, b: backup, x: nobody)."""
    truncated_in_sequence: bool = False
    outcomes: list[Outcome] = field(default_factory=list)
    """What the gateway's observers were told: each attempt, and a committed stream's end."""
    attempt_spans: list[ReadableSpan] = field(default_factory=list)
    server_spans: list[ReadableSpan] = field(default_factory=list)
    route_spans: list[ReadableSpan] = field(default_factory=list)
    """The routing decisions (INTERNAL `route <name>` spans): candidates, and why each skipped one was."""
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


@dataclass
class Result:
    scenario: Scenario
    mode: Mode
    seen: Seen
    failures: list[str]
    truncated_as_complete: bool
    hang: bool

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def saw(self) -> str:
        return describe(self.seen)


def run_cell(scenario: Scenario, mode: Mode, env: Env) -> Result:
    os.environ[KEY_ENV] = PROVIDER_KEY
    env.mock.reset()
    gateway = GatewayThread(write_policy(env.tmp / f"{scenario.id}-{mode}.yaml", _policy(scenario, env))).start()
    outcomes: list[Outcome] = []
    gateway.state.observers.append(outcomes.append)
    try:
        sinks_before = env.sink.connections
        env.spans.clear()
        _install_scripts(scenario, env, time.monotonic())
        seen = (_sequence if scenario.requests > 1 else _request)(scenario, mode, gateway)
        seen.outcomes = outcomes
        seen.records = {name: env.mock.records(UPSTREAM_MODEL[name]) for name in ("primary", "backup")}
        if scenario.client != "read":
            _wait_for_close(env.mock, seen)
        _collect_spans(env.spans, seen)
        sink_hits = env.sink.connections - sinks_before
    finally:
        gateway.stop()
    expect = scenario.expect_for(mode)
    failures = check(expect, mode, seen, scenario)
    if sink_hits:
        failures.append(f"the gateway connected to the redirect target {sink_hits} time(s)")
    truncated = seen.truncated_in_sequence or truncated_as_complete(mode, seen)
    gave_up = isinstance(seen.error, openai.APITimeoutError) and scenario.client != "give-up"
    hang = gave_up or seen.elapsed_s > scenario.total_s + HANG_SLACK_S
    if hang:
        failures.append(f"hang: {seen.elapsed_s:.1f} s for a {scenario.total_s:g} s deadline")
    return Result(scenario, mode, seen, failures, truncated, hang)


def _install_scripts(scenario: Scenario, env: Env, start: float) -> None:
    deployments = {"primary": scenario.primary, **({"backup": scenario.backup} if scenario.backup else {})}
    for name, steps in deployments.items():
        if steps != ("refused",):
            env.mock.script(UPSTREAM_MODEL[name], [_fill(step, env, start) for step in steps])


def _fill(step: str, env: Env, start: float) -> str:
    """{sink}: the sink's URL; {t+S}: the time.monotonic() S seconds after `start`."""
    step = step.replace("{sink}", env.sink.url)
    return re.sub(r"\{t\+([0-9.]+)\}", lambda m: f"{start + float(m.group(1)):.3f}", step)


def _sequence(scenario: Scenario, mode: Mode, gateway: GatewayThread) -> Seen:
    """`requests` requests, one every `every_s`: the last one's view, with every answer's deployment."""
    start = time.monotonic()
    served: list[str] = []
    slowest = 0.0
    truncated = False
    for n in range(scenario.requests):
        time.sleep(max(0.0, start + n * scenario.every_s - time.monotonic()))
        seen = _request(scenario, mode, gateway)
        slowest = max(slowest, seen.elapsed_s)
        truncated = truncated or truncated_as_complete(mode, seen)
        complete = seen.error is None and seen.text == TEXT.get(seen.headers.get("x-escalade-model", ""))
        served.append(seen.headers.get("x-escalade-model", "error")[0] if complete else "x")
    seen.served = "".join(served)
    seen.elapsed_s = slowest
    seen.truncated_in_sequence = truncated
    return seen


def _policy(scenario: Scenario, env: Env) -> dict[str, Any]:
    providers: dict[str, Any] = {"mock": {"type": "openai", "base_url": env.mock.base_url, "api_key_env": KEY_ENV}}
    models: dict[str, Any] = {}
    route = ["primary"] + (["backup"] if scenario.backup else [])
    for name in route:
        steps = scenario.primary if name == "primary" else scenario.backup
        if steps == ("refused",):
            providers["dead"] = {"type": "openai", "base_url": env.dead.url, "api_key_env": KEY_ENV}
            models[name] = {"provider": "dead", "model": UPSTREAM_MODEL[name]}
        else:
            models[name] = {"provider": "mock", "model": UPSTREAM_MODEL[name]}
        models[name].update(scenario.models.get(name, {}))
    return mock_policy(
        env.mock.base_url,
        providers=providers,
        models=models,
        routes={"auto": {"models": route, **scenario.route}},
        timeouts={**BASE_TIMEOUTS, **scenario.timeouts},
        retries={**BASE_RETRIES, **scenario.retries},
        **({"resilience": scenario.resilience} if scenario.resilience else {}),
    )


def _request(scenario: Scenario, mode: Mode, gateway: GatewayThread) -> Seen:
    tee = Tee()
    leave_after = GIVE_UP_S if scenario.client == "give-up" else None
    client = openai.OpenAI(
        base_url=gateway.base_url,
        api_key=CLIENT_KEY,
        max_retries=0,
        timeout=leave_after or scenario.total_s + HANG_SLACK_S + 3,
        http_client=httpx.Client(transport=tee),
    )
    seen = Seen()
    started = time.monotonic()
    try:
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=PROMPT, stream=mode == "stream")
        seen.headers = dict(raw.headers)
        if mode == "unary":
            answer = raw.parse()
            seen.text = answer.choices[0].message.content or ""
            seen.finish = answer.choices[0].finish_reason
        else:
            stream = raw.parse()
            for chunk in stream:
                for choice in chunk.choices:
                    seen.text += choice.delta.content or ""
                    seen.finish = choice.finish_reason or seen.finish
                if scenario.client == "leave-mid-stream" and seen.text:
                    stream.close()
                    seen.client_left_at = time.monotonic()
                    break
    except openai.APIError as error:
        seen.error = error
        if isinstance(error, openai.APITimeoutError) and scenario.client == "give-up":
            seen.client_left_at = time.monotonic()
    finally:
        seen.elapsed_s = time.monotonic() - started
        client.close()
    seen.wire = bytes(tee.wire)
    return seen


def _wait_for_close(mock: Any, seen: Seen) -> None:
    """Give the upstream side up to 3 s to see the disconnect (the check wants it within 1 s)."""
    end = time.monotonic() + 3
    while time.monotonic() < end:
        if any(r.get("outcome") == "client_closed" for r in mock.records(UPSTREAM_MODEL["primary"])):
            break
        time.sleep(0.01)
    seen.records["primary"] = mock.records(UPSTREAM_MODEL["primary"])
    closed = [r["closed_t"] for r in seen.records["primary"] if r.get("outcome") == "client_closed"]
    if closed and seen.client_left_at is not None:
        seen.cancel_lag_s = closed[0] - seen.client_left_at


def _collect_spans(exporter: InMemorySpanExporter, seen: Seen) -> None:
    """The request's spans; the SERVER span may end a moment after the client saw the answer."""
    end = time.monotonic() + 2
    while True:
        finished = list(exporter.get_finished_spans())
        servers = [s for s in finished if s.kind == trace.SpanKind.SERVER]
        if servers or time.monotonic() > end:
            break
        time.sleep(0.01)
    seen.server_spans = servers
    seen.route_spans = [s for s in finished if s.kind == trace.SpanKind.INTERNAL and s.name.startswith("route ")]
    seen.attempt_spans = sorted(
        (s for s in finished if s.kind == trace.SpanKind.CLIENT), key=lambda s: s.start_time or 0
    )


# ---------------------------------------------------------------- expectations


def check(expect: Expect, mode: Mode, seen: Seen, scenario: Scenario) -> list[str]:
    """Every way `seen` differs from `expect`; empty when the run is right."""
    failures: list[str] = []
    fail = failures.append
    error = seen.error

    if scenario.requests > 1:
        return _check_sequence(expect, seen)
    if expect.answer is not None:
        model = seen.headers.get("x-escalade-model")
        if model != expect.answer:
            fail(f"answered by {model!r} ({describe(seen)}), expected {expect.answer!r}")
        if expect.attempts is not None and seen.headers.get("x-escalade-attempts") != str(expect.attempts):
            fail(f"x-escalade-attempts {seen.headers.get('x-escalade-attempts')!r}, expected {expect.attempts}")
    if expect.answer is not None and not expect.cut and scenario.client == "read":
        if error is not None:
            fail(f"client got {describe_error(error)}, expected a complete answer")
        if seen.text != TEXT[expect.answer] or seen.finish != "stop":
            fail(f"answer {seen.text!r} (finish {seen.finish!r}), expected {TEXT[expect.answer]!r} (stop)")
        if mode == "stream" and not seen.wire.endswith(b"data: [DONE]\n\n"):
            fail("a complete stream must end with data: [DONE]")
    if expect.cut:
        if not seen.text:
            fail("expected content before the in-band error")
        events = [e for e in seen.wire.decode(errors="replace").split("\n\n") if e.strip()]
        if b"[DONE]" in seen.wire:
            fail("a cut stream must not send [DONE]")
        if not events or not events[-1].startswith('data: {"error"'):
            fail(f"a cut stream must end with one in-band error event, ended with {events[-1:]!r}")
        elif any(e.startswith('data: {"error"') for e in events[:-1]):
            fail("more than one in-band error event")
    if expect.error is not None:
        if type(error).__name__ != expect.error:
            fail(f"client got {describe(seen)}, expected {expect.error}")
        elif expect.status is not None and getattr(error, "status_code", None) != expect.status:
            fail(f"status {getattr(error, 'status_code', None)}, expected {expect.status}")
    if expect.says is not None and (error is None or expect.says not in str(getattr(error, "message", error))):
        fail(f"error message should contain {expect.says!r}; client saw {describe(seen)}")
    for name in ("code", "type"):
        wanted = getattr(expect, name)
        if wanted is not None and getattr(error, name, None) != wanted:
            fail(f"error {name} {getattr(error, name, None)!r}, expected {wanted!r}")
    if expect.retry_after is not None:
        response = getattr(error, "response", None)
        got = response.headers.get("retry-after") if response is not None else None
        if got != expect.retry_after:
            fail(f"Retry-After {got!r} on the error, expected {expect.retry_after!r}")
    if expect.answer is None and expect.error is None:
        fail("scenario expects neither an answer nor an error")

    visible = seen.wire + str(getattr(error, "message", "")).encode()
    for secret in SECRETS:
        if secret.encode() in visible:
            fail(f"a secret reached the client: {secret[:12]}...")
    if b"{not json" in visible:
        fail("the upstream's garbage was forwarded to the client")

    failures += _check_trace(expect, seen, scenario)
    failures += _check_upstream(expect, seen)
    return failures


def _check_sequence(expect: Expect, seen: Seen) -> list[str]:
    """Requests over time (a flapping primary): who served each one, and what reached the upstream."""
    failures = []
    if expect.served is not None and not re.fullmatch(expect.served, seen.served):
        failures.append(
            f"served {seen.served!r} (p: primary, b: backup, x: no complete answer), expected {expect.served}"
        )
    failed = [r for r in seen.records.get("primary", []) if str(r.get("outcome")).startswith("fault:")]
    if expect.failed_at_most is not None and len(failed) > expect.failed_at_most:
        failures.append(f"the failing primary was asked {len(failed)} times, expected at most {expect.failed_at_most}")
    skips = [why for s in seen.route_spans for why in (s.attributes or {}).get("escalade.skipped", ())]
    if expect.skipped is not None and not any(expect.skipped in why for why in skips):
        failures.append(f"no routing span says {expect.skipped!r} in escalade.skipped (saw {sorted(set(skips))})")
    return failures + _check_upstream(expect, seen)


def _check_trace(expect: Expect, seen: Seen, scenario: Scenario) -> list[str]:
    failures = []
    if len(seen.server_spans) != 1:
        failures.append(f"{len(seen.server_spans)} SERVER spans, expected 1")
    elif expect.answer is not None:
        deployment = seen.server_spans[0].attributes.get("escalade.deployment")
        if deployment != expect.answer:
            failures.append(f"request span says deployment {deployment!r}, expected {expect.answer!r}")
    if expect.spans is not None:
        got = tuple(span_label(s) for s in seen.attempt_spans)
        if got != expect.spans:
            failures.append(f"attempt spans {list(got)}, expected {list(expect.spans)}")
    failures += _check_records(expect, seen, scenario)
    dumped = json.dumps(
        [
            {**dict(s.attributes or {}), "events": [dict(e.attributes or {}) for e in s.events]}
            for s in (*seen.server_spans, *seen.route_spans, *seen.attempt_spans)
        ],
        default=str,
    )
    if any(secret in dumped for secret in (*SECRETS, CLIENT_KEY)):
        failures.append("a secret is in the trace")
    return failures


def _check_records(expect: Expect, seen: Seen, scenario: Scenario) -> list[str]:
    """The observers' records (health, metrics) agree with the trace, and a stream's end is recorded."""
    failures = []
    attempts = [o for o in seen.outcomes if o.phase == "attempt"]
    labelled = tuple(f"{o.deployment}:{o.error_kind}" if o.error_kind else o.deployment for o in attempts)
    from_spans = tuple(label for label in map(span_label, seen.attempt_spans) if not label.endswith(":CancelledError"))
    if labelled != from_spans:
        failures.append(f"attempt records {list(labelled)} differ from the attempt spans {list(from_spans)}")
    ends = [o for o in seen.outcomes if o.phase == "end"]
    streamed = seen.headers.get("content-type", "").startswith("text/event-stream")
    complete_stream = streamed and scenario.client == "read" and expect.answer is not None and not expect.cut
    if expect.cut and (len(ends) != 1 or ends[0].ok or (expect.end and ends[0].error_kind != expect.end)):
        failures.append(f"a cut stream must be recorded as cut ({expect.end}): {ends}")
    if complete_stream and (len(ends) != 1 or not ends[0].ok):
        failures.append(f"a complete stream must be recorded as complete: {ends}")
    return failures


def _check_upstream(expect: Expect, seen: Seen) -> list[str]:
    failures = []
    for name, count in expect.upstream.items():
        got = len(seen.records.get(name, []))
        if got != count:
            failures.append(f"{name} received {got} request(s), expected {count}")
    primary = seen.records.get("primary", [])
    backup = seen.records.get("backup", [])
    sent = {r["headers"].get("authorization") for r in primary + backup}
    if sent - {f"Bearer {PROVIDER_KEY}"}:
        failures.append(f"the upstream did not get escalade's provider key: {sent}")
    if expect.fallback_by_s is not None and primary and backup:
        gap = backup[0]["t"] - primary[0]["t"]
        if gap > expect.fallback_by_s:
            failures.append(f"fell back {gap:.2f} s after the first attempt")
    if expect.retry_gap_s is not None:
        if len(primary) < 2:
            failures.append("no retry on the primary to measure")
        elif primary[1]["t"] - primary[0]["t"] < expect.retry_gap_s:
            failures.append(f"retried after {primary[1]['t'] - primary[0]['t']:.2f} s, Retry-After not honoured")
    if expect.cancelled_within_s is not None:
        if seen.client_left_at is None:
            failures.append("the client never left")
        elif seen.cancel_lag_s is None:
            failures.append(f"the upstream call was not cancelled (outcomes {[r.get('outcome') for r in primary]})")
        elif seen.cancel_lag_s > expect.cancelled_within_s:
            failures.append(f"upstream closed {seen.cancel_lag_s:.2f} s after the client left")
    return failures


def truncated_as_complete(mode: Mode, seen: Seen) -> bool:
    """The client got an answer that looks complete but is not the deployment's whole answer."""
    if seen.error is not None or seen.client_left_at is not None or not seen.headers:
        return False
    full = TEXT.get(seen.headers.get("x-escalade-model", ""))
    if mode == "stream" and not seen.wire.endswith(b"data: [DONE]\n\n"):
        return True  # the SDK iterated to the end of a stream that never said it was complete
    return seen.finish is None or (full is not None and seen.text != full)


# ---------------------------------------------------------------- what the client saw, in words


def span_label(span: ReadableSpan) -> str:
    """deployment, or deployment:error.type when the attempt failed before its commit point (a committed
    stream's later cut is its end: the records and escalade.stream.truncated say so)."""
    attributes = span.attributes or {}
    kind = None if attributes.get("escalade.stream.committed") else attributes.get("error.type")
    return f"{attributes.get('escalade.deployment')}:{kind}" if kind else str(attributes.get("escalade.deployment"))


def describe_error(error: Exception) -> str:
    status = getattr(error, "status_code", None)
    message = str(getattr(error, "message", error)).replace("\n", " ")
    message = re.sub(r"^Error code: \d+ - ", "", message)  # the SDK's prefix; the status is shown anyway
    return f"{type(error).__name__}{f' {status}' if status else ''}: {message[:90]}"


def describe(seen: Seen) -> str:
    if seen.served:
        failed = sum(str(r.get("outcome")).startswith("fault:") for r in seen.records.get("primary", []))
        return f"served {seen.served} (p: primary, b: backup, x: failed); the failing primary was asked {failed}x"
    model = seen.headers.get("x-escalade-model")
    attempts = seen.headers.get("x-escalade-attempts")
    text = repr(seen.text if len(seen.text) <= 40 else seen.text[:37] + "...")
    if seen.client_left_at is not None:
        got = f"{text} from {model}" if model else "nothing"
        closed = f"upstream closed {seen.cancel_lag_s * 1000:.0f} ms later" if seen.cancel_lag_s is not None else ""
        return f"left after {got}; {closed or 'upstream still open'}"
    if seen.error is not None and seen.text:
        return f"{text} from {model}, then {describe_error(seen.error)}"
    if seen.error is not None:
        return describe_error(seen.error)
    return f"{text} from {model} ({attempts} attempt{'' if attempts == '1' else 's'})"

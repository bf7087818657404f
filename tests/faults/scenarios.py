"""Every upstream failure escalade must ride out, defined once: what the upstream does, what the client
must see, and what the trace must record.

A scenario runs against a route `auto` = [primary, backup] (or [primary] alone when `backup` is None).
`primary` and `backup` are mock upstream scripts (tests/mock_upstream: one step per request, the last
repeats); the step "refused" points the primary at a port where nothing listens. Timeouts and retries
are shrunken (BASE_TIMEOUTS, BASE_RETRIES) so the whole suite runs in about a minute. In a step,
`{sink}` is the URL of a listener that must never be contacted (it counts connections), and `{t+S}`
the time.monotonic() S seconds after the scripts are installed (for fault:outage).

Each scenario runs in the modes it lists: "unary" (stream=False) and "stream" (stream=True), through
the official OpenAI SDK. `expect` holds for every mode unless `stream` (or `unary`) overrides it.
"""

from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["unary", "stream"]
Client = Literal["read", "leave-mid-stream", "give-up"]
"""read: the whole answer; leave-mid-stream: close after the first content chunk; give-up: a 0.5 s client timeout."""

BASE_TIMEOUTS = {"connect_s": 0.5, "headers_s": 1.0, "first_token_s": 1.0, "idle_s": 1.5, "total_s": 6.0}
BASE_RETRIES = {"attempts": 2, "backoff_base_s": 0.01, "backoff_max_s": 0.05, "retry_after_cap_s": 2.0}

PRIMARY_OK = "ok?tokens=4"
BACKUP_OK = "ok?tokens=3"
TEXT = {"primary": "lorem ipsum dolor sit", "backup": "lorem ipsum dolor"}
"""The full answer of each deployment's healthy step: anything shorter was truncated."""

SECRET_IN_ERROR = "sk-live-0123456789abcdefCANARY"
"""A key an upstream echoes in its error message: it must never reach the client."""
CONTEXT_LENGTH = (
    f"fault:context_length?message=This+model%27s+maximum+context+length+is+8192+tokens+%28account+{SECRET_IN_ERROR}%29"
)


@dataclass(frozen=True, slots=True)
class Expect:
    """What the client and the trace must show. None means "not checked"."""

    answer: str | None = None
    """The deployment that answers (x-escalade-model), with its full text; None: the client gets an error."""
    attempts: int | None = None
    """x-escalade-attempts: upstream attempts over all deployments."""
    cut: bool = False
    """Stream: content, then ONE in-band error event, and no [DONE]."""
    error: str | None = None
    """The openai SDK exception class the client gets (before any content, or the in-band one when cut)."""
    status: int | None = None
    says: str | None = None
    """A piece of the error message the client reads."""
    code: str | None = None
    """The error's `code` (OpenAI error body, or the in-band event)."""
    type: str | None = None
    """The error's `type`."""
    retry_after: str | None = None
    """The Retry-After header on the error response."""
    spans: tuple[str, ...] | None = None
    """One CLIENT span per upstream attempt, in order: "deployment" or "deployment:error.type"."""
    end: str | None = None
    """A cut stream: the error kind its stream-end record (the Outcome observers get) carries."""
    upstream: dict[str, int] = field(default_factory=dict)
    """Requests each deployment received, as the mock saw them."""
    fallback_by_s: float | None = None
    """The backup's first request came at most this long after the primary's first (no wasted wait)."""
    retry_gap_s: float | None = None
    """The primary's second request came at least this long after its first (Retry-After honoured)."""
    cancelled_within_s: float | None = None
    """The client leaves mid-answer: the upstream connection is closed within this many seconds."""
    served: str | None = None
    """A sequence of requests: regex over who answered each completely (p: primary, b: backup, x: nobody)."""
    failed_at_most: int | None = None
    """The primary was asked at most this many times while it was failing (the breaker spares it)."""
    skipped: str | None = None
    """Some request's SERVER span lists a skipped deployment with this reason (escalade.skipped)."""


@dataclass(frozen=True, slots=True)
class Scenario:
    id: str
    title: str
    primary: tuple[str, ...]
    expect: Expect
    backup: tuple[str, ...] | None = (BACKUP_OK,)
    modes: tuple[Mode, ...] = ("unary", "stream")
    stream: Expect | None = None
    unary: Expect | None = None
    timeouts: dict[str, float] = field(default_factory=dict)
    retries: dict[str, float] = field(default_factory=dict)
    client: Client = "read"
    requests: int = 1
    """More than 1: a sequence of requests, one every `every_s` (checked with Expect.served and upstream)."""
    every_s: float = 0.0
    resilience: dict[str, object] = field(default_factory=dict)
    """The policy's resilience section (circuit breaker, retry budget)."""
    route: dict[str, object] = field(default_factory=dict)
    """More settings of the route `auto` (e.g. context_fallback)."""
    models: dict[str, dict[str, object]] = field(default_factory=dict)
    """More settings per deployment (e.g. context_window)."""

    def expect_for(self, mode: Mode) -> Expect:
        override = self.stream if mode == "stream" else self.unary
        return override or self.expect

    @property
    def total_s(self) -> float:
        return float(self.timeouts.get("total_s", BASE_TIMEOUTS["total_s"]))


def fails_over(attempts: int, spans: tuple[str, ...], **kw: object) -> Expect:
    """The backup answers after the primary failed."""
    return Expect(answer="backup", attempts=attempts, spans=spans, **kw)  # type: ignore[arg-type]


def _times(n: int, span: str) -> tuple[str, ...]:
    return (span,) * n


SCENARIOS: tuple[Scenario, ...] = (
    # ------------------------------------------------------------ rate limits
    Scenario(
        "429-retry-after-honoured",
        "429 with Retry-After: 1 (under the 2 s cap), then OK",
        primary=("fault:429?retry_after=1", PRIMARY_OK),
        expect=Expect(
            answer="primary",
            attempts=2,
            spans=("primary:UpstreamRateLimited", "primary"),
            upstream={"primary": 2, "backup": 0},
            retry_gap_s=0.9,
        ),
    ),
    Scenario(
        "429-retry-after-ms",
        "429 with retry-after-ms: 800, then OK",
        primary=("fault:429?retry_after_ms=800", PRIMARY_OK),
        expect=Expect(
            answer="primary",
            attempts=2,
            spans=("primary:UpstreamRateLimited", "primary"),
            upstream={"primary": 2, "backup": 0},
            retry_gap_s=0.7,
        ),
    ),
    Scenario(
        "429-retry-after-over-cap",
        "429 with Retry-After: 30 (over the 2 s cap)",
        primary=("fault:429?retry_after=30",),
        expect=fails_over(
            2, ("primary:UpstreamRateLimited", "backup"), upstream={"primary": 1, "backup": 1}, fallback_by_s=0.5
        ),
    ),
    Scenario(
        "429-retry-after-past-deadline",
        "429 with Retry-After: 2 (under a 5 s cap) when 1.5 s are left",
        primary=("fault:429?retry_after=2",),
        timeouts={"total_s": 1.5},
        retries={"retry_after_cap_s": 5.0},
        expect=fails_over(
            2, ("primary:UpstreamRateLimited", "backup"), upstream={"primary": 1, "backup": 1}, fallback_by_s=0.5
        ),
    ),
    Scenario(
        "429-persistent",
        "429 on every request, no Retry-After",
        primary=("fault:429",),
        expect=fails_over(
            3, (*_times(2, "primary:UpstreamRateLimited"), "backup"), upstream={"primary": 2, "backup": 1}
        ),
    ),
    Scenario(
        "429-everywhere",
        "primary 429 Retry-After: 30, backup 400: the client gets the first error",
        primary=("fault:429?retry_after=30",),
        backup=("fault:400",),
        expect=Expect(
            error="RateLimitError",
            status=429,
            says="Rate limit reached",
            code="rate_limit_exceeded",
            retry_after="30",
            spans=("primary:UpstreamRateLimited", "backup:UpstreamRejected"),
            upstream={"primary": 1, "backup": 1},
        ),
    ),
    # ------------------------------------------------------------ 5xx
    Scenario(
        "500-once",
        "500 once, then OK",
        primary=("fault:500", PRIMARY_OK),
        expect=Expect(
            answer="primary", attempts=2, spans=("primary:UpstreamUnavailable", "primary"), upstream={"primary": 2}
        ),
    ),
    *(
        Scenario(
            f"{code}-persistent",
            f"{code} on every request",
            primary=(f"fault:{code}",),
            expect=fails_over(3, (*_times(2, f"primary:{kind}"), "backup"), upstream={"primary": 2, "backup": 1}),
        )
        for code, kind in (
            (500, "UpstreamUnavailable"),
            (502, "UpstreamUnavailable"),
            (503, "UpstreamUnavailable"),
            (504, "UpstreamTimeout"),
            (529, "UpstreamUnavailable"),
        )
    ),
    Scenario(
        "503-everywhere",
        "every deployment answers 503",
        primary=("fault:503",),
        backup=("fault:503",),
        expect=Expect(
            error="InternalServerError",
            status=503,
            says="overloaded",
            spans=(*_times(2, "primary:UpstreamUnavailable"), *_times(2, "backup:UpstreamUnavailable")),
            upstream={"primary": 2, "backup": 2},
        ),
    ),
    # ------------------------------------------------------------ connections
    Scenario(
        "connection-refused",
        "nothing listens on the primary's port",
        primary=("refused",),
        expect=fails_over(3, (*_times(2, "primary:UpstreamConnectionError"), "backup"), upstream={"backup": 1}),
    ),
    Scenario(
        "reset-before-headers",
        "the primary reads the request, then resets the connection (RST)",
        primary=("fault:reset",),
        expect=fails_over(
            3, (*_times(2, "primary:UpstreamConnectionError"), "backup"), upstream={"primary": 2, "backup": 1}
        ),
    ),
    Scenario(
        "never-answers",
        "the primary accepts the request and never answers",
        primary=("fault:never",),
        expect=fails_over(
            2, ("primary:UpstreamSilent", "backup"), upstream={"primary": 1, "backup": 1}, fallback_by_s=2.0
        ),
    ),
    Scenario(
        "never-answers-alone",
        "the only deployment accepts the request and never answers (deadline 3 s)",
        primary=("fault:never",),
        backup=None,
        timeouts={"total_s": 3.0},
        expect=Expect(
            error="InternalServerError",
            status=504,
            says="no response headers within 1s",
            type="timeout_error",
            spans=("primary:UpstreamSilent",),
            upstream={"primary": 1},
        ),
        unary=Expect(  # a unary answer arrives with its headers: the last candidate is given until the deadline
            error="InternalServerError",
            status=504,
            says="no complete answer before the request deadline",
            type="timeout_error",
            spans=("primary:UpstreamTimeout",),
            upstream={"primary": 1},
        ),
    ),
    # ------------------------------------------------------------ slow answers
    Scenario(
        "slow-first-token",
        "the primary's answer starts after 3 s (first-token limit 1 s, idle 1.5 s)",
        primary=("fault:slow_first?delay=3",),
        expect=fails_over(
            2, ("primary:UpstreamSilent", "backup"), upstream={"primary": 1, "backup": 1}, fallback_by_s=2.0
        ),
    ),
    Scenario(
        "slow-first-token-alone",
        "the only deployment's answer starts after 2 s (first-token limit 1 s, idle 1.5 s)",
        primary=("fault:slow_first?delay=2&tokens=4",),
        backup=None,
        expect=Expect(answer="primary", attempts=1, spans=("primary",), upstream={"primary": 1}),
    ),
    Scenario(
        "trickle-never-ends",
        "the primary sends a well-formed answer a few bytes at a time, forever (total cap 3 s)",
        primary=("fault:trickle",),
        timeouts={"total_s": 3.0},
        expect=Expect(
            error="InternalServerError",
            status=504,
            says="before the request deadline",
            spans=("primary:UpstreamTimeout",),
            upstream={"primary": 1, "backup": 0},
        ),
        stream=Expect(
            answer="primary",
            attempts=1,
            cut=True,
            error="APIError",
            says="total time limit",
            end="UpstreamTimeout",
            spans=("primary",),
            upstream={"primary": 1, "backup": 0},
        ),
    ),
    # ------------------------------------------------------------ broken answers
    Scenario(
        "cut-mid-answer",
        "the primary closes the connection after 2 content chunks (unary: after half the body)",
        primary=("fault:cut?after=2",),
        expect=fails_over(
            3, (*_times(2, "primary:UpstreamConnectionError"), "backup"), upstream={"primary": 2, "backup": 1}
        ),
        stream=Expect(
            answer="primary",
            attempts=1,
            cut=True,
            error="APIError",
            says="connection closed by upstream",
            end="UpstreamConnectionError",
            spans=("primary",),
            upstream={"primary": 1, "backup": 0},
        ),
    ),
    Scenario(
        "stall-mid-answer",
        "the primary goes silent after 2 content chunks (unary: after half the body)",
        primary=("fault:stall?after=2",),
        expect=fails_over(3, (*_times(2, "primary:UpstreamTimeout"), "backup"), upstream={"primary": 2, "backup": 1}),
        stream=Expect(
            answer="primary",
            attempts=1,
            cut=True,
            error="APIError",
            says="idle",  # the relay's chunk-gap timer or the socket's read timeout, whichever fires first
            type="timeout_error",
            spans=("primary",),
            upstream={"primary": 1, "backup": 0},
        ),
    ),
    Scenario(
        "malformed-before-content",
        "the first event (unary: the body) is not JSON, then OK",
        primary=("fault:malformed?at=1", PRIMARY_OK),
        expect=Expect(
            answer="primary",
            attempts=2,
            spans=("primary:UpstreamProtocolError", "primary"),
            upstream={"primary": 2, "backup": 0},
        ),
    ),
    Scenario(
        "malformed-after-content",
        "the third event is not JSON",
        primary=("fault:malformed?at=3",),
        modes=("stream",),
        expect=Expect(
            answer="primary",
            attempts=1,
            cut=True,
            error="APIError",
            says="malformed response",
            end="UpstreamProtocolError",
            code="upstream_invalid_response",
            spans=("primary",),
            upstream={"primary": 1, "backup": 0},
        ),
    ),
    Scenario(
        "error-in-200",
        "200 with an error body (stream: the first event is an error)",
        primary=("fault:error_200",),
        expect=fails_over(
            3, (*_times(2, "primary:UpstreamUnavailable"), "backup"), upstream={"primary": 2, "backup": 1}
        ),
    ),
    Scenario(
        "error-event-before-content",
        "the role chunk, then the upstream's in-band error event before any content",
        primary=("fault:stream_error?after=0",),
        modes=("stream",),
        expect=fails_over(
            3, (*_times(2, "primary:UpstreamUnavailable"), "backup"), upstream={"primary": 2, "backup": 1}
        ),
    ),
    Scenario(
        "error-event-after-content",
        "the upstream's own in-band error event after 2 content chunks",
        primary=("fault:stream_error?after=2",),
        modes=("stream",),
        expect=Expect(
            answer="primary",
            attempts=1,
            cut=True,
            error="APIError",
            says="server had an error",
            end="UpstreamUnavailable",
            spans=("primary",),
            upstream={"primary": 1, "backup": 0},
        ),
    ),
    Scenario(
        "empty-stream",
        "200 event stream that ends cleanly with no content, no finish and no [DONE]",
        primary=("fault:cut?after=0&terminate=1",),
        modes=("stream",),
        expect=fails_over(
            3, (*_times(2, "primary:UpstreamProtocolError"), "backup"), upstream={"primary": 2, "backup": 1}
        ),
    ),
    Scenario(
        "stream-ends-early",
        "the event stream ends cleanly after 2 content chunks: no finish chunk, no [DONE]",
        primary=("fault:cut?after=2&terminate=1",),
        modes=("stream",),
        expect=Expect(
            answer="primary",
            attempts=1,
            cut=True,
            error="APIError",
            says="stream ended before the answer was complete",
            end="UpstreamProtocolError",
            spans=("primary",),
            upstream={"primary": 1, "backup": 0},
        ),
    ),
    Scenario(
        "no-done-after-finish",
        "a complete stream (finish chunk, usage) whose body ends without data: [DONE]",
        primary=("fault:no_done?tokens=4",),
        modes=("stream",),
        expect=Expect(answer="primary", attempts=1, spans=("primary",), upstream={"primary": 1, "backup": 0}),
    ),
    Scenario(
        "html-200",
        "200 text/html (a proxy's error page) instead of JSON or an event stream",
        primary=("fault:html",),
        expect=fails_over(
            3, (*_times(2, "primary:UpstreamProtocolError"), "backup"), upstream={"primary": 2, "backup": 1}
        ),
    ),
    # ------------------------------------------------------------ the upstream refuses
    Scenario(
        "400-bad-request",
        "400 about the request itself",
        primary=("fault:400",),
        expect=Expect(
            error="BadRequestError",
            status=400,
            says="Invalid request",
            type="invalid_request_error",
            spans=("primary:UpstreamRejected",),
            upstream={"primary": 1, "backup": 0},
        ),
    ),
    Scenario(
        "400-context-length",
        "400 context_length_exceeded whose message echoes a key; the route has no context_fallback",
        primary=(CONTEXT_LENGTH,),
        expect=Expect(
            error="BadRequestError",
            status=400,
            says="maximum context length is 8192 tokens",
            code="context_length_exceeded",
            spans=("primary:ContextLengthExceeded",),
            upstream={"primary": 1, "backup": 0},
        ),
    ),
    Scenario(
        "400-context-length-fallback",
        "400 context_length_exceeded; context_fallback on, the backup's window is larger (8k -> 128k); "
        "the other window rules: tests/integration/test_routing.py",
        primary=(CONTEXT_LENGTH,),
        route={"context_fallback": True},
        models={"primary": {"context_window": 8192}, "backup": {"context_window": 128000}},
        expect=fails_over(2, ("primary:ContextLengthExceeded", "backup"), upstream={"primary": 1, "backup": 1}),
    ),
    Scenario(
        "401-provider-key",
        "the provider rejects escalade's key (and echoes it)",
        primary=("fault:auth",),
        backup=None,
        expect=Expect(
            error="InternalServerError",
            status=502,
            says="rejected escalade's credentials",
            code="upstream_auth_error",
            spans=("primary:UpstreamAuthError",),
            upstream={"primary": 1},
        ),
    ),
    Scenario(
        "401-provider-key-fallback",
        "the provider rejects escalade's key; another provider can answer",
        primary=("fault:auth",),
        expect=fails_over(2, ("primary:UpstreamAuthError", "backup"), upstream={"primary": 1, "backup": 1}),
    ),
    Scenario(
        "redirect",
        "307 to another host (a sink that counts connections)",
        primary=("fault:redirect?to={sink}/v1/chat/completions?stolen=1",),
        backup=None,
        expect=Expect(
            error="InternalServerError",
            status=502,
            says="redirects are not followed",
            code="upstream_redirect",
            spans=("primary:UpstreamRedirect",),
            upstream={"primary": 1},
        ),
    ),
    # ------------------------------------------------------------ over time
    Scenario(
        "primary-flaps",
        "the primary answers 503 for 1.5 s, then recovers; a request every 0.2 s for 3 s (breaker: open after 2 "
        "failures in a row, probe after 0.5 s)",
        primary=("fault:outage?until={t+1.5}&tokens=4",),
        requests=15,
        every_s=0.2,
        resilience={"breaker": {"consecutive_failures": 2, "open_s": 0.5}},
        expect=Expect(
            served=r"b{2,}p{3,}",  # every request answered; by the primary again once it is back
            failed_at_most=6,  # 2, then one probe per half-open spell (without a breaker: 2 per request, ~16)
            skipped="primary: circuit open",
        ),
    ),
    # ------------------------------------------------------------ the client leaves
    Scenario(
        "client-leaves-mid-stream",
        "the client closes the stream after the first content chunk",
        primary=("ok?tokens=200&delay=0.05",),
        modes=("stream",),
        client="leave-mid-stream",
        expect=Expect(answer="primary", attempts=1, upstream={"primary": 1, "backup": 0}, cancelled_within_s=1.0),
    ),
    Scenario(
        "client-leaves-during-stall",
        "the client closes the stream after the first content chunk while the upstream is silent",
        primary=("fault:stall?after=1",),
        modes=("stream",),
        client="leave-mid-stream",
        timeouts={"idle_s": 6.0},
        expect=Expect(answer="primary", attempts=1, upstream={"primary": 1, "backup": 0}, cancelled_within_s=1.0),
    ),
    Scenario(
        "client-gives-up-waiting",
        "the client times out after 0.5 s, before the first token (the primary answers after 5 s)",
        primary=("fault:slow_first?delay=5",),
        client="give-up",
        timeouts={"first_token_s": 3.0, "idle_s": 6.0},
        expect=Expect(
            error="APITimeoutError",
            spans=("primary:CancelledError",),
            upstream={"primary": 1, "backup": 0},
            cancelled_within_s=1.0,
        ),
    ),
)

BY_ID = {s.id: s for s in SCENARIOS}
CELLS: tuple[tuple[Scenario, Mode], ...] = tuple((s, m) for s in SCENARIOS for m in s.modes)

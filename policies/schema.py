"""The policy file's shape (see POLICY.md): msgspec Structs that reject unknown fields.

Every Struct here is frozen: a loaded policy is an immutable value that hot reload swaps whole.
"""

import re
from typing import Annotated, Literal

import msgspec

from providers.base import Timeouts
from providers.registry import ProviderConf


class Conf(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Base of every policy Struct: unknown fields are errors (a typo must never be silently ignored)."""


class ServerConf(Conf):
    listen: str = "127.0.0.1:8080"
    """The OpenAI-compatible API."""
    admin_listen: str | None = "127.0.0.1:8081"
    """Admin API (policy status, reload); never served on the client listener. null disables it."""
    admin_token_env: str | None = None
    """Env var holding the admin bearer token. Unset: the admin listener must be loopback."""
    max_request_bytes: int = 16 * 1024 * 1024
    """Larger request bodies get 413 before they are read."""
    max_n: int = 8
    """Largest `n` a client may ask for."""
    max_tokens: int | None = None
    """Largest `max_tokens`/`max_completion_tokens` a client may ask for (None: no cap)."""
    reload_interval_s: float = 1.0
    """How often the policy file is checked for changes (0 disables hot reload)."""


class StateConf(Conf):
    """Where live routing state (latency statistics, circuit state, cooldowns, spend) is kept."""

    backend: Literal["memory", "redis"] = "memory"
    """memory: this process only (one replica, zero setup). redis: shared by every replica."""
    redis_url_env: str = "REDIS_URL"
    """Env var holding the Redis URL (it may carry a password, so it is never a value in the file)."""
    key_prefix: str = "escalade"
    """Namespace of every Redis key, so several fleets can share one Redis."""
    sync_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 0.5
    """How often a replica pushes its observations to Redis and pulls the fleet's."""


class BreakerConf(Conf):
    """Circuit breaker per deployment: open after failures, probe after `open_s`, close on success."""

    consecutive_failures: Annotated[int, msgspec.Meta(ge=1)] = 5
    failure_ratio: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    """Open when this share of the last `window` attempts failed (once `min_requests` were seen)."""
    window: Annotated[int, msgspec.Meta(ge=1)] = 50
    min_requests: Annotated[int, msgspec.Meta(ge=1)] = 20
    open_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    half_open_probes: Annotated[int, msgspec.Meta(ge=1)] = 1


class RetryBudgetConf(Conf):
    """Retries may add at most `ratio` of first attempts (plus `min_per_s`), so they cannot multiply an outage."""

    ratio: Annotated[float, msgspec.Meta(ge=0)] = 0.2
    min_per_s: Annotated[float, msgspec.Meta(ge=0)] = 1.0


class ResilienceConf(Conf):
    breaker: BreakerConf = BreakerConf()
    retry_budget: RetryBudgetConf = RetryBudgetConf()
    auth_cooldown_s: Annotated[float, msgspec.Meta(ge=0)] = 300.0
    """A deployment whose provider rejected escalade's key (401/403) is not tried for this long."""
    latency_window_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    """Recent window of the latency statistics routing reads (TTFT, total, tokens/s)."""


class TelemetryConf(Conf):
    propagate_trace_context: bool = False
    """Send W3C `traceparent` to upstream providers (an incoming one is always continued)."""
    log_level: Literal["debug", "info", "warning", "error"] | None = None
    """None: ESCALADE_LOG_LEVEL, else info."""
    log_format: Literal["json", "text"] = "json"


class Price(Conf):
    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0


Capability = Literal["tools", "json_schema", "vision", "logprobs", "reasoning", "embeddings", "completions"]


class ModelConf(Conf):
    """A deployment: one model at one provider, with its price and abilities."""

    provider: str
    model: str
    """The model name sent upstream."""
    price: Price = Price()
    context_window: int | None = None
    capabilities: list[Capability] = []
    local: bool = False
    """Counts as "data stays here" for data-residency rules."""
    max_queue: Annotated[int, msgspec.Meta(ge=0)] | None = None
    """Skip this deployment (spill to the route's next one) while more than this many requests wait in
    its engine's queue (vLLM's `vllm:num_requests_waiting`). Only for models on a `vllm` provider with
    `engine:`, whose /metrics escalade polls; None: never skipped for load."""


Strategy = Literal["priority", "weighted", "lowest_cost", "lowest_latency", "cascade"]
IMPLEMENTED_STRATEGIES: frozenset[str] = frozenset({"priority", "weighted", "lowest_cost", "lowest_latency", "cascade"})


class HedgeConf(Conf):
    """Send a second request to the next candidate when the first has not produced a token in time;
    the first to produce one wins and the other is cancelled."""

    after_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    """None: the first candidate's recent TTFT p95 (no hedge until enough samples)."""
    min_after_s: Annotated[float, msgspec.Meta(ge=0)] = 0.05


GateCheck = Literal["truncated", "empty", "json_schema", "tool_call", "refusal", "repetition", "answer_format"]


class ShadowConf(Conf):
    """Shadow mode: a sampled share of ACCEPTED answers is also sent to the route's last rung in the
    background, and both answers are logged (JSONL, one `policies.calibrate.CalibrationRecord` a
    line) for `escalade calibrate`."""

    rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    log: str | None = None
    """JSONL file the pairs are appended to."""


class GateConf(Conf):
    """What a cascade rung's answer must pass to be returned instead of escalating (docs/cascade-gate.md)."""

    checks: list[GateCheck] = []
    """Deterministic checks, any failure escalates: truncated (finish_reason length), empty (no text,
    no tool call), json_schema (parses and validates against the request's response_format),
    tool_call (known tool, arguments valid for its parameters, no raw [TOOL_CALLS] text), refusal
    (refusal_patterns in the first 200 characters, or the provider's refusal field), repetition
    (a looping answer), answer_format (the answer_format regex matches the whole answer)."""
    min_score: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    """Threshold on the logprob confidence score (0..1), fitted by `escalade calibrate`; an answer
    without logprobs fails it. None: checks only."""
    hold: Literal["full", "prefix"] = "full"
    """Streaming: full buffers the whole answer before gating; prefix gates on the first
    `prefix_tokens` tokens, then commits and streams the rest live."""
    prefix_tokens: Annotated[int, msgspec.Meta(ge=1)] = 32
    refusal_patterns: list[str] = []
    """Regexes (case-insensitive) that mark a refusal; empty: the built-in list."""
    answer_format: str | None = None
    """A regex the whole answer must match (the `answer_format` check; `.` also matches newlines)."""
    shadow: ShadowConf | None = None

    def __post_init__(self) -> None:
        for i, pattern in enumerate(self.refusal_patterns):
            _regex(pattern, f"refusal_patterns[{i}]")
        if self.answer_format is not None:
            _regex(self.answer_format, "answer_format")
        if ("answer_format" in self.checks) != (self.answer_format is not None):
            raise ValueError("the `answer_format` check and the answer_format regex go together: give both or neither")


def _regex(pattern: str, name: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{name} is not a valid regular expression: {exc}") from None


class RungConf(Conf):
    models: list[str]
    strategy: Strategy = "priority"
    reasoning_effort: str | None = None


class RouteConf(Conf):
    """A name clients send as `model`, and how escalade answers it."""

    strategy: Strategy = "priority"
    models: list[str] = []
    rungs: list[RungConf] = []
    gate: GateConf | None = None
    max_cost_usd: float | None = None
    data_residency: Literal["any", "local"] = "any"
    reasoning_effort: str | None = None
    """Sets `reasoning_effort` on every upstream call of this route (overrides the client's)."""
    weights: dict[str, Annotated[float, msgspec.Meta(ge=0)]] = {}
    """strategy weighted: deployment -> relative share of traffic (missing: 1)."""
    explore: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.05
    """strategy lowest_latency: share of requests sent to a random other candidate, so a recovered
    model gets measured (and traffic) again."""
    hedge: HedgeConf | None = None
    context_fallback: bool = False
    """On a 400 context-length error, try the next candidate with a larger context_window."""
    record_content: bool = False
    """Record prompt and completion text in traces (off: never recorded)."""


class Budget(Conf):
    usd: float
    period: Literal["day", "week", "month"] = "day"


class KeyConf(Conf):
    """A virtual key for a client application; only its SHA-256 is stored."""

    name: str
    key_sha256: str
    routes: list[str] = msgspec.field(default_factory=lambda: ["*"])
    """Routes this key may use; "*" means all."""
    rpm: int | None = None
    tpm: int | None = None
    budget: Budget | None = None


class RetriesConf(Conf):
    attempts: int = 2
    """Attempts per deployment, the first one included (2 = one retry), before falling back."""
    backoff_base_s: float = 0.1
    backoff_max_s: float = 2.0
    retry_after_cap_s: float = 10.0
    """A Retry-After longer than this is not waited out: the next deployment is tried instead."""


class Policy(Conf):
    version: Literal[1] = 1
    server: ServerConf = ServerConf()
    state: StateConf = StateConf()
    providers: dict[str, ProviderConf] = {}
    models: dict[str, ModelConf] = {}
    routes: dict[str, RouteConf] = {}
    keys: list[KeyConf] = []
    timeouts: Timeouts = Timeouts()
    retries: RetriesConf = RetriesConf()
    resilience: ResilienceConf = ResilienceConf()
    telemetry: TelemetryConf = TelemetryConf()

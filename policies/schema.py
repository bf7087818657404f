"""The policy file's shape (see POLICY.md): msgspec Structs that reject unknown fields.

Every Struct here is frozen: a loaded policy is an immutable value that hot reload swaps whole.
"""

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
    backend: Literal["memory", "redis"] = "memory"
    redis_url_env: str = "REDIS_URL"


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
IMPLEMENTED_STRATEGIES: frozenset[str] = frozenset({"priority"})


class GateConf(Conf):
    checks: list[str] = []
    min_score: float | None = None
    hold: Literal["full", "prefix"] = "full"
    prefix_tokens: int = 32


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

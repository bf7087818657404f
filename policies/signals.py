"""Live signals routing reads: what the gateway currently knows about each local engine. Pure values.

The gateway fills these in from its engine supervisors (readiness from /health, queue depth and
KV-cache use from vLLM's /metrics) and passes them to `router.plan()`; nothing here does I/O.
"""

from collections.abc import Mapping
from dataclasses import dataclass

from policies.schema import ModelConf


@dataclass(frozen=True, slots=True)
class EngineSignals:
    """One engine (a provider with `engine:`), as last seen. Load figures are None when unknown."""

    ready: bool
    state: str = "ready"
    """starting, ready, unhealthy, restarting, stopping or stopped: said in error messages."""
    waiting: float | None = None
    """Requests queued in the engine (vllm:num_requests_waiting)."""
    running: float | None = None
    """Requests being generated (vllm:num_requests_running)."""
    kv_cache_usage: float | None = None
    """Fraction of the KV cache in use, 0..1 (vllm:kv_cache_usage_perc)."""


Signals = Mapping[str, EngineSignals]
"""Provider name -> its engine's signals. Providers without an entry are not engines: always eligible."""

NO_SIGNALS: Signals = {}


def skip_reason(model: ModelConf, signals: Signals) -> str | None:
    """Why a deployment must not be tried now, or None when it may be.

    - its provider's engine is not ready (starting, restarting after a crash, unhealthy, stopped);
    - the model sets `max_queue` and the engine's queue is deeper than that.
    """
    engine = signals.get(model.provider)
    if engine is None:
        return None
    if not engine.ready:
        return f"local engine `{model.provider}` is {engine.state}"
    if model.max_queue is not None and engine.waiting is not None and engine.waiting > model.max_queue:
        return f"local engine `{model.provider}` has {engine.waiting:g} requests queued (max_queue {model.max_queue})"
    return None


def retry_after_s(signals: Signals, providers: set[str]) -> float:
    """A Retry-After for a request that found no deployment: soon for a full queue, later for a start."""
    starting = any(not s.ready for name, s in signals.items() if name in providers)
    return 5.0 if starting else 1.0


def readiness_only(signals: Signals) -> Signals:
    """The same signals with the load figures dropped: what readiness checks use (load is transient)."""
    return {name: EngineSignals(ready=s.ready, state=s.state) for name, s in signals.items()}

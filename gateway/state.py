"""Process-wide gateway state shared by the client and admin listeners."""

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.observe import Observer
from gateway.runtime import Runtime
from gateway.shadow import Shadows
from local_engine.fleet import Engines
from local_engine.supervisor import EngineStatus
from policies.health import Health
from policies.signals import EngineSignals, Signals

if TYPE_CHECKING:
    from gateway.metrics import GatewayMetrics


@dataclass(slots=True)
class ReloadStatus:
    """What the admin status endpoint shows about the policy file."""

    path: str | None
    version: str
    loaded_at: float
    reloads: int = 0
    rejected: int = 0
    last_error: str | None = None
    """The newest rejected candidate's problems; cleared when a later candidate loads."""
    last_error_at: float | None = None
    last_checked_at: float = field(default_factory=time.time)


@dataclass(slots=True)
class GatewayState:
    runtime: Runtime
    status: ReloadStatus
    loopback: bool
    """The client listener is bound to a loopback address (keyless access is allowed only then)."""
    policy_path: Path | None = None
    ready: bool = True
    engines: Engines = field(default_factory=Engines)
    """The local engines this gateway supervises (providers with `engine:`)."""
    signals: Signals = field(default_factory=dict)
    """Provider -> live engine signals for routing; replaced whole (never mutated) on every change."""
    health: Health = field(default_factory=dict)
    """Deployment -> live health (circuit, cooldown, latency) for routing; replaced whole by its keeper."""
    observers: list[Observer] = field(default_factory=list)
    """Told the Outcome of every upstream attempt and of every committed stream's end."""
    metrics: "GatewayMetrics | None" = None
    """The gateway's metrics (/metrics on the admin listener); set by the Gateway, None in bare tests."""
    shadows: Shadows = field(default_factory=Shadows)
    """Cascade shadow calls in flight (gateway/shadow.py); cancelled on shutdown."""
    store: Any = None
    """The live state store (gateway.store.Store): health snapshot keeper, probe claims, retry budget, spend."""
    keeper: Any = None
    """gateway.store.keeper.StoreKeeper: owns `store` (rebuilds it when a reload changes `state:`)."""

    def engine_changed(self, status: EngineStatus) -> None:
        """Supervisor callback: publish the engine's new state to routing."""
        self.signals = {**self.signals, status.name: engine_signals(status)}

    def swap(self, runtime: Runtime) -> Runtime:
        """Install a new runtime atomically; returns the one it replaced."""
        old, self.runtime = self.runtime, runtime
        self.status.version = runtime.version
        self.status.loaded_at = runtime.loaded_at
        self.status.reloads += 1
        self.status.last_error = None
        self.status.last_error_at = None
        return old


def engine_signals(status: EngineStatus) -> EngineSignals:
    load = status.load
    return EngineSignals(
        ready=status.ready,
        state=status.phase.value,
        waiting=load.waiting if load else None,
        running=load.running if load else None,
        kv_cache_usage=load.kv_cache_usage if load else None,
    )

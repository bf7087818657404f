"""Runs the gateway: loads the policy, serves the client and admin listeners, drains on SIGTERM.

Local engines (providers with `engine:`) are launched with the listeners and stopped after them.
"""

import asyncio
import contextlib
import gc
import ipaddress
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import uvicorn

from gateway import logs
from gateway.app import create_admin_app, create_app
from gateway.metrics import GatewayMetrics, exporting_readers
from gateway.reload import PolicyWatcher
from gateway.runtime import build_runtime, retire
from gateway.state import GatewayState, ReloadStatus
from gateway.store.keeper import StoreKeeper
from gateway.telemetry import setup_tracing
from local_engine.fleet import Engines
from local_engine.runfiles import default_run_dir
from local_engine.supervisor import EngineStatus, EngineSupervisor
from policies.loader import parse_policy
from policies.schema import Policy
from policies.signals import EngineSignals
from providers.openai_compat.config import VllmConf

log = logging.getLogger("escalade")


def parse_listen(value: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen address must be HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - an explicit ":8080" means all interfaces


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the gateway drains both listeners together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _uvicorn_config(app: object, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=host,
        port=port,
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
        proxy_headers=False,  # escalade decides nothing by client address; X-Forwarded-* is never trusted
        timeout_graceful_shutdown=30,
        timeout_keep_alive=30,
        backlog=4096,
    )


def load_state(policy_path: Path, listen_host: str) -> GatewayState:
    text = policy_path.read_bytes()
    runtime = build_runtime(parse_policy(text, str(policy_path)), text)
    status = ReloadStatus(path=str(policy_path), version=runtime.version, loaded_at=runtime.loaded_at)
    return GatewayState(runtime=runtime, status=status, loopback=is_loopback(listen_host), policy_path=policy_path)


def policy_engines(
    policy: Policy,
    *,
    owner: str,
    on_change: Callable[[EngineStatus], None] | None = None,
    run_dir: Path | None = None,
    only: set[str] | None = None,
) -> Engines:
    """A supervisor for every `vllm` provider with `engine:` (or those named in `only`). Raises ValueError."""
    supervisors = [
        EngineSupervisor(
            name,
            conf.engine,
            conf.base_url or "",
            run_dir=run_dir or default_run_dir(),
            owner=owner,
            on_change=on_change,
        )
        for name, conf in policy.providers.items()
        if isinstance(conf, VllmConf) and conf.engine is not None and (only is None or name in only)
    ]
    return Engines(supervisors)


class Gateway:
    """The running gateway: client listener, admin listener, policy watcher. One per process."""

    def __init__(self, policy_path: Path, *, listen: str | None = None, admin_listen: str | None = None) -> None:
        text = policy_path.read_bytes()
        server_conf = parse_policy(text, str(policy_path)).server
        self.host, port = parse_listen(listen or server_conf.listen)
        self.state = load_state(policy_path, self.host)
        self.state.metrics = GatewayMetrics(self.state, exporting_readers())
        self.state.observers.append(self.state.metrics.observe)
        if not self.state.runtime.keys and not self.state.loopback:
            log.warning("no API keys in the policy and %s is not loopback: every request will get 401", self.host)
        self._servers = [_Server(_uvicorn_config(create_app(self.state), self.host, port))]
        self.admin_host: str | None = None
        admin = admin_listen or server_conf.admin_listen
        if admin:
            self.admin_host, admin_port = parse_listen(admin)
            if not is_loopback(self.admin_host) and not server_conf.admin_token_env:
                raise ValueError("admin_listen is not loopback: set server.admin_token_env to protect it")
            self._servers.append(_Server(_uvicorn_config(create_admin_app(self.state), self.admin_host, admin_port)))
        self._watcher = PolicyWatcher(self.state, server_conf.reload_interval_s)
        self.state.keeper = StoreKeeper(self.state)
        self.state.engines = policy_engines(
            self.state.runtime.policy, owner="serve", on_change=self.state.engine_changed
        )
        # Until the first probe says otherwise, an engine is not ready: route around it.
        self.state.signals = {e.name: EngineSignals(ready=False, state="starting") for e in self.state.engines}
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def started(self) -> bool:
        return all(server.started for server in self._servers)

    @property
    def port(self) -> int:
        return _bound_port(self._servers[0])

    @property
    def admin_port(self) -> int | None:
        return _bound_port(self._servers[1]) if len(self._servers) > 1 else None

    def stop(self) -> None:
        """Begin a graceful shutdown (thread-safe): /readyz turns 503, in-flight requests drain."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._begin_stop)

    def _begin_stop(self) -> None:
        self.state.ready = False
        for server in self._servers:
            server.should_exit = True

    async def run(self, *, handle_signals: bool = True) -> None:
        self._loop = asyncio.get_running_loop()
        setup_tracing()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._begin_stop)
        await self.state.keeper.start()
        self._watcher.start()
        self.state.engines.start()
        try:
            await asyncio.gather(*(server.serve() for server in self._servers))
        finally:
            await self._watcher.stop()
            await self.state.shadows.aclose()
            await self.state.keeper.stop()
            await self.state.engines.stop()  # after the listeners drained: in-flight requests finish first
            await retire(self.state.runtime, None, grace_s=0)
            if self.state.metrics is not None:
                self.state.metrics.shutdown()  # a periodic OTLP reader sends what it has left

    def banner(self) -> str:
        routes = ", ".join(self.state.runtime.policy.routes) or "none"
        admin = f"; admin http://{self.admin_host}:{self.admin_port}" if self.admin_host else ""
        engines = "".join(f"; engine {e.name} at {e.origin} (log {e.log_path})" for e in self.state.engines)
        return (
            f"escalade {self.state.runtime.version}: serving http://{self.host}:{self.port}/v1 (routes: {routes})"
            f"{admin}{engines}"
        )


def _bound_port(server: uvicorn.Server) -> int:
    for listener in server.servers:
        for sock in listener.sockets:
            return int(sock.getsockname()[1])
    return server.config.port


async def serve(policy_path: Path, *, listen: str | None = None, admin_listen: str | None = None) -> None:
    """Serve until SIGTERM/SIGINT. Raises PolicyError/MissingSecret/ValueError when it cannot start."""
    gateway = Gateway(policy_path, listen=listen, admin_listen=admin_listen)
    logs.configure(gateway.state.runtime.policy.telemetry)
    task = asyncio.create_task(gateway.run())
    while not gateway.started and not task.done():
        await asyncio.sleep(0.02)
    if gateway.started:
        print(gateway.banner(), flush=True)
        _tune_gc()
    await task


def _tune_gc() -> None:
    """Measured (tests/bench): full collections of start-up objects took 40-55 ms each and made the
    p99 tail. Everything alive after start-up is frozen out of collection, and young-generation
    collections run less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(7000, 10, 10)

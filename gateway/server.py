"""Runs the gateway: loads the policy, serves the client and admin listeners, drains on SIGTERM."""

import asyncio
import contextlib
import ipaddress
import logging
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from gateway.app import create_admin_app, create_app
from gateway.reload import PolicyWatcher
from gateway.runtime import build_runtime, retire
from gateway.state import GatewayState, ReloadStatus
from gateway.telemetry import setup_tracing
from policies.loader import parse_policy

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
        timeout_graceful_shutdown=30,
        timeout_keep_alive=30,
        backlog=4096,
    )


def load_state(policy_path: Path, listen_host: str) -> GatewayState:
    text = policy_path.read_bytes()
    runtime = build_runtime(parse_policy(text, str(policy_path)), text)
    status = ReloadStatus(path=str(policy_path), version=runtime.version, loaded_at=runtime.loaded_at)
    return GatewayState(runtime=runtime, status=status, loopback=is_loopback(listen_host), policy_path=policy_path)


async def serve(policy_path: Path, *, listen: str | None = None, admin_listen: str | None = None) -> None:
    """Serve until SIGTERM/SIGINT. Raises PolicyError/MissingSecret/ValueError when it cannot start."""
    text = policy_path.read_bytes()
    server_conf = parse_policy(text, str(policy_path)).server
    host, port = parse_listen(listen or server_conf.listen)
    state = load_state(policy_path, host)
    setup_tracing()
    if not state.runtime.keys and not state.loopback:
        log.warning("no API keys in the policy and %s is not loopback: every request will get 401", host)
    servers = [_Server(_uvicorn_config(create_app(state), host, port))]
    admin = admin_listen or server_conf.admin_listen
    if admin:
        admin_host, admin_port = parse_listen(admin)
        if not is_loopback(admin_host) and not server_conf.admin_token_env:
            raise ValueError("admin_listen is not loopback: set server.admin_token_env to protect it")
        servers.append(_Server(_uvicorn_config(create_admin_app(state), admin_host, admin_port)))
    watcher = PolicyWatcher(state, server_conf.reload_interval_s)
    watcher.start()

    def stop() -> None:
        state.ready = False  # /readyz turns 503 first; in-flight requests are drained by uvicorn
        for server in servers:
            server.should_exit = True

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    routes = ", ".join(state.runtime.policy.routes) or "none"
    print(
        f"escalade {state.runtime.version}: serving http://{host}:{port}/v1 (routes: {routes})"
        + (f"; admin http://{admin}" if admin else ""),
        flush=True,
    )
    try:
        await asyncio.gather(*(server.serve() for server in servers))
    finally:
        await watcher.stop()
        await retire(state.runtime, None, grace_s=0)

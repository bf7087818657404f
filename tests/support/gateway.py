"""Run the real gateway (uvicorn + Litestar, the same Gateway class `escalade serve` uses) in a thread."""

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from gateway.server import Gateway


class GatewayThread:
    """The gateway on free loopback ports, in its own thread and event loop."""

    def __init__(self, policy_path: Path) -> None:
        self.policy_path = policy_path
        self.gateway = Gateway(policy_path, listen="127.0.0.1:0", admin_listen="127.0.0.1:0")
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="escalade-gateway", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self.gateway.run(handle_signals=False))
        except BaseException as exc:  # surfaced by start()
            self._error = exc

    def start(self, timeout: float = 10.0) -> "GatewayThread":
        self._thread.start()
        end = time.monotonic() + timeout
        while not self.gateway.started:
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"gateway did not start: {self._error!r}")
            if time.monotonic() > end:
                raise TimeoutError("gateway did not start in time")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        if self._thread.is_alive():
            self.gateway.stop()
            self._thread.join(timeout)

    @property
    def state(self) -> Any:
        return self.gateway.state

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}/v1"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.admin_port}"


def write_policy(path: Path, policy: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def mock_policy(base_url: str, **sections: Any) -> dict[str, Any]:
    """A policy with one openai-type provider on the mock upstream; models' `model:` is the mock scenario."""
    policy: dict[str, Any] = {
        "version": 1,
        "server": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0", "max_n": 4, "max_tokens": 4096,
                   "reload_interval_s": 0.1},
        "providers": {"mock": {"type": "openai", "base_url": base_url}},
        "models": {},
        "routes": {},
        "timeouts": {"connect_s": 1, "headers_s": 2, "first_token_s": 2, "idle_s": 2, "total_s": 20},
        "retries": {"attempts": 2, "backoff_base_s": 0.01, "backoff_max_s": 0.05, "retry_after_cap_s": 2},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(policy.get(key), dict):
            policy[key] = {**policy[key], **value}
        else:
            policy[key] = value
    return policy

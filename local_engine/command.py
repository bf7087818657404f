"""The engine's command line, built from the policy's `engine:` block. Pure: no I/O, no environment."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

RESERVED_FLAGS: frozenset[str] = frozenset({"--host", "--port", "--served-model-name", "--model"})
"""Flags escalade sets itself: host and port come from the provider's base_url, the rest from `engine:`."""


class EngineConfig(Protocol):
    """The fields of the policy's `engine:` block (providers.openai_compat.config.EngineConf) used here."""

    @property
    def model(self) -> str: ...
    @property
    def command(self) -> Sequence[str]: ...
    @property
    def served_model_name(self) -> str | None: ...
    @property
    def args(self) -> Sequence[str]: ...
    @property
    def env(self) -> Mapping[str, str]: ...
    @property
    def ready_timeout_s(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Address:
    """Where the engine listens, from the provider's base_url (`http://127.0.0.1:8000/v1`)."""

    host: str
    port: int
    origin: str
    """`http://host:port`: /health and /metrics live here, beside /v1."""


def engine_address(base_url: str) -> Address:
    """Host and port a managed engine must listen on so that `base_url` reaches it."""
    parts = urlsplit(base_url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"a managed engine needs an http:// base_url with a host, got {base_url!r}")
    port = parts.port or 80
    host = parts.hostname
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return Address(host=host, port=port, origin=f"http://{netloc}")


def build_argv(conf: EngineConfig, base_url: str) -> list[str]:
    """`command` + model + name + host/port + `args`. Raises ValueError when `args` sets a reserved flag.

    The command prefix is configurable because the entry point differs: `vllm serve` takes the model
    as a positional argument, while the CPU build (whose `vllm serve` is broken) runs
    `python -m vllm.entrypoints.openai.api_server --model`; both end with the model, so the model
    always comes right after the prefix.
    """
    if not conf.command:
        raise ValueError("engine.command must not be empty")
    clash = sorted({arg.split("=", 1)[0] for arg in conf.args} & RESERVED_FLAGS)
    if clash:
        raise ValueError(
            f"engine.args must not set {', '.join(clash)}: escalade sets them "
            "(host and port from base_url, the model from engine.model, the name from engine.served_model_name)"
        )
    address = engine_address(base_url)
    argv = [*conf.command, conf.model]
    if conf.served_model_name:
        argv += ["--served-model-name", conf.served_model_name]
    argv += ["--host", address.host, "--port", str(address.port), *conf.args]
    return argv


def engine_env(conf: EngineConfig, base: Mapping[str, str]) -> dict[str, str]:
    """The engine's environment: the caller's, with `engine.env` on top."""
    return {**base, **conf.env}

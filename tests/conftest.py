"""Shared fixtures: the mock upstream (a real server on loopback) and the gateway in front of it."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.mock_upstream import run_in_thread
from tests.support.gateway import GatewayThread, mock_policy, write_policy

pytest_plugins = ["tests.support.redis"]  # redis_server (session) and own_redis (per test) fixtures


@pytest.fixture(scope="session")
def upstream() -> Iterator[Any]:
    handle = run_in_thread()
    yield handle
    handle.stop()


@pytest.fixture
def mock(upstream: Any) -> Any:
    """The session's mock upstream, with scripts and the request log cleared for this test."""
    upstream.reset()
    return upstream


@pytest.fixture
def make_gateway(tmp_path: Path, mock: Any) -> Iterator[Callable[..., GatewayThread]]:
    """Start a gateway whose policy is mock_policy(...) with the given sections (later ones win)."""
    started: list[GatewayThread] = []

    def start(*bases: dict[str, Any], **sections: Any) -> GatewayThread:
        merged: dict[str, Any] = {}
        for base in (*bases, sections):
            merged.update(base)
        path = write_policy(tmp_path / f"policy{len(started)}.yaml", mock_policy(mock.base_url, **merged))
        gw = GatewayThread(path).start()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()

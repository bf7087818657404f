"""Fixtures of the integration tests that need more than the mock upstream."""

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.vllm_stack import Stack, running_stack


@pytest.fixture(scope="session")
def stack(upstream: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The gateway with its real CPU vLLM engine: ONE engine start for the whole session (the machine
    is small). Modules that use it run before test_vllm_engine.py, whose last tests stop it."""
    with running_stack(upstream.base_url, tmp_path_factory.mktemp("run")) as started:
        yield started

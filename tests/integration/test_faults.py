"""The fault suite: every scenario of tests/faults/scenarios.py, in each of its modes.

Each run starts a gateway on the session's mock upstream, asks through the official OpenAI SDK, and
checks what the client saw, what reached the upstream, and the trace (tests/faults/runner.py).
`python tests/bench/bench_faults.py` runs the same cells and prints them as a table.
"""

from collections.abc import Iterator

import pytest

from tests.faults.runner import DeadPort, Env, Sink, install_span_exporter, run_cell
from tests.faults.scenarios import CELLS


@pytest.fixture(scope="module")
def spans():
    return install_span_exporter()


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    listener = Sink()
    yield listener
    listener.close()


@pytest.fixture(scope="module")
def dead() -> Iterator[DeadPort]:
    port = DeadPort()
    yield port
    port.close()


@pytest.mark.parametrize(("scenario", "mode"), CELLS, ids=[f"{s.id}-{m}" for s, m in CELLS])
def test_fault(scenario, mode, mock, tmp_path, spans, sink, dead):
    result = run_cell(scenario, mode, Env(mock=mock, tmp=tmp_path, spans=spans, sink=sink, dead=dead))
    assert not result.truncated_as_complete, f"truncated answer looked complete: {result.saw}"
    assert result.ok, f"{scenario.title} ({mode}): client saw {result.saw}\n  " + "\n  ".join(result.failures)

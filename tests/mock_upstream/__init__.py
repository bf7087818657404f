"""Mock OpenAI-compatible upstream for escalade's tests and benchmarks.

    from tests.mock_upstream import MockUpstream, run_in_thread

See README.md in this directory for the scenario grammar and control API.
"""

from .server import MockUpstream, Scenario, ThreadHandle, parse_scenario, run_in_thread

__all__ = ["MockUpstream", "Scenario", "ThreadHandle", "parse_scenario", "run_in_thread"]

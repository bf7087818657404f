"""The fault suite: each upstream failure defined once (scenarios.py), run by pytest
(tests/integration/test_faults.py) and by the table script (tests/bench/bench_faults.py)."""

"""Golden routing explanations: tests/golden/routing/<case>/ holds a sample request (request.json), the
live health it is routed under (health.json, optional) and the client's cost cap header (case.json,
optional); explain.json is what `gateway.explain.explain` says about it under policy.yaml.

ESCALADE_GOLDEN_UPDATE=1 rewrites explain.json from the current code (review the diff before committing).
"""

import json
import os
from pathlib import Path

import msgspec
import pytest

from gateway.explain import explain
from policies.health import ModelHealth
from policies.loader import parse_policy

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "routing"
UPDATE = os.environ.get("ESCALADE_GOLDEN_UPDATE") == "1"
CASES = sorted(p for p in GOLDEN.iterdir() if p.is_dir())
POLICY = parse_policy((GOLDEN / "policy.yaml").read_text(), "policy.yaml")


def _optional(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_explanation(case: Path):
    health = {name: msgspec.convert(h, ModelHealth) for name, h in _optional(case / "health.json").items()}
    meta = _optional(case / "case.json")
    got = explain(
        POLICY,
        (case / "request.json").read_bytes(),
        health=health,
        now=1_000_000.0,
        max_cost_header=meta.get("max_cost_header"),
    )
    got = json.loads(json.dumps(got))
    expected_path = case / "explain.json"
    if UPDATE:
        expected_path.write_text(json.dumps(got, indent=2) + "\n")
    assert expected_path.exists(), f"no {expected_path.name}: run with ESCALADE_GOLDEN_UPDATE=1 and review it"
    assert got == json.loads(expected_path.read_text())


def test_every_case_has_its_expectation():
    assert CASES and all((c / "explain.json").exists() for c in CASES)

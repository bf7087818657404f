"""`escalade calibrate` as an operator runs it: a real process on a shadow log this test writes."""

import random
import subprocess
import sys
from pathlib import Path

import msgspec
import yaml

from policies.calibrate import CalibrationRecord
from policies.schema import GateConf

REPO = Path(__file__).resolve().parents[2]


def escalade(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=60
    )


def write_log(path: Path, n: int = 800, route: str = "chat", seed: int = 0) -> Path:
    """Shadow records: the local answer agrees with the last rung's more often the higher its score."""
    rng = random.Random(seed)
    enc = msgspec.json.Encoder()
    with path.open("ab") as f:
        for i in range(n):
            score = round(rng.random(), 4)
            record = CalibrationRecord(
                route=route,
                score=score,
                agree=rng.random() < 0.5 + 0.5 * score,
                cost_small=0.0002,
                cost_large=0.004,
                features={"tokens": 12.0, "q10_logprob": -0.2},
                request_id=f"req-{route}-{i}",
                at=1_795_480_000.0 + i,
            )
            f.write(enc.encode(record) + b"\n")
    return path


def test_calibrate_prints_the_fit_and_a_policy_snippet(tmp_path):
    log = write_log(tmp_path / "shadow.jsonl")
    out = escalade("calibrate", "--log", str(log), "--target-loss", "0.02", "--bootstrap", "300")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "route chat: 800 labelled records" in text
    assert "escalation" in text and "cost" in text and "at the 90% upper bound (score bound" in text
    snippet = yaml.safe_load(text.split("policy snippet:\n", 1)[1])
    gate = GateConf(**snippet["routes"]["chat"]["gate"])
    assert 0 < gate.min_score < 1
    assert f"min_score     {gate.min_score!r}" in text


def test_calibrate_can_use_the_bootstrap_bound(tmp_path):
    log = write_log(tmp_path / "shadow.jsonl")
    args = ("calibrate", "--log", str(log), "--target-loss", "0.02", "--confidence", "0.95")
    out = escalade(*args, "--bound", "bootstrap", "--bootstrap", "200", "--seed", "3")
    assert out.returncode == 0, out.stderr
    assert "at the 95% upper bound (percentile bootstrap, 200 resamples, seed 3)" in out.stdout
    assert "min_score" in out.stdout
    bad = escalade(*args, "--bound", "wald")
    assert bad.returncode == 2 and "--bound" in bad.stderr


def test_calibrate_fits_each_route_or_the_one_asked_for(tmp_path):
    log = write_log(tmp_path / "shadow.jsonl", n=300, route="chat")
    write_log(log, n=300, route="extract", seed=1)
    both = escalade("calibrate", "--log", str(log), "--target-loss", "0.05", "--bootstrap", "100")
    assert both.returncode == 0, both.stderr
    assert "route chat:" in both.stdout and "route extract:" in both.stdout
    assert "fewer than 500" in both.stdout  # small logs are flagged
    one = escalade("calibrate", "--log", str(log), "--target-loss", "0.05", "--route", "extract", "--bootstrap", "100")
    assert "route extract:" in one.stdout and "route chat:" not in one.stdout
    missing = escalade("calibrate", "--log", str(log), "--target-loss", "0.05", "--route", "nope")
    assert missing.returncode == 1 and "no record of route nope" in missing.stderr and "chat, extract" in missing.stderr


def test_calibrate_errors_are_messages_not_tracebacks(tmp_path):
    cases = []
    cases.append(
        (escalade("calibrate", "--log", str(tmp_path / "absent.jsonl"), "--target-loss", "0.01"), 1, "cannot read")
    )
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    cases.append((escalade("calibrate", "--log", str(empty), "--target-loss", "0.01"), 1, "has no records"))
    bad = write_log(tmp_path / "bad.jsonl", n=5)
    with bad.open("a") as f:
        f.write('{"route": "chat", "score": "high"}\n')
        f.write('{"route": "chat", "score": 0.5}\n')
    cases.append(
        (escalade("calibrate", "--log", str(bad), "--target-loss", "0.01"), 2, "line 6: not a calibration record")
    )
    notjson = tmp_path / "notjson.jsonl"
    notjson.write_text("route,score\nchat,0.5\n")
    cases.append((escalade("calibrate", "--log", str(notjson), "--target-loss", "0.01"), 2, "line 1"))
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text('{"route": "chat", "score": 0.5}\n')
    cases.append((escalade("calibrate", "--log", str(unlabelled), "--target-loss", "0.01"), 1, "has a label"))
    cases.append((escalade("calibrate", "--log", str(empty), "--target-loss", "2"), 2, "between 0 and 1"))
    for out, status, message in cases:
        assert out.returncode == status, (message, out.stderr)
        assert message in out.stderr and "Traceback" not in out.stderr


def test_a_torn_last_line_is_skipped(tmp_path):
    log = write_log(tmp_path / "shadow.jsonl", n=600)
    with log.open("a") as f:
        f.write('{"route": "chat", "sco')  # a writer mid-append
    out = escalade("calibrate", "--log", str(log), "--target-loss", "0.02", "--bootstrap", "100")
    assert out.returncode == 0, out.stderr
    assert "incomplete last line skipped" in out.stderr and "600 labelled records" in out.stdout


def test_help_names_the_command():
    assert "calibrate" in escalade("--help").stdout
    text = escalade("calibrate", "--help").stdout
    assert "--target-loss" in text and "exit status" in text

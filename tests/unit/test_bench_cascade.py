"""The cascade replay benchmark's core (tests/bench/bench_cascade.py) on rows this test generates in the
routing-data format; plus a smoke run on the real data when it is present (it is never copied here)."""

import math
import random

import pytest

from tests.bench import bench_cascade as bench


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    """Rows shaped like cascade-replay.jsonl: a small model right 75% of the time whose answer-token
    logprob tells right from wrong, a large model right 85% of the time, per-query costs."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        qid = f"synth/test/{i:04d}"
        small_ok = rng.random() < 0.75
        p = rng.betavariate(8, 1.2) if small_ok else rng.betavariate(2, 2)
        tokens_in = rng.randint(80, 400)
        for model, ok, conf, price in (
            ("small", small_ok, math.log(p), 0.15),
            ("large", rng.random() < (0.9 if not small_ok else 0.99), math.log(rng.random() * 0.5 + 0.5), 2.5),
        ):
            cost = tokens_in * price / 1e6
            rows.append(
                {
                    "source": "synthetic",
                    "dataset": "synth",
                    "split": "test",
                    "qid": qid,
                    "model": model,
                    "correct": ok,
                    "confidence": conf,
                    "confidence_kind": "answer_logprob",
                    "cost_usd": cost,
                    "cost_answer_call_usd": cost,
                }
            )
    rows.append({**rows[0], "dataset": "no-confidence", "confidence": None, "confidence_kind": None})
    return rows


def test_replay_core_on_synthetic_rows():
    rows = synthetic_rows(1200)
    [result] = bench.replay(rows, ["synth", "no-confidence"], [("small", "large")], splits=6, bootstrap=200)
    assert result.n == 1200 and len(result.splits) == 6
    assert 0.7 < result.acc_small < 0.8 and result.acc_large > result.acc_small
    assert result.auroc > 0.8
    assert result.small_cost_rel == pytest.approx(0.06)
    # the curve runs from always-large (cost = small + large) to always-small
    assert result.curve[0].escalation_rate == 1.0 and result.curve[0].cost_rel == pytest.approx(1.06)
    assert result.curve[-1].escalation_rate == 0.0 and result.curve[-1].cost_rel == pytest.approx(0.06)
    # a calibrated cascade sits between the oracle and always-large, and mostly meets the target
    cost = result.mean("cost_rel")
    assert result.oracle_cost_rel < cost < 1.0
    assert result.missed <= 2
    # random escalation at the same rate loses far more quality
    assert result.random_loss() > 3 * max(result.mean("loss"), 0.001)
    for split in result.splits:
        assert split.cal.loss <= split.loss_upper <= result.target + 1e-12


def test_replay_scores_go_through_the_gate_score():
    assert bench.replay_score(0.0, "answer_logprob") == 1.0
    assert bench.replay_score(math.log(0.5), "p_true") == pytest.approx(0.5)
    assert bench.replay_score(None, "p_true") == 0.0  # null confidence with a kind is log 0
    assert bench.replay_score(None, None) is None


def test_tables_render(capsys):
    rows = synthetic_rows(400, seed=2)
    results = bench.replay(rows, ["synth"], [("small", "large")], splits=2, bootstrap=50)
    table = bench.summary_table(results)
    assert table.count("\n") == 2 and "| synth | small -> large | 400 |" in table
    assert "| 100% | - |" in bench.curve_table(results[0])


def test_auroc():
    assert bench.auroc([0.9, 0.8, 0.1], [True, True, False]) == 1.0
    assert bench.auroc([0.5, 0.5], [True, False]) == 0.5
    assert bench.auroc([0.1, None], [True, False]) == 1.0
    assert bench.auroc([0.1], [True]) is None


def test_missing_data_is_a_skip_not_a_failure(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ESCALADE_ROUTING_DATA", str(tmp_path))
    assert bench.data_dir() is None
    assert bench.main([]) == 0
    assert "not found" in capsys.readouterr().err


@pytest.mark.skipif(bench.data_dir() is None, reason="routing replay data not present (shared/routing-data)")
def test_smoke_on_the_replay_data():
    rows = bench.load_rows(bench.data_dir())
    queries = bench.pair_queries(rows, "mmlu", "gpt-4o-mini", "gpt-4o")
    assert len(queries) == 1816
    result = bench.replay_pair(queries, dataset="mmlu", small="gpt-4o-mini", large="gpt-4o", splits=1, bootstrap=100)
    assert result.acc_small == pytest.approx(0.747, abs=0.001) and result.acc_large == pytest.approx(0.829, abs=0.001)
    assert result.oracle_cost_rel < result.mean("cost_rel") < 1.0

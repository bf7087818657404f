"""Calibration of the gate's min_score: labels, agreement, the cost-quality trade-off, the bootstrap fit."""

import random

import pytest

from policies.calibrate import CalibrationRecord, agreement, evaluate, fit_threshold, tradeoff


def rec(score, correct=None, *, agree=None, large=None, small_cost=0.1, large_cost=1.0, **kw) -> CalibrationRecord:
    return CalibrationRecord(
        route="r",
        score=score,
        correct=correct,
        agree=agree,
        correct_large=large,
        cost_small=small_cost,
        cost_large=large_cost,
        **kw,
    )


def synthetic(n: int, seed: int, *, base: float = 0.55) -> list[CalibrationRecord]:
    """A small model right with probability base + (1 - base) * score; the large one always right."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s = round(rng.random(), 4)
        out.append(rec(s, rng.random() < base + (1 - base) * s))
    return out


# ---------------------------------------------------------------- labels and agreement


def test_labels_count_the_last_rung_as_right_unless_known():
    assert rec(0.5, True).loss_if_accepted() == 0
    assert rec(0.5, False).loss_if_accepted() == 1
    assert rec(0.5, True, large=False).loss_if_accepted() == -1  # the small answer was the better one
    assert rec(0.5, False, large=False).loss_if_accepted() == 0
    assert rec(0.5, agree=True).loss_if_accepted() == 0
    assert rec(0.5, agree=False).loss_if_accepted() == 1
    assert rec(0.5).loss_if_accepted() is None


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (("The answer is Paris.", ()), ("the answer is  paris", ()), True),
        (("Ｐａｒｉｓ", ()), ("Paris", ()), True),  # NFKC
        (("Paris", ()), ("Lyon", ()), False),
        (('{"a": 1, "b": [1, 2]}', ()), ('{ "b": [1,2], "a": 1.0 }', ()), True),
        (('{"a": true}', ()), ('{"a": 1}', ()), False),
        (('{"a": [1, 2]}', ()), ('{"a": [2, 1]}', ()), False),
        (("42", ()), ("42.0", ()), True),
        (('{"a": 1}', ()), ("a is 1", ()), False),
        ((None, (("f", '{"x": 1, "y": 2}'),)), ("", (("f", '{"y": 2, "x": 1}'),)), True),
        ((None, (("f", '{"x": 1}'), ("g", "{}"))), (None, (("g", ""), ("f", '{"x": 1}'))), True),
        ((None, (("f", '{"x": 1}'),)), (None, (("f", '{"x": 2}'),)), False),
        ((None, (("f", "{}"),)), (None, (("g", "{}"),)), False),
        ((None, (("f", "{}"),)), (None, (("f", "{}"), ("f", "{}"))), False),
        (("Calling f.", (("f", "{}"),)), ("Sure", ()), False),
        ((None, (("f", '{"x": 1'),)), (None, (("f", '{"x": 1'),)), True),  # equal broken text
    ],
)
def test_agreement(a, b, same):
    assert agreement(a, b) is same
    assert agreement(b, a) is same


# ---------------------------------------------------------------- trade-off and evaluation


def test_tradeoff_runs_from_escalating_everything_to_accepting_everything():
    records = [
        rec(0.9, True),
        rec(0.9, True),
        rec(0.7, False),
        rec(0.4, True),
        rec(None, True),
        rec(0.95, True, failed=["empty"]),
    ]
    curve = tradeoff(records)
    assert [p.escalation_rate for p in curve] == pytest.approx([1.0, 4 / 6, 3 / 6, 2 / 6])
    assert curve[0].threshold is None and curve[0].loss == 0 and curve[0].cost_rel == pytest.approx(1.1)
    assert curve[-1].loss == pytest.approx(1 / 6)  # the one wrong answer accepted; None and failed never are
    for p in curve[1:]:
        assert evaluate(records, p.threshold) == p  # each threshold reproduces its point


def test_threshold_is_a_short_decimal_between_the_last_accepted_and_first_rejected_score():
    records = [rec(0.912345, True), rec(0.871234, True), rec(0.5, False)]
    curve = tradeoff(records)
    assert [p.threshold for p in curve] == [None, 0.9, 0.8, 0.5]


def test_weights_count_a_record_as_that_many_requests():
    heavy = [rec(0.9, True, weight=20.0), rec(0.5, False)]
    copies = [rec(0.9, True)] * 20 + [rec(0.5, False)]
    assert tradeoff(heavy) == tradeoff(copies)


def test_costs_are_optional():
    point = evaluate([rec(0.9, True, small_cost=0, large_cost=0)], 0.5)
    assert point.cost_rel is None and point.escalation_rate == 0


# ---------------------------------------------------------------- the fit


def test_a_perfect_signal_accepts_every_right_answer():
    records = [rec(0.9, True)] * 300 + [rec(0.3, False)] * 100
    fit = fit_threshold(records, 0.01, bootstrap=200)
    assert fit.threshold is not None and 0.3 < fit.threshold <= 0.9
    assert fit.loss == 0 and fit.escalation_rate == pytest.approx(0.25)
    assert fit.cost_rel == pytest.approx(0.1 + 0.25)


def test_no_threshold_when_nothing_can_be_accepted_safely():
    fit = fit_threshold([rec(0.9, False)] * 50 + [rec(0.8, True)] * 50, 0.01, bootstrap=200)
    assert fit.threshold is None and fit.escalation_rate == 1.0 and fit.loss == 0.0


def test_no_labelled_records():
    fit = fit_threshold([rec(0.9), rec(0.1)], 0.01, bootstrap=50)
    assert (fit.n, fit.unlabelled, fit.threshold) == (0, 2, None)


def test_the_upper_bound_is_wider_than_the_point_estimate_and_costs_more():
    records = synthetic(600, seed=1)
    point = fit_threshold(records, 0.02, bootstrap=0)
    bounded = fit_threshold(records, 0.02, bootstrap=500)
    assert point.loss == point.loss_upper <= 0.02
    assert bounded.loss < bounded.loss_upper <= 0.02
    assert bounded.escalation_rate > point.escalation_rate and bounded.cost_rel > point.cost_rel


def test_the_search_stops_at_the_first_threshold_that_fails():
    """Losses first (wrong answers with high scores), then gains that would hide them: a search over
    every threshold would accept the whole set; fixed-sequence testing stops before the losses."""
    records = (
        [rec(0.9, True)] * 200 + [rec(0.8, False)] * 30 + [rec(0.7, True, large=False)] * 60 + [rec(0.1, True)] * 10
    )
    fit = fit_threshold(records, 0.01, bootstrap=300)
    assert fit.threshold == 0.9 and fit.loss == 0
    assert evaluate(records, 0.7).loss < 0  # what a search over every threshold would have taken


def test_fits_meet_the_target_on_fresh_data_from_the_same_source():
    target, missed = 0.02, 0
    for seed in range(10):
        fit = fit_threshold(synthetic(500, seed), target, bootstrap=300, seed=seed)
        realised = evaluate(synthetic(5000, 1000 + seed), fit.threshold)
        missed += realised.loss > target
        assert fit.escalation_rate < 1.0  # the signal is good enough to accept something
    assert missed <= 1


def test_same_seed_same_fit():
    records = synthetic(300, seed=3)
    assert fit_threshold(records, 0.02, bootstrap=200, seed=7) == fit_threshold(records, 0.02, bootstrap=200, seed=7)


def test_confidence_must_be_a_probability():
    with pytest.raises(ValueError, match="confidence"):
        fit_threshold([], 0.01, confidence=1.0)


def test_log_lines_may_carry_more_than_a_record():
    """The cascade appends the prompt and both answers under `content` when the route records content."""
    import msgspec

    line = b'{"route": "r", "score": 0.7, "agree": true, "content": {"prompt": [], "small": "a", "large": "a"}}'
    record = msgspec.json.decode(line, type=CalibrationRecord)
    assert record.loss_if_accepted() == 0 and record.weight == 1.0

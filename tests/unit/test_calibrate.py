"""Calibration of the gate's min_score: labels, agreement, the cost-quality trade-off, the bootstrap fit."""

import math
import random
from statistics import NormalDist

import msgspec
import pytest

from policies.calibrate import (
    CalibrationRecord,
    PairedCounts,
    agreement,
    evaluate,
    fit_threshold,
    score_statistic,
    score_upper,
    tradeoff,
)


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


@pytest.mark.parametrize("bound", ["score", "bootstrap"])
def test_the_upper_bound_is_wider_than_the_point_estimate_and_costs_more(bound):
    records = synthetic(600, seed=1)
    point = fit_threshold(records, 0.02, bound="bootstrap", bootstrap=0)
    bounded = fit_threshold(records, 0.02, bound=bound, bootstrap=500)
    assert point.loss == point.loss_upper <= 0.02
    assert bounded.loss < bounded.loss_upper <= 0.02
    assert bounded.escalation_rate > point.escalation_rate and bounded.cost_rel > point.cost_rel


@pytest.mark.parametrize("bound", ["score", "bootstrap"])
def test_the_search_stops_at_the_first_threshold_that_fails(bound):
    """Losses first (wrong answers with high scores), then gains that would hide them: a search over
    every threshold would accept the whole set; fixed-sequence testing stops before the losses."""
    records = (
        [rec(0.9, True)] * 200 + [rec(0.8, False)] * 30 + [rec(0.7, True, large=False)] * 60 + [rec(0.1, True)] * 10
    )
    fit = fit_threshold(records, 0.01, bound=bound, bootstrap=300)
    assert fit.threshold == 0.9 and fit.loss == 0
    assert evaluate(records, 0.7).loss < 0  # what a search over every threshold would have taken


@pytest.mark.parametrize("bound", ["score", "bootstrap"])
def test_fits_meet_the_target_on_fresh_data_from_the_same_source(bound):
    target, missed = 0.02, 0
    for seed in range(10):
        fit = fit_threshold(synthetic(500, seed), target, bound=bound, bootstrap=300, seed=seed)
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
    with pytest.raises(ValueError, match="bound"):
        fit_threshold([], 0.01, bound="wald")


# ---------------------------------------------------------------- the score bound


def _brute_restricted_better(worse: float, better: float, n: float, delta: float) -> float:
    """P(better) maximising the trinomial likelihood under P(worse) - P(better) = delta, by a fine
    grid search (an independent check of the closed form)."""
    best, arg = -math.inf, 0.0
    for i in range(1, 200_000):
        q = i / 200_000 * (1 - delta) / 2  # P(better); P(worse) = q + delta; both in (0, 1)
        rest = 1 - 2 * q - delta
        if rest <= 0:
            break
        ll = worse * math.log(q + delta) + better * math.log(q) + (n - worse - better) * math.log(rest)
        if ll > best:
            best, arg = ll, q
    return arg


@pytest.mark.parametrize(("worse", "better", "n", "delta"), [(8, 5, 908, 0.01), (5, 0, 908, 0.01), (30, 12, 400, 0.03)])
def test_score_statistic_uses_the_restricted_maximum_likelihood(worse, better, n, delta):
    counts = PairedCounts(worse, better, n)
    q = _brute_restricted_better(worse, better, n, delta) if better else 0.0
    expected = ((worse - better) / n - delta) / math.sqrt((2 * q + delta - delta * delta) / n)
    assert score_statistic(counts, delta) == pytest.approx(expected, rel=1e-3)


def test_score_upper_bound_inverts_the_statistic():
    counts = PairedCounts(8, 5, 908)
    upper = score_upper(counts, 0.9)
    assert score_statistic(counts, upper) == pytest.approx(-NormalDist().inv_cdf(0.9), abs=1e-6)
    assert (8 - 5) / 908 < upper < score_upper(counts, 0.95)
    assert score_upper(PairedCounts(0, 0, 100), 0.9) > 0  # no wrong answer seen is not a zero loss


def test_a_handful_of_wrong_answers_is_not_certified_by_its_own_small_variance():
    """5 wrong accepted answers in 908 (0.55%): the observed variance (5 / 908^2) puts a 95% bootstrap
    bound at about 0.96% and certifies a 1% target; under a loss of 1% there would be about 9 wrong
    answers, and the score bound (like the exact Poisson bound of 10.5 / 908) says 1.1%."""
    records = [rec(0.9, True)] * 600 + [rec(0.8, False)] * 5 + [rec(0.8, True)] * 100 + [rec(0.1, False)] * 203
    boot = fit_threshold(records, 0.01, bound="bootstrap", confidence=0.95, bootstrap=2000)
    score = fit_threshold(records, 0.01, bound="score", confidence=0.95)
    assert boot.threshold == 0.8 and boot.loss_upper <= 0.01
    assert score.threshold == 0.9 and score_upper(PairedCounts(5, 0, 908), 0.95) == pytest.approx(0.0110, abs=5e-4)


def test_score_bound_covers_the_true_loss():
    """Trinomial draws with a true loss of 1 pp (2% worse, 1% better): the 90% bound falls below the
    true loss in about 10% of samples, not more."""
    rng = random.Random(5)
    below, trials = 0, 400
    for _ in range(trials):
        worse = better = 0
        for _ in range(600):
            u = rng.random()
            worse += u < 0.02
            better += 0.02 <= u < 0.03
        below += score_upper(PairedCounts(worse, better, 600), 0.9) < 0.01
    assert below / trials <= 0.13


def test_sampling_weights_do_not_shrink_the_bound():
    """Records sampled at rate 1/50 carry weight 50; the bound counts them as the observations they are."""
    records = synthetic(600, seed=2)
    heavy = [msgspec.structs.replace(r, weight=50.0) for r in records]
    weighted, plain = fit_threshold(heavy, 0.02), fit_threshold(records, 0.02)
    assert weighted.threshold == plain.threshold is not None
    assert weighted.loss_upper == pytest.approx(plain.loss_upper)
    assert weighted.cost_rel == pytest.approx(plain.cost_rel)


def test_log_lines_may_carry_more_than_a_record():
    """The cascade appends the prompt and both answers under `content` when the route records content."""
    import msgspec

    line = b'{"route": "r", "score": 0.7, "agree": true, "content": {"prompt": [], "small": "a", "large": "a"}}'
    record = msgspec.json.decode(line, type=CalibrationRecord)
    assert record.loss_if_accepted() == 0 and record.weight == 1.0

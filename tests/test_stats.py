"""Paired statistics equal independent implementations: scipy.stats.permutation_test / bootstrap, ranx, hand-worked."""

import numpy as np
import pytest
from scipy import stats as sps

from embedexp.eval.stats import (
    compare_paired,
    correlation_statistic,
    holm,
    paired_bootstrap_ci,
    paired_randomization_test,
    verdicts,
)


def _pair(n, shift, seed):
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 1, n)
    return base, np.clip(base + rng.normal(shift, 0.15, n), 0, 1)


@pytest.mark.parametrize("n, shift", [(10, 0.05), (12, 0.0), (8, -0.1)])
def test_exact_sign_flip_p_equals_scipy(n, shift):
    base, tuned = _pair(n, shift, seed=n)
    ours = paired_randomization_test(base, tuned, n_resamples=10_000)  # 2^n <= 10,000: exact
    res = sps.permutation_test(
        (tuned, base),
        lambda x, y, axis: np.mean(x - y, axis=axis),
        permutation_type="samples",
        alternative="two-sided",
        n_resamples=np.inf,
    )
    assert ours == pytest.approx(res.pvalue, abs=1e-12)


def test_spearman_change_p_equals_scipy_null_distribution():
    rng = np.random.default_rng(3)
    gold = rng.uniform(0, 5, 11)
    base = gold + rng.normal(0, 2.0, 11)
    tuned = gold + rng.normal(0, 1.0, 11)
    to_ranks = lambda x: sps.rankdata(x) / x.size  # noqa: E731  (compare_paired swaps ranks, not raw scores)
    b, t = to_ranks(base), to_ranks(tuned)
    ours = paired_randomization_test(b, t, correlation_statistic(gold), n_resamples=10_000)

    def spearman_change(x, y, axis=-1):
        return sps.spearmanr(x, gold).statistic - sps.spearmanr(y, gold).statistic

    res = sps.permutation_test(
        (t, b), spearman_change, permutation_type="samples", n_resamples=np.inf, vectorized=False
    )
    observed = spearman_change(t, b, 0)
    expected = np.mean(np.abs(res.null_distribution) >= abs(observed) - 1e-12)
    assert ours == pytest.approx(expected, abs=1e-12)
    assert compare_paired(base, tuned, gold=gold).p == pytest.approx(expected, abs=1e-12)


def test_monte_carlo_p_close_to_scipy():
    base, tuned = _pair(300, 0.02, seed=7)
    ours = paired_randomization_test(base, tuned, n_resamples=20_000, seed=1)
    res = sps.permutation_test(
        (tuned, base),
        lambda x, y, axis: np.mean(x - y, axis=axis),
        permutation_type="samples",
        n_resamples=20_000,
        random_state=2,
    )
    assert abs(ours - res.pvalue) < 0.01 + 0.1 * res.pvalue


def test_bootstrap_ci_close_to_scipy():
    base, tuned = _pair(300, 0.03, seed=11)
    low, high = paired_bootstrap_ci(base, tuned, n_resamples=10_000, seed=0)
    res = sps.bootstrap(
        (tuned, base),
        lambda x, y, axis: np.mean(x - y, axis=axis),
        paired=True,
        vectorized=True,
        method="percentile",
        n_resamples=10_000,
        random_state=0,
    )
    width = high - low
    assert abs(low - res.confidence_interval.low) < 0.05 * width
    assert abs(high - res.confidence_interval.high) < 0.05 * width
    assert paired_bootstrap_ci(base, tuned, n_resamples=10_000, seed=0) == (low, high)  # seeded


def test_bootstrap_ci_covers_the_true_mean_at_about_the_nominal_rate():
    rng = np.random.default_rng(0)
    true_delta, hits, sims = 0.02, 0, 300
    for i in range(sims):
        base = rng.uniform(0, 1, 60)
        tuned = base + rng.normal(true_delta, 0.1, 60)
        low, high = paired_bootstrap_ci(base, tuned, n_resamples=2_000, seed=i)
        hits += low <= true_delta <= high
    assert 0.90 <= hits / sims <= 0.98, hits / sims


def test_sts_bootstrap_recomputes_the_correlation():
    rng = np.random.default_rng(5)
    gold = rng.uniform(0, 5, 200)
    base, tuned = gold + rng.normal(0, 2.0, 200), gold + rng.normal(0, 1.0, 200)
    c = compare_paired(base, tuned, gold=gold, n_resamples=4_000)
    assert c.base == pytest.approx(sps.spearmanr(base, gold).statistic)
    assert c.tuned == pytest.approx(sps.spearmanr(tuned, gold).statistic)
    res = sps.bootstrap(
        (base, tuned, gold),
        lambda b, t, g: sps.spearmanr(t, g).statistic - sps.spearmanr(b, g).statistic,
        paired=True,
        vectorized=False,
        method="percentile",
        n_resamples=2_000,
        random_state=0,
    )
    width = c.ci_high - c.ci_low
    assert abs(c.ci_low - res.confidence_interval.low) < 0.1 * width
    assert abs(c.ci_high - res.confidence_interval.high) < 0.1 * width
    assert c.ci_low > 0 and c.p < 0.01 and c.wins + c.losses + c.ties == 200


def test_wins_losses_ties_and_mean():
    c = compare_paired([0.5, 0.2, 1.0, 0.0], [0.7, 0.2, 0.5, 0.0], n_resamples=100)
    assert (c.wins, c.losses, c.ties, c.n) == (1, 1, 2, 4)
    assert c.delta == pytest.approx((0.2 - 0.5) / 4)


def test_holm_hand_worked():
    # sorted p: .005 x4 = .02, .01 x3 = .03, .03 x2 = .06, .04 x1 = .04 -> running max .06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_verdicts():
    rows = [
        compare_paired(*_pair(200, 0.1, 1), n_resamples=2_000),
        compare_paired(*_pair(200, -0.1, 2), n_resamples=2_000),
        compare_paired(*_pair(200, 0.0, 3), n_resamples=2_000),
    ]
    assert [v for _, v in verdicts(rows)] == ["better", "worse", "no significant difference"]


def test_ranx_agrees():
    ranx = pytest.importorskip("ranx")
    from ranx.statistical_tests import fisher_randomization_test

    base, tuned = _pair(200, 0.02, seed=21)
    ours = paired_randomization_test(base, tuned, n_resamples=20_000, seed=0)
    theirs = fisher_randomization_test(base, tuned, n_permutations=20_000, random_seed=0)[0]
    assert ranx is not None and abs(ours - theirs) < 0.015 + 0.1 * theirs


def test_verdict_needs_p_and_ci_to_agree():
    from embedexp.eval.stats import PairedComparison

    # p says significant but the CI touches 0 (the two procedures disagree at the margin): not "better"
    borderline = PairedComparison(0.92, 0.924, 0.004, -0.002, 0.010, 0.04, 25, 21, 35, 81)
    clear = PairedComparison(0.40, 0.60, 0.2, 0.12, 0.26, 0.0001, 53, 7, 48, 108)
    assert [v for _, v in verdicts([borderline])] == ["no significant difference"]
    assert [v for _, v in verdicts([clear])] == ["better"]

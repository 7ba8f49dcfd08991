"""Paired statistics for "is the fine-tuned model really better than its base?".

Every comparison is paired: the same queries (retrieval) or the same sentence pairs (STS) are scored by
both models, so the unit that is resampled is a query / a pair, never a model.

- `paired_bootstrap_ci`: percentile confidence interval of the statistic's change (Efron & Tibshirani 1993,
  ch. 13), by resampling units with replacement, seeded. For a mean of per-query values the statistic is
  the mean delta; for STS the correlation itself is recomputed on each resample of pairs.
- `paired_randomization_test`: two-sided p-value of the paired randomisation (sign-flip) test (Fisher 1935;
  Smucker, Allan & Carterette 2007 for IR): under the null hypothesis the two models' values of a unit are
  exchangeable, so each unit's pair is swapped at random. Exact (every one of the 2^n swaps) when
  2^n <= n_resamples, as scipy.stats.permutation_test does; otherwise Monte Carlo with the (count + 1) /
  (n_resamples + 1) estimate, which never gives p = 0.
- `holm`: Holm-Bonferroni adjusted p-values (Holm 1979): controls the family-wise error rate over the rows
  a verdict summarises, with no assumption on how the rows depend on each other.
- `compare_paired`: one row of results: mean delta, CI, p, wins/losses/ties.

Shapes: per-unit arrays are 1-D float arrays of length n (units in the same order for base and tuned).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

Statistic = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (values (r, n), units (r, n)) -> (r,): one per resample

VERDICTS = ("better", "worse", "no significant difference")
_CHUNK = 2_000_000  # resampled values held at once (r x n), ~16 MB of float64


def _as_pair(base: Sequence[float], tuned: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    b, t = np.asarray(base, dtype=np.float64).reshape(-1), np.asarray(tuned, dtype=np.float64).reshape(-1)
    if b.shape != t.shape:
        raise ValueError(f"paired values need the same units: base has {b.size}, tuned has {t.size}")
    if b.size == 0:
        raise ValueError("paired statistics need at least one unit")
    if not (np.isfinite(b).all() and np.isfinite(t).all()):
        raise ValueError("paired values must be finite")
    return b, t


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row of x (r, n) with the same row of y (r, n); average ranks for ties."""
    from scipy.stats import rankdata

    return _pearson_rows(rankdata(x, axis=-1), rankdata(y, axis=-1))


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=-1, keepdims=True)
    y = y - y.mean(axis=-1, keepdims=True)
    den = np.sqrt((x * x).sum(-1) * (y * y).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (x * y).sum(-1) / den, 0.0)


def correlation_statistic(gold: Sequence[float], method: str = "spearman") -> Callable:
    """Statistic for STS: corr(model scores, gold scores of the same units), row by row.

    Returns f(scores (r, n), units (r, n) int) -> (r,) correlations; `method` is "spearman" or "pearson".
    """
    g = np.asarray(gold, dtype=np.float64).reshape(-1)
    corr = {"spearman": _spearman_rows, "pearson": _pearson_rows}[method]

    def stat(scores: np.ndarray, units: np.ndarray) -> np.ndarray:
        return corr(scores, g[units])

    return stat


def mean_statistic(values: np.ndarray, units: np.ndarray) -> np.ndarray:
    """Mean of each row of `values` (r, n) -> (r,); `units` is not needed."""
    return values.mean(axis=-1)


def _resample_chunks(n: int, n_resamples: int, rng: np.random.Generator):
    rows = max(1, _CHUNK // max(n, 1))
    done = 0
    while done < n_resamples:
        r = min(rows, n_resamples - done)
        yield rng.integers(0, n, size=(r, n))
        done += r


def paired_bootstrap_ci(
    base: Sequence[float],
    tuned: Sequence[float],
    statistic: Statistic = mean_statistic,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of statistic(tuned) - statistic(base), resampling units (queries/pairs) in pairs.

    Args:
        base, tuned: per-unit values (n,): per-query metric values, or per-pair model scores for STS.
        statistic: f(values (r, n), units (r, n)) -> (r,); `mean_statistic` or `correlation_statistic(gold)`.
        n_resamples: bootstrap resamples (10,000 gives the 2.5% tails to about +-0.3% coverage).
        confidence: two-sided level, in (0, 1).
        seed: numpy Generator seed; the same seed gives the same interval.
    Returns:
        (low, high) of the change.
    Raises:
        ValueError: unequal lengths, no units, non-finite values, confidence outside (0, 1).
    """
    b, t = _as_pair(base, tuned)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence}; expected a number in (0, 1)")
    rng = np.random.default_rng(seed)
    deltas = np.concatenate(
        [statistic(t[idx], idx) - statistic(b[idx], idx) for idx in _resample_chunks(b.size, n_resamples, rng)]
    )
    alpha = (1 - confidence) / 2
    low, high = np.quantile(deltas, [alpha, 1 - alpha])
    return float(low), float(high)


def paired_randomization_test(
    base: Sequence[float],
    tuned: Sequence[float],
    statistic: Statistic = mean_statistic,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> float:
    """Two-sided p-value of the paired randomisation (sign-flip) test of statistic(tuned) - statistic(base).

    Each resample swaps base and tuned on a random subset of units (for a mean this flips the signs of those
    deltas) and recomputes the change; p is the share of resamples whose |change| >= the observed |change|
    (with a 1e-12 relative tolerance for float ties). Exact enumeration of all 2^n swaps when that is at most
    `n_resamples`, else Monte Carlo with p = (count + 1) / (n_resamples + 1).

    Raises:
        ValueError: unequal lengths, no units, non-finite values.
    """
    b, t = _as_pair(base, tuned)
    n = b.size
    units = np.arange(n)[None, :]
    observed = float(statistic(t[None, :], units)[0] - statistic(b[None, :], units)[0])
    tol = 1e-12 * max(1.0, abs(observed))
    exact = n <= 20 and 2**n <= n_resamples
    if exact:
        batches = [((np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1).astype(bool)]
    else:
        rng = np.random.default_rng(seed)
        rows = max(1, _CHUNK // n)
        batches = (rng.random((min(rows, n_resamples - d), n)) < 0.5 for d in range(0, n_resamples, rows))
    count, total = 0, 0
    for swap in batches:  # (r, n) bool: units whose base and tuned values trade places in this resample
        idx = np.broadcast_to(units, swap.shape)
        changes = statistic(np.where(swap, b, t), idx) - statistic(np.where(swap, t, b), idx)
        count += int((np.abs(changes) >= abs(observed) - tol).sum())
        total += swap.shape[0]
    return count / total if exact else (count + 1) / (total + 1)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (Holm 1979), in the input order; each in [0, 1]."""
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


@dataclass
class PairedComparison:
    """One metric of one eval set, base vs tuned, paired over `n` units."""

    base: float
    tuned: float
    delta: float
    ci_low: float
    ci_high: float
    p: float
    wins: int
    losses: int
    ties: int
    n: int

    def as_dict(self) -> dict:
        return asdict(self)


def compare_paired(
    base: Sequence[float],
    tuned: Sequence[float],
    gold: Sequence[float] | None = None,
    method: str = "spearman",
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedComparison:
    """Mean (or, with `gold`, correlation) of base and tuned, their change, its CI, p and wins/losses/ties.

    Retrieval: `base`/`tuned` are per-query metric values; the metric is their mean, wins/losses/ties count
    queries where tuned is higher/lower/equal (|diff| <= 1e-12). STS: `base`/`tuned` are the models' per-pair
    similarity scores and `gold` the gold scores; the metric is corr(scores, gold) by `method`, recomputed on
    each resample; wins/losses/ties count pairs whose absolute rank error against the gold got smaller/larger.
    """
    b, t = _as_pair(base, tuned)
    if gold is None:
        stat, unit_b, unit_t = mean_statistic, b, t
    else:
        g = np.asarray(gold, dtype=np.float64).reshape(-1)
        if g.shape != b.shape:
            raise ValueError(f"gold has {g.size} scores for {b.size} pairs")
        from scipy.stats import rankdata

        stat = correlation_statistic(g, method)
        # the two models' scores live on different scales; swapping them (randomisation test) needs a common one that
        # leaves the statistic unchanged: ranks for Spearman, z-scores for Pearson
        common = (
            (lambda x: rankdata(x) / x.size) if method == "spearman" else (lambda x: (x - x.mean()) / (x.std() or 1.0))
        )
        b, t = common(b), common(t)
        rg = rankdata(g) / g.size  # per-pair error: distance of the model's rank from the gold rank (lower is better)
        unit_b, unit_t = -np.abs(rankdata(b) / b.size - rg), -np.abs(rankdata(t) / t.size - rg)
    everyone = np.arange(b.size)[None, :]
    base_value, tuned_value = float(stat(b[None, :], everyone)[0]), float(stat(t[None, :], everyone)[0])
    low, high = paired_bootstrap_ci(b, t, stat, n_resamples, confidence, seed)
    p = paired_randomization_test(b, t, stat, n_resamples, seed)
    diff = unit_t - unit_b
    tie = np.abs(diff) <= 1e-12
    return PairedComparison(
        base_value,
        tuned_value,
        tuned_value - base_value,
        low,
        high,
        p,
        int((diff > 0)[~tie].sum()),
        int((diff < 0)[~tie].sum()),
        int(tie.sum()),
        int(b.size),
    )


def verdicts(comparisons: Sequence[PairedComparison], alpha: float = 0.05) -> list[tuple[float, str]]:
    """(Holm-adjusted p, verdict) per comparison, over the family given: better / worse / no significant difference.

    "better" needs both tests to agree: Holm-adjusted p < alpha and a bootstrap CI entirely above 0 ("worse":
    entirely below). The randomisation test and the percentile interval are different procedures and can disagree
    at the margin (e.g. p = 0.04 with a CI that touches 0); such a row is reported as no significant difference.
    """
    adjusted = holm([c.p for c in comparisons]) if comparisons else []
    out = []
    for c, p_adj in zip(comparisons, adjusted):
        verdict = VERDICTS[2]
        if p_adj < alpha and c.ci_low > 0:
            verdict = VERDICTS[0]
        elif p_adj < alpha and c.ci_high < 0:
            verdict = VERDICTS[1]
        out.append((p_adj, verdict))
    return out

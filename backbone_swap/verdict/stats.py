"""The paired statistics behind ``backbone-swap compare``.

Both models answer the same questions, so every comparison here is *paired*: the question is the unit,
and what matters is where the two models disagree, not the two accuracies taken apart. The functions
are pure numpy/scipy on plain arrays (no torch), so they can be tested against independent computations
and reused on saved per-sample results long after the models are gone. ``docs/metrics.md`` defines each
number the report shows and names the test that checks it against an independent computation.

Inputs that break a function's contract raise ``ValueError``: by the time numbers reach this module the
caller has matched the two models' answers question by question, so a mismatch here is a bug upstream,
not something a user can fix.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats as _sps

# Bootstrap replicates are drawn in chunks of at most this many elements (replicates x items), so a
# 10 000-replicate bootstrap of a 50 000-question benchmark stays in the tens of megabytes.
_CHUNK_ELEMENTS = 2_000_000


# --------------------------------------------------------------------------------------------------
# Paired table
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairedTable:
    """The 2x2 table of a paired comparison; A is the old model, B the new one.

    Only ``only_a`` and ``only_b`` (the discordant questions) carry evidence about which model is better;
    ``both`` and ``neither`` say how much the models overlap.
    """

    both: int
    only_a: int
    only_b: int
    neither: int

    def __post_init__(self) -> None:
        for name in ("both", "only_a", "only_b", "neither"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"PairedTable.{name} must be a non-negative integer, got {value!r}")
        if self.n == 0:
            raise ValueError("PairedTable needs at least one question; every rate on it would be 0/0")

    @property
    def n(self) -> int:
        """Number of shared questions: the denominator of every rate on the table."""
        return int(self.both + self.only_a + self.only_b + self.neither)

    @property
    def accuracy_a(self) -> float:
        """Accuracy of A on the shared questions (not on whatever else A was run on)."""
        return (self.both + self.only_a) / self.n

    @property
    def accuracy_b(self) -> float:
        """Accuracy of B on the shared questions (not on whatever else B was run on)."""
        return (self.both + self.only_b) / self.n


def _as_binary(values: ArrayLike, name: str) -> NDArray[np.bool_]:
    """A 1-D 0/1 vector as booleans; anything else is refused so a score of 0.5 is never rounded silently."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.dtype == np.bool_:
        return array
    if not np.issubdtype(array.dtype, np.number) or not np.all(np.isin(array, (0, 1))):
        raise ValueError(f"{name} must hold only booleans or 0/1")
    return array.astype(bool)


def paired_table(correct_a: ArrayLike, correct_b: ArrayLike) -> PairedTable:
    """Count the four kinds of question; the arrays must be aligned question by question.

    A length mismatch means the two result sets were not matched by question id, which would make every
    paired statistic meaningless, so it is refused rather than truncated.
    """
    a = _as_binary(correct_a, "correct_a")
    b = _as_binary(correct_b, "correct_b")
    if a.shape != b.shape:
        raise ValueError(f"correct_a and correct_b differ in length ({a.size} vs {b.size})")
    if a.size == 0:
        raise ValueError("correct_a and correct_b are empty")
    return PairedTable(
        both=int(np.sum(a & b)),
        only_a=int(np.sum(a & ~b)),
        only_b=int(np.sum(~a & b)),
        neither=int(np.sum(~a & ~b)),
    )


def mcnemar_exact(table: PairedTable) -> float:
    """Two-sided exact McNemar p-value: is the split of the discordant questions lopsided?

    The exact binomial form is used rather than the chi-square approximation because after a backbone
    swap the discordant count is often small, where the approximation is poor. With no discordant
    questions there is no evidence either way, hence p = 1.
    """
    b, c = table.only_a, table.only_b
    if b + c == 0:
        return 1.0
    return float(min(1.0, 2.0 * _sps.binom.cdf(min(b, c), b + c, 0.5)))


def phi(table: PairedTable) -> float:
    """Correlation of the two models' correctness (equals Matthews' correlation on the 0/1 vectors).

    When a model is right on every question or wrong on every question (a zero marginal), the
    correlation is 0/0; it is reported as 0.0, "no measurable co-variation", rather than NaN, so that a
    report never carries NaN into JSON or a plot. Read it together with the accuracies in that case.
    """
    a, b, c, d = table.both, table.only_a, table.only_b, table.neither
    denominator = float(a + b) * float(c + d) * float(a + c) * float(b + d)
    if denominator == 0.0:
        return 0.0
    return float((a * d - b * c) / math.sqrt(denominator))


def cohen_kappa(table: PairedTable) -> float:
    """Agreement of the two models beyond what their accuracies alone would produce by chance.

    Raw agreement is inflated when both models are accurate; kappa discounts that. When chance agreement
    is 1 (both models constant and the same: both right on every question, or both wrong on every one)
    kappa is 0/0: NaN, which the report writes as null ("n/a"). 0 would read as "agreement at chance level",
    a claim the data cannot support (scikit-learn's ``cohen_kappa_score`` gives NaN there too).
    """
    a, b, c, d, n = table.both, table.only_a, table.only_b, table.neither, table.n
    observed = (a + d) / n
    # in integers, so that "expected agreement is exactly 1" is an exact test
    chance = (a + b) * (a + c) + (c + d) * (b + d)
    if chance == n * n:
        return math.nan
    expected = chance / (n * n)
    return float((observed - expected) / (1.0 - expected))


def oracle_accuracy(table: PairedTable) -> float:
    """Accuracy of a perfect router that always picks whichever model is right: the ceiling of an ensemble."""
    return (table.both + table.only_a + table.only_b) / table.n


def jaccard(table: PairedTable) -> float:
    """Overlap of the two solved sets: low means the new model solves *different* questions, not more.

    If neither model solves anything, the two solved sets are both empty and therefore identical; the
    0/0 is defined as 1.0.
    """
    union = table.both + table.only_a + table.only_b
    if union == 0:
        return 1.0
    return table.both / union


def complementarity(table: PairedTable) -> float:
    """What an oracle router would gain over the better model alone; large means keeping both pays."""
    return oracle_accuracy(table) - max(table.accuracy_a, table.accuracy_b)


# --------------------------------------------------------------------------------------------------
# Bootstrap intervals
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval, and which bootstrap produced it.

    ``method`` is kept so that a report can say when BCa had to give way to plain percentiles.
    """

    estimate: float
    low: float
    high: float
    method: Literal["BCa", "percentile"]


def _as_scores(values: ArrayLike, name: str) -> NDArray[np.float64]:
    """A 1-D finite float vector; per-question scores may be soft (VQA accuracy), so 0/1 is not required."""
    return _as_float_array(values, name, 1, "one-dimensional")


def _as_float_array(values: ArrayLike, name: str, ndim: int, shape_words: str) -> NDArray[np.float64]:
    """``values`` as finite float64 of ``ndim`` dimensions (float16-derived inputs overflow otherwise)."""
    array = np.asarray(values)
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {shape_words}, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise ValueError(f"{name} must be numeric or boolean, got dtype {array.dtype}")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _check_confidence_level(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence level must be strictly between 0 and 1, got {confidence}")


def _mean_diff(a: NDArray[np.float64], b: NDArray[np.float64], axis: int = -1) -> NDArray[np.float64]:
    return np.mean(b, axis=axis) - np.mean(a, axis=axis)


def paired_bootstrap_diff(
    correct_a: ArrayLike,
    correct_b: ArrayLike,
    *,
    n_resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
    clusters: ArrayLike | None = None,
) -> Interval:
    """Accuracy difference B - A with a paired bootstrap interval.

    Questions are resampled once per replicate and applied to both models, because the two models'
    errors are correlated; bootstrapping each model separately would ignore that and give intervals
    that are too wide. BCa is used because accuracy differences near 0 or 1 are skewed; when BCa is
    undefined (all paired differences equal, e.g. identical predictions) the percentile interval of the
    same replicates is returned instead, and ``method`` says so.

    With ``clusters`` (one group id per question, e.g. its image), whole clusters are resampled: several
    questions on one image are not independent evidence, and treating them as such gives intervals that
    are too narrow. The cluster bootstrap uses the percentile interval (BCa's jackknife over clusters is
    not implemented). The estimate is always the plain difference of means over all questions.

    The generator is seeded, so a report can be regenerated with identical numbers.
    """
    a = _as_scores(correct_a, "correct_a")
    b = _as_scores(correct_b, "correct_b")
    if a.shape != b.shape:
        raise ValueError(f"correct_a and correct_b differ in length ({a.size} vs {b.size})")
    if a.size == 0:
        raise ValueError("correct_a and correct_b are empty")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    _check_confidence_level(confidence)
    estimate = float(np.mean(b) - np.mean(a))

    if clusters is not None:
        return _cluster_bootstrap_diff(b - a, clusters, estimate, n_resamples, confidence, seed)

    if a.size == 1:
        # every replicate of a single question equals the estimate
        return Interval(estimate, estimate, estimate, "percentile")
    return _item_bootstrap_diff(a, b, n_resamples, confidence, seed)


def _item_bootstrap_diff(
    a: NDArray[np.float64], b: NDArray[np.float64], n_resamples: int, confidence: float, seed: int
) -> Interval:
    """BCa interval of the mean difference over resampled questions, as ``scipy.stats.bootstrap(paired=True,
    method="BCa")`` computes it, from the same resamples of the same seed.

    scipy finds BCa's acceleration by evaluating the statistic on all n leave-one-out samples, O(n^2) work:
    minutes per task for a 100 000-question benchmark. For a mean the jackknife has a closed form (the
    leave-one-out deviations are the centred differences), O(n). When BCa is undefined (all paired
    differences equal, or every replicate on one side of the estimate) the percentile interval of the same
    replicates is returned, and ``method`` says so.
    """
    n = a.size
    estimate = float(np.mean(b) - np.mean(a))
    replicates = _replicates(n, n_resamples, seed, lambda drawn: _mean_diff(a[drawn], b[drawn]))
    alpha = (1.0 - confidence) / 2.0
    diff = b - a
    if np.ptp(diff) > 0:  # exact test on the raw values: identical differences leave BCa undefined
        theta = _mean_diff(a, b)
        # bias correction: where the estimate falls among the replicates (ties count half, as in scipy)
        share = (np.count_nonzero(replicates < theta) + np.count_nonzero(replicates <= theta)) / (2 * n_resamples)
        z0 = float(_sps.norm.ppf(share))
        deviation = diff - diff.mean()
        acceleration = float(np.sum(deviation**3) / (6.0 * np.sum(deviation**2) ** 1.5))
        levels = []
        for z in (float(_sps.norm.ppf(alpha)), float(_sps.norm.ppf(1.0 - alpha))):
            shifted = z0 + z
            levels.append(float(_sps.norm.cdf(z0 + shifted / (1.0 - acceleration * shifted))))
        if all(math.isfinite(level) for level in levels):
            low, high = np.percentile(replicates, [100.0 * level for level in levels])
            return Interval(estimate, float(low), float(high), "BCa")
    low, high = _percentile_bounds(replicates, confidence)
    return Interval(estimate, low, high, "percentile")


def _cluster_bootstrap_diff(
    diff: NDArray[np.float64],
    clusters: ArrayLike,
    estimate: float,
    n_resamples: int,
    confidence: float,
    seed: int,
) -> Interval:
    """Percentile interval of the mean difference with whole clusters resampled with replacement.

    Each replicate is a ratio (sum of differences / number of questions drawn) because clusters differ
    in size; weighting clusters equally would change the quantity being estimated.

    With a single cluster (every question on one image) every replicate is the estimate itself: the spread
    between clusters cannot be measured at all, so the interval is undefined (NaN bounds) rather than a
    zero-width interval that would pass for certainty.
    """
    groups = np.asarray(clusters)
    if groups.ndim != 1 or groups.size != diff.size:
        raise ValueError(f"clusters must give one group id per question ({diff.size}), got shape {groups.shape}")
    _, inverse = np.unique(groups, return_inverse=True)
    inverse = inverse.reshape(-1)
    cluster_sum = np.bincount(inverse, weights=diff)
    cluster_size = np.bincount(inverse).astype(np.float64)
    n_clusters = cluster_sum.size
    if n_clusters < 2:
        return Interval(estimate, math.nan, math.nan, "percentile")

    replicates = _replicates(n_clusters, n_resamples, seed,
                             lambda drawn: cluster_sum[drawn].sum(axis=1) / cluster_size[drawn].sum(axis=1))
    low, high = _percentile_bounds(replicates, confidence)
    return Interval(estimate, low, high, "percentile")


def _replicates(n: int, n_resamples: int, seed: int,
                statistic: Callable[[NDArray[np.int64]], NDArray[np.float64]]) -> NDArray[np.float64]:
    """``statistic`` of each of ``n_resamples`` draws of n indices with replacement, drawn in chunks so
    memory stays bounded whatever n (the draws are those of one seeded generator, chunk after chunk)."""
    rng = np.random.default_rng(seed)
    replicates = np.empty(n_resamples)
    chunk = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        replicates[start:stop] = statistic(rng.integers(0, n, size=(stop - start, n)))
    return replicates


def _percentile_bounds(replicates: NDArray[np.float64], confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(replicates, [alpha, 1.0 - alpha])
    return float(low), float(high)


# --------------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationResult:
    """ECE with its bins, so a report can show where the miscalibration sits and how thin each bin is.

    Each bin is a dict with ``lower``, ``upper``, ``count``, ``accuracy`` and ``mean_confidence``; the
    last two are ``None`` for an empty bin (JSON has no NaN). All ``n_bins`` bins are listed, empty or not,
    so a reliability diagram keeps its layout.
    """

    ece: float
    bins: list[dict[str, Any]]
    strategy: Literal["uniform", "quantile"]


def _calibration_inputs(
    confidence: ArrayLike, correct: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Validated (confidence, correct) as float vectors.

    Confidences outside [0, 1] mean the caller passed a log-prob or a logit, which would give a
    meaningless ECE without any error, so they are refused. ``correct`` may be soft (a VQA score in
    [0, 1]); then "accuracy" in a bin is the mean score.
    """
    conf = _as_scores(confidence, "confidence")
    corr = _as_scores(correct, "correct")
    if conf.shape != corr.shape:
        raise ValueError(f"confidence and correct differ in length ({conf.size} vs {corr.size})")
    if conf.size == 0:
        raise ValueError("confidence and correct are empty")
    if np.any((conf < 0.0) | (conf > 1.0)):
        raise ValueError("confidence values must lie in [0, 1]")
    if np.any((corr < 0.0) | (corr > 1.0)):
        raise ValueError("correct values must lie in [0, 1]")
    return conf, corr


def _bin_edges(conf: NDArray[np.float64], n_bins: int, strategy: str) -> NDArray[np.float64]:
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    if strategy == "quantile":
        return np.quantile(conf, np.linspace(0.0, 1.0, n_bins + 1))
    raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")


def _bin_index(conf: NDArray[np.float64], edges: NDArray[np.float64]) -> NDArray[np.intp]:
    """Bin of each confidence; bins are right-closed, (lower, upper], except the first, which is [0, upper].

    Right-closed bins put a confidence of exactly 1.0 in the last bin rather than in a bin of its own, and
    a confidence exactly on an inner edge (e.g. 0.2 with 5 bins) in the bin below it. Repeated quantile
    edges (many tied confidences) simply leave some bins empty.
    """
    return np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, edges.size - 2)


def _check_n_bins(n_bins: int) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")


def ece(
    confidence: ArrayLike,
    correct: ArrayLike,
    *,
    n_bins: int = 15,
    strategy: Literal["uniform", "quantile"] = "uniform",
) -> CalibrationResult:
    """Expected calibration error, sum over bins of (n_b / n) * |accuracy_b - mean confidence_b|.

    ``uniform`` uses equal-width bins on [0, 1] (15 is torchmetrics' default, so numbers are comparable
    with published ones); ``quantile`` uses equal-mass bins from the confidence quantiles, which keeps
    every bin populated when confidences crowd near 1, as they do for most VLMs. Empty bins contribute
    nothing. See ``_bin_index`` for which bin an edge value falls in.
    """
    _check_n_bins(n_bins)
    conf, corr = _calibration_inputs(confidence, correct)
    edges = _bin_edges(conf, n_bins, strategy)
    index = _bin_index(conf, edges)
    counts = np.bincount(index, minlength=n_bins)
    conf_sum = np.bincount(index, weights=conf, minlength=n_bins)
    corr_sum = np.bincount(index, weights=corr, minlength=n_bins)
    # (n_b / n) * |acc_b - conf_b| == |sum correct_b - sum confidence_b| / n, with no division by n_b.
    value = float(np.sum(np.abs(corr_sum - conf_sum)) / conf.size)
    bins = [
        {
            "lower": float(edges[i]),
            "upper": float(edges[i + 1]),
            "count": int(counts[i]),
            "accuracy": float(corr_sum[i] / counts[i]) if counts[i] else None,
            "mean_confidence": float(conf_sum[i] / counts[i]) if counts[i] else None,
        }
        for i in range(n_bins)
    ]
    return CalibrationResult(ece=value, bins=bins, strategy=strategy)


def ece_interval(
    confidence: ArrayLike,
    correct: ArrayLike,
    *,
    n_bins: int = 15,
    n_resamples: int = 2000,
    seed: int = 0,
    strategy: Literal["uniform", "quantile"] = "uniform",
    confidence_level: float = 0.95,
) -> Interval:
    """ECE with a percentile bootstrap interval over questions.

    ECE is biased upward at small n (|noise| never averages out to zero), so a bare ECE from a few hundred
    questions looks worse than it is and two models' ECEs are hard to compare; the interval shows how much
    of the number is sampling noise. Note that the percentile interval does not remove the bias: for a
    perfectly calibrated model at small n it still lies above 0. Quantile edges are recomputed on every
    replicate, as they would be on a fresh sample.
    """
    _check_n_bins(n_bins)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    _check_confidence_level(confidence_level)
    conf, corr = _calibration_inputs(confidence, correct)
    estimate = ece(conf, corr, n_bins=n_bins, strategy=strategy).ece
    n = conf.size
    rng = np.random.default_rng(seed)
    replicates = np.empty(n_resamples)

    if strategy == "uniform":
        # The bin of each question does not depend on the sample, so replicates reduce to bincounts.
        index = _bin_index(conf, _bin_edges(conf, n_bins, strategy))
        chunk = max(1, _CHUNK_ELEMENTS // n)
        for start in range(0, n_resamples, chunk):
            stop = min(start + chunk, n_resamples)
            drawn = rng.integers(0, n, size=(stop - start, n))
            flat = (index[drawn] + n_bins * np.arange(stop - start)[:, None]).ravel()
            size = (stop - start) * n_bins
            conf_sum = np.bincount(flat, weights=conf[drawn].ravel(), minlength=size).reshape(-1, n_bins)
            corr_sum = np.bincount(flat, weights=corr[drawn].ravel(), minlength=size).reshape(-1, n_bins)
            replicates[start:stop] = np.abs(corr_sum - conf_sum).sum(axis=1) / n
    elif strategy == "quantile":
        for r in range(n_resamples):
            drawn = rng.integers(0, n, size=n)
            sample_conf, sample_corr = conf[drawn], corr[drawn]
            index = _bin_index(sample_conf, _bin_edges(sample_conf, n_bins, strategy))
            conf_sum = np.bincount(index, weights=sample_conf, minlength=n_bins)
            corr_sum = np.bincount(index, weights=sample_corr, minlength=n_bins)
            replicates[r] = np.abs(corr_sum - conf_sum).sum() / n
    else:
        raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")

    low, high = _percentile_bounds(replicates, confidence_level)
    return Interval(estimate, low, high, "percentile")


def brier(confidence: ArrayLike, correct: ArrayLike) -> float:
    """Mean squared gap between confidence and correctness.

    Unlike ECE it has no bins to choose and no small-n bias from binning, and it rewards sharpness as
    well as calibration, so it is reported next to ECE.
    """
    conf, corr = _calibration_inputs(confidence, correct)
    return float(np.mean((conf - corr) ** 2))


# --------------------------------------------------------------------------------------------------
# Representation similarity
# --------------------------------------------------------------------------------------------------


def _as_features(values: ArrayLike, name: str) -> NDArray[np.float64]:
    return _as_float_array(values, name, 2, "a 2-D (examples x features) array")


def linear_cka(x: ArrayLike, y: ArrayLike) -> float:
    """Linear CKA between two representations of the same n examples (rows aligned, widths may differ).

    CKA compares what the two representations say about the *examples*, so it works across backbones of
    different hidden size, and it ignores rotations and overall scale, which a retrained projector is free
    to change. Computed in float64 with columns centred, using whichever of the feature form (d1 x d2
    products) or the Gram form (n x n products) is cheaper; both are exact.

    If either side is constant over the examples (every column has zero spread) the similarity is 0/0;
    it is reported as 0.0, because a representation that tells examples apart not at all shares no
    structure with anything.
    """
    xs = _as_features(x, "x")
    ys = _as_features(y, "y")
    if xs.shape[0] != ys.shape[0]:
        raise ValueError(f"x and y must describe the same examples; got {xs.shape[0]} and {ys.shape[0]} rows")
    n = xs.shape[0]
    if n < 2:
        raise ValueError(f"linear CKA needs at least 2 examples, got {n}")
    # Exact test on the raw values: a rounding residue after centring must not pass for structure.
    if xs.shape[1] == 0 or ys.shape[1] == 0 or not np.any(np.ptp(xs, axis=0)) or not np.any(np.ptp(ys, axis=0)):
        return 0.0
    xs = xs - xs.mean(axis=0)
    ys = ys - ys.mean(axis=0)
    d1, d2 = xs.shape[1], ys.shape[1]
    if n * n * (d1 + d2) < n * (d1 * d2 + d1 * d1 + d2 * d2):
        k = xs @ xs.T
        l_ = ys @ ys.T
        cross = float(np.sum(k * l_))  # trace(K L) == ||Y^T X||_F^2 for symmetric K, L
        norm_x = float(np.linalg.norm(k))
        norm_y = float(np.linalg.norm(l_))
    else:
        cross = float(np.linalg.norm(ys.T @ xs) ** 2)
        norm_x = float(np.linalg.norm(xs.T @ xs))
        norm_y = float(np.linalg.norm(ys.T @ ys))
    return cross / (norm_x * norm_y)

"""The paired statistics of ``backbone-swap compare``, each checked against an independent computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from backbone_swap.verdict import stats
from backbone_swap.verdict.stats import PairedTable

# --------------------------------------------------------------------------------------------------
# Paired table and the statistics on it
# --------------------------------------------------------------------------------------------------


def test_paired_table_counts_a_hand_example():
    a = np.array([1, 1, 1, 0, 0, 0, 1, 0], dtype=bool)
    b = np.array([1, 0, 1, 1, 0, 1, 0, 0], dtype=bool)
    # both: items 0, 2; only A: 1, 6; only B: 3, 5; neither: 4, 7
    table = stats.paired_table(a, b)
    assert table == PairedTable(both=2, only_a=2, only_b=2, neither=2)
    assert table.n == 8
    assert stats.paired_table([1, 0, 0], [1, 1, 0]) == PairedTable(1, 0, 1, 1)


@pytest.mark.parametrize(
    "a, b",
    [
        ([1, 0, 1], [1, 0]),  # length mismatch
        ([], []),  # empty
        ([1, 0.5], [1, 0]),  # not 0/1
        ([[1, 0]], [[1, 0]]),  # not 1-D
    ],
)
def test_paired_table_refuses_bad_input(a, b):
    with pytest.raises(ValueError):
        stats.paired_table(np.array(a), np.array(b))


def test_paired_table_refuses_negative_counts():
    with pytest.raises(ValueError):
        PairedTable(1, -1, 0, 0)
    with pytest.raises(ValueError):
        PairedTable(0, 0, 0, 0)


@pytest.mark.parametrize("b, c", [(1, 6), (0, 5), (5, 5), (10, 3), (40, 55), (100, 130), (1, 0), (7, 9)])
def test_mcnemar_matches_scipy_binomtest(b, c):
    table = PairedTable(both=50, only_a=b, only_b=c, neither=20)
    assert stats.mcnemar_exact(table) == pytest.approx(sps.binomtest(b, b + c, 0.5).pvalue, rel=1e-9, abs=1e-15)


def test_mcnemar_hand_example():
    # b=1, c=6: P(X <= 1) for X ~ Bin(7, 1/2) = (C(7,0) + C(7,1)) / 2^7 = 8/128; two-sided p = 16/128
    assert stats.mcnemar_exact(PairedTable(10, 1, 6, 3)) == pytest.approx(0.125)


def test_mcnemar_without_discordant_questions_is_one():
    assert stats.mcnemar_exact(PairedTable(10, 0, 0, 5)) == 1.0


def test_phi_matches_corrcoef_of_the_vectors():
    rng = np.random.default_rng(1)
    for _ in range(5):
        a = rng.random(300) < 0.6
        b = np.where(rng.random(300) < 0.7, a, rng.random(300) < 0.5)
        expected = np.corrcoef(a.astype(float), b.astype(float))[0, 1]
        assert stats.phi(stats.paired_table(a, b)) == pytest.approx(expected, abs=1e-12)


def test_phi_is_zero_when_a_model_is_constant():
    a = np.ones(10, dtype=bool)
    b = np.array([1, 0] * 5, dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        assert math.isnan(np.corrcoef(a.astype(float), b.astype(float))[0, 1])  # the 0/0 being defined
    assert stats.phi(stats.paired_table(a, b)) == 0.0


def test_kappa_oracle_jaccard_complementarity_hand_example():
    table = PairedTable(both=20, only_a=5, only_b=10, neither=15)  # n = 50
    # po = (20 + 15) / 50 = 0.7; pe = (25 * 30 + 25 * 20) / 50^2 = 1250 / 2500 = 0.5
    # kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4
    assert stats.cohen_kappa(table) == pytest.approx(0.4)
    # oracle = (20 + 5 + 10) / 50 = 0.7; Jaccard = 20 / 35
    assert stats.oracle_accuracy(table) == pytest.approx(0.7)
    assert stats.jaccard(table) == pytest.approx(4 / 7)
    # accuracies 25/50 = 0.5 and 30/50 = 0.6; complementarity = 0.7 - 0.6
    assert table.accuracy_a == pytest.approx(0.5)
    assert table.accuracy_b == pytest.approx(0.6)
    assert stats.complementarity(table) == pytest.approx(0.1)


def test_kappa_of_perfect_and_chance_agreement():
    assert stats.cohen_kappa(PairedTable(30, 0, 0, 20)) == pytest.approx(1.0)
    # independent models: a 0.5 x 0.5 table with every cell equal gives po = pe = 0.5
    assert stats.cohen_kappa(PairedTable(10, 10, 10, 10)) == pytest.approx(0.0)
    # both models constant and the same: pe = 1, kappa = 0/0 is undefined (NaN, null in report.json)
    assert math.isnan(stats.cohen_kappa(PairedTable(12, 0, 0, 0)))
    assert math.isnan(stats.cohen_kappa(PairedTable(0, 0, 0, 7)))
    # both constant but opposite: po = 0, pe = (12 * 0 + 0 * 12) / 144 = 0, kappa = 0 (defined)
    assert stats.cohen_kappa(PairedTable(0, 12, 0, 0)) == 0.0


def test_jaccard_when_nothing_is_solved_is_one():
    assert stats.jaccard(PairedTable(0, 0, 0, 9)) == 1.0
    assert stats.oracle_accuracy(PairedTable(0, 0, 0, 9)) == 0.0


# --------------------------------------------------------------------------------------------------
# Paired bootstrap
# --------------------------------------------------------------------------------------------------


def _correlated_pair(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.random(n) < 0.6
    b = np.where(rng.random(n) < 0.75, a, rng.random(n) < 0.7)
    return a, b


def test_bootstrap_estimate_is_the_plain_difference_and_inside_the_interval():
    a, b = _correlated_pair(400, seed=2)
    table = stats.paired_table(a, b)
    interval = stats.paired_bootstrap_diff(a, b, n_resamples=2000)
    assert interval.estimate == pytest.approx((table.only_b - table.only_a) / table.n, abs=1e-12)
    assert interval.method == "BCa"
    assert interval.low < interval.estimate < interval.high


@pytest.mark.parametrize(("n", "soft", "level"), [(12, False, 0.95), (300, False, 0.95), (2500, False, 0.9),
                                              (400, True, 0.95)])
def test_bootstrap_matches_scipy_bca(n, soft, level):
    rng = np.random.default_rng(n)
    if soft:  # VQA-style scores in [0, 1]
        a, b = rng.choice([0.0, 0.3, 0.6, 0.9, 1.0], n), rng.choice([0.0, 0.3, 0.6, 0.9, 1.0], n)
    else:
        a, b = _correlated_pair(n, seed=n)
    reference = sps.bootstrap(
        (a.astype(float), b.astype(float)), lambda x, y, axis=-1: np.mean(y, axis=axis) - np.mean(x, axis=axis),
        paired=True, vectorized=True, method="BCa", n_resamples=1500, confidence_level=level,
        batch=max(1, 2_000_000 // n), rng=np.random.default_rng(11),
    ).confidence_interval
    interval = stats.paired_bootstrap_diff(a, b, n_resamples=1500, confidence=level, seed=11)
    assert interval.method == "BCa"
    assert (interval.low, interval.high) == (pytest.approx(reference.low, abs=1e-9),
                                             pytest.approx(reference.high, abs=1e-9))


def test_bootstrap_of_a_large_benchmark_gives_a_bca_interval():
    # the size of a VQAv2 split; bench/bootstrap.py times it against scipy
    a, b = _correlated_pair(100_000, seed=12)
    interval = stats.paired_bootstrap_diff(a, b, n_resamples=200)
    assert interval.method == "BCa" and interval.low < interval.estimate < interval.high


def test_bootstrap_is_reproducible_by_seed():
    a, b = _correlated_pair(300, seed=3)
    first = stats.paired_bootstrap_diff(a, b, n_resamples=1000, seed=7)
    again = stats.paired_bootstrap_diff(a, b, n_resamples=1000, seed=7)
    other = stats.paired_bootstrap_diff(a, b, n_resamples=1000, seed=8)
    assert first == again
    assert (first.low, first.high) != (other.low, other.high)


def test_bootstrap_of_identical_predictions_falls_back_to_percentile():
    a = np.array([1, 0, 1, 1, 0, 1, 0, 0, 1, 1], dtype=bool)
    interval = stats.paired_bootstrap_diff(a, a.copy(), n_resamples=500)
    assert interval.method == "percentile"
    assert interval.estimate == 0.0
    assert interval.low == 0.0
    assert interval.high == 0.0


def test_bootstrap_with_constant_nonzero_difference_is_a_point():
    interval = stats.paired_bootstrap_diff(np.zeros(20), np.ones(20), n_resamples=200)
    assert (interval.estimate, interval.low, interval.high, interval.method) == (1.0, 1.0, 1.0, "percentile")


def test_bootstrap_of_a_single_question():
    interval = stats.paired_bootstrap_diff([0], [1], n_resamples=100)
    assert (interval.estimate, interval.low, interval.high) == (1.0, 1.0, 1.0)


def test_bootstrap_matches_normal_approximation_for_large_n():
    a, b = _correlated_pair(2000, seed=4)
    d = b.astype(float) - a.astype(float)
    half = sps.norm.ppf(0.975) * d.std(ddof=1) / math.sqrt(d.size)
    interval = stats.paired_bootstrap_diff(a, b, n_resamples=5000)
    assert interval.low == pytest.approx(d.mean() - half, abs=0.01)
    assert interval.high == pytest.approx(d.mean() + half, abs=0.01)


def test_cluster_bootstrap_is_wider_when_questions_in_a_cluster_agree():
    # 40 images x 10 questions; every question on an image has the same outcome for both models, so there
    # are only 40 independent observations, not 400.
    rng = np.random.default_rng(5)
    per_image_a = rng.random(40) < 0.5
    per_image_b = np.where(rng.random(40) < 0.6, per_image_a, rng.random(40) < 0.6)
    clusters = np.repeat(np.arange(40), 10)
    a, b = per_image_a[clusters], per_image_b[clusters]
    assert not np.array_equal(a, b)

    plain = stats.paired_bootstrap_diff(a, b, n_resamples=2000)
    clustered = stats.paired_bootstrap_diff(a, b, n_resamples=2000, clusters=clusters)
    assert clustered.method == "percentile"
    assert clustered.estimate == pytest.approx(np.mean(b) - np.mean(a))
    # width should grow by about sqrt(10); ask for clearly more than 2x
    assert clustered.high - clustered.low > 2.0 * (plain.high - plain.low)
    # the clustered interval equals the item bootstrap on the 40 per-image outcomes (same quantity)
    d_image = per_image_b.astype(float) - per_image_a.astype(float)
    half = sps.norm.ppf(0.975) * d_image.std(ddof=1) / math.sqrt(d_image.size)
    assert clustered.high - clustered.low == pytest.approx(2 * half, abs=0.05)


def test_cluster_bootstrap_with_singleton_clusters_matches_item_bootstrap():
    a, b = _correlated_pair(1000, seed=6)
    clustered = stats.paired_bootstrap_diff(a, b, n_resamples=4000, clusters=np.arange(1000).astype(str))
    d = b.astype(float) - a.astype(float)
    half = sps.norm.ppf(0.975) * d.std(ddof=1) / math.sqrt(d.size)
    assert clustered.low == pytest.approx(d.mean() - half, abs=0.01)
    assert clustered.high == pytest.approx(d.mean() + half, abs=0.01)


def test_cluster_bootstrap_weights_questions_not_clusters():
    # one big cluster where B gains, many small ones with no change: the estimate and the centre of the
    # replicates are per question, so the big cluster's weight is its size.
    a = np.zeros(60)
    b = np.concatenate([np.ones(30), np.zeros(30)])
    clusters = np.concatenate([np.zeros(30, dtype=int), np.arange(1, 31)])
    interval = stats.paired_bootstrap_diff(a, b, n_resamples=3000, clusters=clusters, seed=1)
    assert interval.estimate == pytest.approx(0.5)
    assert interval.low < 0.5 < interval.high


def test_cluster_bootstrap_of_a_single_cluster_has_no_interval():
    # 40 questions on one image: each replicate redraws that one image, so all replicates equal the estimate;
    # a [0.5, 0.5] interval would claim certainty from a single image.
    a = np.zeros(40)
    b = np.tile([1.0, 0.0], 20)
    interval = stats.paired_bootstrap_diff(a, b, n_resamples=500, clusters=["same.png"] * 40)
    assert interval.estimate == pytest.approx(0.5)
    assert math.isnan(interval.low) and math.isnan(interval.high)


def test_cluster_bootstrap_is_reproducible_and_checks_length():
    a, b = _correlated_pair(200, seed=7)
    clusters = np.repeat(np.arange(50), 4)
    first = stats.paired_bootstrap_diff(a, b, n_resamples=500, clusters=clusters, seed=3)
    assert first == stats.paired_bootstrap_diff(a, b, n_resamples=500, clusters=clusters, seed=3)
    assert first != stats.paired_bootstrap_diff(a, b, n_resamples=500, clusters=clusters, seed=4)
    with pytest.raises(ValueError):
        stats.paired_bootstrap_diff(a, b, clusters=clusters[:-1])


@pytest.mark.parametrize(
    "a, b, kwargs",
    [
        ([1, 0, 1], [1, 0], {}),
        ([], [], {}),
        ([1, np.nan], [1, 0], {}),
        ([1, 0], [1, 0], {"confidence": 1.5}),
        ([1, 0], [1, 0], {"n_resamples": 0}),
    ],
)
def test_bootstrap_refuses_bad_input(a, b, kwargs):
    with pytest.raises(ValueError):
        stats.paired_bootstrap_diff(np.array(a, dtype=float), np.array(b, dtype=float), **kwargs)


# --------------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------------


def test_ece_hand_example_with_edge_values():
    assert np.linspace(0.0, 1.0, 6)[2] == 0.4  # the edge value below sits exactly on an inner edge
    conf = np.array([0.0, 0.1, 0.3, 0.4, 0.9, 1.0])
    correct = np.array([0, 1, 1, 0, 1, 1])
    # 5 bins, right-closed: [0, .2], (.2, .4], (.4, .6], (.6, .8], (.8, 1]
    #   bin 0: 0.0, 0.1 -> 1 correct, confidence sum 0.1 -> |1 - 0.1| = 0.9
    #   bin 1: 0.3, 0.4 -> 1 correct, confidence sum 0.7 -> |1 - 0.7| = 0.3
    #   bin 4: 0.9, 1.0 -> 2 correct, confidence sum 1.9 -> |2 - 1.9| = 0.1
    # ECE = sum_b (n_b/n) |acc_b - conf_b| = sum_b |correct_b - conf_sum_b| / n = (0.9 + 0.3 + 0.1) / 6
    result = stats.ece(conf, correct, n_bins=5)
    assert result.ece == pytest.approx(1.3 / 6)
    assert [b["count"] for b in result.bins] == [2, 2, 0, 0, 2]
    assert result.bins[0]["accuracy"] == pytest.approx(0.5)
    assert result.bins[0]["mean_confidence"] == pytest.approx(0.05)
    assert result.bins[1]["mean_confidence"] == pytest.approx(0.35)
    assert result.bins[4]["accuracy"] == pytest.approx(1.0)
    assert result.bins[4]["mean_confidence"] == pytest.approx(0.95)
    assert result.bins[2]["accuracy"] is None and result.bins[2]["mean_confidence"] is None
    assert [b["lower"] for b in result.bins] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])
    assert [b["upper"] for b in result.bins] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert result.strategy == "uniform"


def test_ece_puts_exact_zero_and_one_in_the_end_bins():
    result = stats.ece([0.0, 1.0], [0, 1])
    counts = [b["count"] for b in result.bins]
    assert len(counts) == 15
    assert counts[0] == 1 and counts[-1] == 1 and sum(counts) == 2
    assert result.ece == 0.0
    # 1.0 wrong: that bin alone contributes |0 - 1| * 1/2
    assert stats.ece([0.0, 1.0], [0, 0]).ece == pytest.approx(0.5)


def test_ece_of_a_perfectly_calibrated_construction_is_zero():
    # ten questions at each confidence, with exactly 10 * confidence of them correct
    levels = [0.1, 0.3, 0.5, 0.7, 0.9]
    conf = np.repeat(levels, 10)
    correct = np.concatenate([np.arange(10) < round(10 * p) for p in levels])
    assert stats.ece(conf, correct).ece == pytest.approx(0.0, abs=1e-12)
    assert stats.ece(conf, correct, n_bins=5, strategy="quantile").ece == pytest.approx(0.0, abs=1e-12)
    # miscalibrate by +0.1 everywhere: every bin is then off by exactly 0.1
    assert stats.ece(conf + 0.1, correct).ece == pytest.approx(0.1)


def test_ece_of_sampled_calibrated_outcomes_is_small():
    rng = np.random.default_rng(8)
    conf = rng.random(100_000)
    correct = rng.random(conf.size) < conf
    assert stats.ece(conf, correct).ece < 0.01
    assert stats.ece(conf, correct, strategy="quantile").ece < 0.01


def test_quantile_bins_have_near_equal_counts():
    rng = np.random.default_rng(9)
    conf = rng.beta(8, 1, size=1500)  # crowded near 1, as VLM confidences are
    correct = rng.random(conf.size) < conf
    quantile = stats.ece(conf, correct, n_bins=15, strategy="quantile")
    counts = np.array([b["count"] for b in quantile.bins])
    assert counts.sum() == 1500
    assert counts.max() - counts.min() <= 2
    uniform_counts = np.array([b["count"] for b in stats.ece(conf, correct).bins])
    assert uniform_counts.max() - uniform_counts.min() > 100  # the contrast that motivates quantile bins
    # the quantile ECE, recomputed by hand from the bins it reports
    by_hand = sum(b["count"] * abs(b["accuracy"] - b["mean_confidence"]) for b in quantile.bins) / 1500
    assert quantile.ece == pytest.approx(by_hand)


@pytest.mark.parametrize(
    "conf, correct, kwargs",
    [
        ([0.5, 1.2], [1, 0], {}),
        ([-0.1, 0.5], [1, 0], {}),
        ([np.nan, 0.5], [1, 0], {}),
        ([np.inf, 0.5], [1, 0], {}),
        ([0.5, 0.5, 0.5], [1, 0], {}),
        ([], [], {}),
        ([0.5, 0.5], [1, 2], {}),
        ([0.5, 0.5], [1, 0], {"strategy": "kmeans"}),
        ([0.5, 0.5], [1, 0], {"n_bins": 0}),
        ([[0.5, 0.5]], [[1, 0]], {}),
    ],
)
def test_ece_refuses_bad_input(conf, correct, kwargs):
    with pytest.raises(ValueError):
        stats.ece(np.array(conf, dtype=float), np.array(correct, dtype=float), **kwargs)


def test_ece_interval_matches_a_naive_bootstrap():
    rng = np.random.default_rng(10)
    conf = rng.uniform(0.3, 1.0, size=300)
    correct = rng.random(conf.size) < conf - 0.05
    interval = stats.ece_interval(conf, correct, n_resamples=2000, seed=0)
    assert interval.method == "percentile"
    assert interval.estimate == pytest.approx(stats.ece(conf, correct).ece)

    # an independent bootstrap: own generator, np.digitize on left-open edges, an explicit per-bin loop
    naive_rng = np.random.default_rng(1234)
    edges = np.linspace(0, 1, 16)
    replicates = []
    for _ in range(2000):
        idx = naive_rng.integers(0, conf.size, conf.size)
        c, y = conf[idx], correct[idx].astype(float)
        which = np.clip(np.digitize(c, edges, right=True) - 1, 0, 14)
        total = 0.0
        for k in range(15):
            mask = which == k
            if mask.any():
                total += mask.sum() / c.size * abs(y[mask].mean() - c[mask].mean())
        replicates.append(total)
    low, high = np.quantile(replicates, [0.025, 0.975])
    assert interval.low == pytest.approx(low, abs=0.006)
    assert interval.high == pytest.approx(high, abs=0.006)


def test_ece_interval_is_reproducible_and_shows_small_sample_bias():
    levels = [0.1, 0.3, 0.5, 0.7, 0.9]
    conf = np.repeat(levels, 10)
    correct = np.concatenate([np.arange(10) < round(10 * p) for p in levels])
    for strategy in ("uniform", "quantile"):
        first = stats.ece_interval(conf, correct, n_resamples=300, seed=1, strategy=strategy)
        assert first == stats.ece_interval(conf, correct, n_resamples=300, seed=1, strategy=strategy)
        assert first.estimate == pytest.approx(0.0, abs=1e-12)
        # ECE of a resample can only be >= 0 and is almost never 0 at n=50: the upward bias
        assert 0.0 <= first.low < first.high
        assert first.high > 0.05


def test_brier_hand_example():
    # ((0.9 - 1)^2 + (0.2 - 0)^2 + (0.6 - 0)^2) / 3 = (0.01 + 0.04 + 0.36) / 3
    assert stats.brier([0.9, 0.2, 0.6], [1, 0, 0]) == pytest.approx(0.41 / 3)
    assert stats.brier([1.0, 0.0], [True, False]) == 0.0
    with pytest.raises(ValueError):
        stats.brier([0.9, 1.1], [1, 0])


# --------------------------------------------------------------------------------------------------
# Linear CKA
# --------------------------------------------------------------------------------------------------


def _hsic_cka(x: np.ndarray, y: np.ndarray) -> float:
    """CKA from the HSIC definition with explicit centring matrices, independent of the feature-form code."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k = x @ x.T
    l_ = y @ y.T

    def hsic(p: np.ndarray, q: np.ndarray) -> float:
        return float(np.trace(p @ h @ q @ h))

    return hsic(k, l_) / math.sqrt(hsic(k, k) * hsic(l_, l_))


@pytest.mark.parametrize("n, d1, d2", [(100, 5, 7), (60, 12, 3), (10, 50, 30), (8, 4, 40)])
def test_cka_matches_hsic_with_centring_matrices(n, d1, d2):
    rng = np.random.default_rng(n + d1 + d2)
    x = rng.normal(size=(n, d1)) + 3.0  # non-zero column means, so centring matters
    y = np.tanh(x @ rng.normal(size=(d1, d2))) + rng.normal(scale=0.5, size=(n, d2)) - 1.0
    expected = _hsic_cka(x, y)
    assert 0.05 < expected < 0.99  # a non-trivial value, so the comparison can fail
    assert stats.linear_cka(x, y) == pytest.approx(expected, rel=1e-9)


def test_cka_of_identical_inputs_is_one():
    x = np.random.default_rng(11).normal(size=(30, 6))
    assert stats.linear_cka(x, x) == pytest.approx(1.0)


def test_cka_invariances():
    rng = np.random.default_rng(12)
    x = rng.normal(size=(80, 8))
    y = x[:, :5] @ rng.normal(size=(5, 6)) + rng.normal(size=(80, 6))
    base = stats.linear_cka(x, y)
    assert 0.1 < base < 0.95

    q = sps.ortho_group.rvs(8, random_state=13)
    assert stats.linear_cka(x @ q, y) == pytest.approx(base, rel=1e-9)
    assert stats.linear_cka(x @ q, x) == pytest.approx(1.0)
    assert stats.linear_cka(3.7 * x, y) == pytest.approx(base, rel=1e-9)
    assert stats.linear_cka(x, 0.01 * y) == pytest.approx(base, rel=1e-9)

    general = np.diag([10.0, 5.0, 1.0, 1.0, 0.2, 0.1, 1.0, 3.0]) @ rng.normal(size=(8, 8))
    assert abs(stats.linear_cka(x @ general, y) - base) > 1e-2


def test_cka_works_in_float64_for_low_precision_inputs():
    x = (np.random.default_rng(14).normal(size=(20, 4)) * 1e15).astype(np.float32)
    # squares of 1e15 overflow float32 (max ~3e38); in float64 the answer is exactly 1
    assert stats.linear_cka(x, x) == pytest.approx(1.0)


def test_cka_of_a_constant_side_is_zero():
    x = np.random.default_rng(15).normal(size=(10, 3))
    assert stats.linear_cka(x, np.full((10, 4), 0.1)) == 0.0
    assert stats.linear_cka(np.ones((10, 2)), x) == 0.0


def test_cka_refuses_bad_input():
    rng = np.random.default_rng(16)
    with pytest.raises(ValueError):
        stats.linear_cka(rng.normal(size=(10, 3)), rng.normal(size=(11, 3)))
    with pytest.raises(ValueError):
        stats.linear_cka(rng.normal(size=(1, 3)), rng.normal(size=(1, 3)))
    with pytest.raises(ValueError):
        stats.linear_cka(rng.normal(size=10), rng.normal(size=10))
    with pytest.raises(ValueError):
        stats.linear_cka(np.full((4, 2), np.nan), rng.normal(size=(4, 2)))

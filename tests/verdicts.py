"""Task statistics as compare.py computes them, from paired 0/1 outcomes: shared by the decision-rule and report
tests, so their verdicts are reached on realistic numbers (bootstrap intervals, exact p-values)."""

from __future__ import annotations

import numpy as np

from backbone_swap.verdict import stats as st
from backbone_swap.verdict.decision import Thresholds, task_verdict


def outcomes(both: int, only_a: int, only_b: int, neither: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two aligned 0/1 vectors with exactly these paired counts, in a shuffled order."""
    a = np.array([1] * both + [1] * only_a + [0] * only_b + [0] * neither)
    b = np.array([1] * both + [0] * only_a + [1] * only_b + [0] * neither)
    order = np.random.default_rng(seed).permutation(a.size)
    return a[order], b[order]


def _confidences(correct: np.ndarray, calibrated: bool, rng: np.random.Generator) -> np.ndarray:
    if calibrated:  # confident when right, unsure when wrong
        conf = np.where(correct == 1, rng.uniform(0.6, 1.0, correct.size), rng.uniform(0.0, 0.5, correct.size))
    else:  # always sure
        conf = rng.uniform(0.85, 1.0, correct.size)
    return conf


def make_task(
    name: str,
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    *,
    type: str = "short_answer",
    needs: str = "reasoning",
    valid_a: float | None = None,
    valid_b: float | None = None,
    clusters: np.ndarray | None = None,
    probes: bool = True,
    seed: int = 0,
) -> dict:
    """Every statistic of one task, as compare.py computes it (A overconfident, B calibrated, B more stable)."""
    rng = np.random.default_rng(seed)
    table = st.paired_table(correct_a, correct_b)
    interval = st.paired_bootstrap_diff(correct_a, correct_b, n_resamples=999, seed=seed, clusters=clusters)
    conf_a = _confidences(correct_a, False, rng)
    conf_b = _confidences(correct_b, True, rng)
    cal_a, cal_b = st.ece(conf_a, correct_a), st.ece(conf_b, correct_b)
    ci_a = st.ece_interval(conf_a, correct_a, n_resamples=200, seed=seed)
    ci_b = st.ece_interval(conf_b, correct_b, n_resamples=200, seed=seed)
    cka_a = cka_b = None
    if probes:
        clean_a, clean_b = rng.normal(size=(32, 16)), rng.normal(size=(32, 24))
        cka_a = st.linear_cka(clean_a, clean_a + rng.normal(scale=1.5, size=clean_a.shape))
        cka_b = st.linear_cka(clean_b, clean_b + rng.normal(scale=0.3, size=clean_b.shape))
    return {
        "name": name,
        "type": type,
        "needs": needs,
        "n": table.n,
        "accuracy_a": table.accuracy_a,
        "accuracy_b": table.accuracy_b,
        "diff": table.accuracy_b - table.accuracy_a,
        "diff_ci": [interval.low, interval.high],
        "mcnemar_p": st.mcnemar_exact(table),
        "overlap": {"both": table.both, "only_a": table.only_a, "only_b": table.only_b, "neither": table.neither},
        "phi": st.phi(table),
        "kappa": st.cohen_kappa(table),
        "oracle": st.oracle_accuracy(table),
        "jaccard": st.jaccard(table),
        "complementarity": st.complementarity(table),
        "ece_a": cal_a.ece,
        "ece_b": cal_b.ece,
        "ece_a_ci": [ci_a.low, ci_a.high],
        "ece_b_ci": [ci_b.low, ci_b.high],
        "brier_a": st.brier(conf_a, correct_a),
        "brier_b": st.brier(conf_b, correct_b),
        "reliability_a": cal_a.bins,
        "reliability_b": cal_b.bins,
        "cka_a": cka_a,
        "cka_b": cka_b,
        "valid_rate_a": valid_a,
        "valid_rate_b": valid_b,
        "mean_error_a": None if valid_a is None else 0.3,
        "mean_error_b": None if valid_b is None else 0.1,
        "solved_when": "it is right (outcomes given as 0/1)",
    }


def with_verdict(task: dict, t: Thresholds | None = None) -> dict:
    verdict, reasons = task_verdict(task, t or Thresholds())
    return {**task, "verdict": verdict, "reasons": reasons}

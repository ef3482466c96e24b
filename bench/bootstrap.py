"""Time of compare's paired bootstrap interval against scipy's BCa, by number of questions.

    python bench/bootstrap.py [--sizes 2000 10000 20000] [--resamples 2000]

For each size, draws two correlated 0/1 answer vectors (B agrees with A on 75% of the questions) and times,
in this process: ``scipy.stats.bootstrap(paired=True, method="BCa", vectorized=True)`` on the mean
difference, and ``backbone_swap.verdict.stats.paired_bootstrap_diff`` with the same seed. Prints both times, the
ratio scipy / backbone-swap, and the largest difference between the two intervals' bounds (they draw the same
resamples, so it should be at rounding level). scipy's BCa evaluates the statistic on n leave-one-out
samples, so its time grows with the square of n; the sizes default to what it finishes in under a minute.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def pair(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.random(n) < 0.6
    b = np.where(rng.random(n) < 0.75, a, rng.random(n) < 0.7)
    return a, b


def main() -> None:
    from scipy import stats as sps

    from backbone_swap.verdict import stats

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000, 20000])
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"{'questions':>10} {'scipy s':>9} {'ours s':>9} {'scipy/ours':>11} {'max |bound diff|':>17}")
    for n in args.sizes:
        a, b = pair(n, seed=n)
        started = time.perf_counter()
        reference = sps.bootstrap(
            (a.astype(float), b.astype(float)), lambda x, y, axis=-1: np.mean(y, axis=axis) - np.mean(x, axis=axis),
            paired=True, vectorized=True, n_resamples=args.resamples, method="BCa",
            rng=np.random.default_rng(args.seed), batch=max(1, 2_000_000 // n),
        ).confidence_interval
        scipy_seconds = time.perf_counter() - started
        started = time.perf_counter()
        ours = stats.paired_bootstrap_diff(a, b, n_resamples=args.resamples, seed=args.seed)
        ours_seconds = time.perf_counter() - started
        gap = max(abs(reference.low - ours.low), abs(reference.high - ours.high))
        print(f"{n:>10} {scipy_seconds:>9.2f} {ours_seconds:>9.3f} {scipy_seconds / ours_seconds:>11.1f} {gap:>17.2e}")


if __name__ == "__main__":
    main()

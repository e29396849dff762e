"""The figures benchmarks print, as small pure functions tested on hand-made cases."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np


def rank_of(truth: str, ranked: Sequence[str]) -> int | None:
    """1-based position of `truth` in `ranked`, or None when it is absent."""
    for position, candidate in enumerate(ranked, start=1):
        if candidate == truth:
            return position
    return None


def recall_at_k(ranks: Sequence[int | None], k: int) -> float:
    """Share of queries whose right answer is within the first `k` (absent counts as a miss)."""
    if not ranks:
        return float("nan")
    return sum(1 for r in ranks if r is not None and r <= k) / len(ranks)


def mean_reciprocal_rank(ranks: Sequence[int | None]) -> float:
    """Mean of 1/rank, with an absent answer counting 0."""
    if not ranks:
        return float("nan")
    return sum(1.0 / r for r in ranks if r is not None) / len(ranks)


def percentiles(values: Sequence[float], points: Sequence[float] = (50, 95, 99)) -> dict:
    """Percentiles (linear interpolation, as numpy) plus the max, keyed `p50`… and `max`."""
    if not values:
        return {**{f"p{p:g}": float("nan") for p in points}, "max": float("nan")}
    array = np.asarray(values, dtype=float)
    figures = {f"p{p:g}": float(np.percentile(array, p)) for p in points}
    figures["max"] = float(array.max())
    return figures


def share(flags: Sequence[bool]) -> float:
    """Share of True in `flags` (nan when empty)."""
    return sum(1 for f in flags if f) / len(flags) if flags else float("nan")


def confusion_pairs(pairs: Sequence[tuple[str, str]], top: int = 10) -> list[tuple[str, str, int]]:
    """The most frequent (true, predicted) pairs where the prediction was wrong."""
    counts = Counter((truth, predicted) for truth, predicted in pairs if truth != predicted)
    return [(t, p, n) for (t, p), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][:top]


def coverage_accuracy_curve(
    confidences: Sequence[float], correct: Sequence[bool], thresholds: Sequence[float]
) -> list[dict]:
    """For each threshold: the share of queries answered (confidence >= threshold) and the
    accuracy of those answers."""
    confidence = np.asarray(confidences, dtype=float)
    right = np.asarray(correct, dtype=bool)
    curve = []
    for threshold in thresholds:
        answered = confidence >= threshold
        count = int(answered.sum())
        curve.append(
            {
                "threshold": float(threshold),
                "answered": count / len(confidence) if len(confidence) else float("nan"),
                "accuracy": float(right[answered].mean()) if count else float("nan"),
            }
        )
    return curve

"""The hubness penalty: where the whitening ranks, a product whose prototype resembles every
photo (a hub) would rank first for photos of other products; each candidate's score loses
its prototype's mean similarity to its nearest scans, among scans thinned so that a product
scanned often is not penalised for it (docs/benchmarks.md, "Hubness")."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worker.settings import HubnessSettings


@dataclass(frozen=True)
class HubPenalty:
    """Thinned scans in a projection's space (unit rows, at least one): a prototype's mean
    similarity to its `neighbours` nearest ones, times `weight`, is its penalty."""

    scans: np.ndarray
    weight: float
    neighbours: int

    @classmethod
    def fit(cls, projected_scans: np.ndarray, settings: HubnessSettings) -> HubPenalty:
        return cls(
            thinned(projected_scans, settings.distinct), settings.weight, settings.neighbours
        )

    def of(self, prototypes: np.ndarray) -> np.ndarray:
        """What is taken off the scores of these prototypes (rows, in the projection's
        space)."""
        similarities = prototypes @ self.scans.T
        nearest = min(self.neighbours, similarities.shape[1])
        return self.weight * np.sort(similarities, axis=1)[:, -nearest:].mean(axis=1)


def thinned(rows: np.ndarray, distinct: float) -> np.ndarray:
    """Unit rows, taken in a fixed pseudo-random order, each kept only if its cosine to every
    row kept so far is at most `distinct`: dense clusters (many scans of a popular product)
    shrink to a few rows, while rare products keep theirs."""
    kept = np.empty_like(rows)
    count = 0
    for row in rows[np.random.default_rng(0).permutation(len(rows))]:
        if count == 0 or float((kept[:count] @ row).max()) <= distinct:
            kept[count] = row
            count += 1
    return kept[:count].copy()

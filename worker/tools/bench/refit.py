"""What a refit costs: `fit_snapshot` (every stage, the confidence's labels included) on
vectors of the shape a deployment holds: products with one catalog image and N confirmed
photos each, and unlabeled scans, in the default model's dimension. The vectors are random
(products as directions, photos spread around them): the cost does not depend on what they
show, only on their numbers and dimension."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from worker.index.base import ReferenceSet
from worker.matching.fitting import fit_snapshot
from worker.matching.matcher import policy_from_settings
from worker.settings import Settings
from worker.vectors import SOURCE_CATALOG, SOURCE_CONFIRMED_SCAN, VectorLayout, unit_rows


def _references(products: int, confirmed: int, dim: int, rng) -> ReferenceSet:
    centres = rng.normal(size=(products, dim))
    per_product = 1 + confirmed
    vectors = np.repeat(centres, per_product, axis=0) + rng.normal(
        size=(products * per_product, dim)
    )
    sources = ([SOURCE_CATALOG] + [SOURCE_CONFIRMED_SCAN] * confirmed) * products
    return ReferenceSet(
        unit_rows(vectors).astype(np.float32),
        np.repeat(np.array([f"p{n}" for n in range(products)], dtype=object), per_product),
        np.array(sources, dtype=object),
    )


def run_refit(
    settings: Settings,
    products: int,
    confirmed: Sequence[int],
    scans: int,
    dim: int,
    colour_dim: int,
    repeats: int = 3,
) -> list[dict]:
    """Seconds per refit (median of `repeats`) for each number of confirmed photos."""
    rng = np.random.default_rng(0)
    layout = VectorLayout(dim, settings.model.colour_weight if colour_dim else 0.0)
    policy = policy_from_settings(settings.matching)
    scan_vectors = unit_rows(rng.normal(size=(scans, dim + colour_dim))).astype(np.float32)
    rows = []
    for count in confirmed:
        refs = _references(products, count, dim + colour_dim, rng)
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            snapshot = fit_snapshot(refs, scan_vectors, layout, settings.learning, policy)
            seconds.append(time.perf_counter() - started)
        rows.append(
            {
                "products": products,
                "confirmed_per_product": count,
                "references": len(refs),
                "scans": scans,
                "dim": dim + colour_dim,
                "seconds_median": round(float(np.median(seconds)), 2),
                "seconds_max": round(max(seconds), 2),
                "stages": snapshot.stages,
            }
        )
    return rows

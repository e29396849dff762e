"""Whitening learned from unlabeled scans: before any confirmation, the directions along which
scans vary most (light, bag, hand, background) dominate the cosine; a mild PCA whitening of
the centred scans (the leading components, each scaled by its variance to the power
-power/2) evens them out. It needs hundreds of scans and no label, and re-ranks candidates
like the learned metric, which replaces it once confirmations teach better directions."""

from __future__ import annotations

import numpy as np

from worker.matching.stages.centring import DomainMeans
from worker.matching.stages.hubness import HubPenalty
from worker.matching.stages.space import RerankSpace
from worker.settings import HubnessSettings, WhiteningSettings

MARGIN_SAMPLE = 1000
"""Scans (and five times as many catalog images) sampled to compare margins across spaces."""


def fit_projection(centred_scans: np.ndarray, settings: WhiteningSettings) -> np.ndarray:
    """Projection (d × k) onto the scans' leading principal components, each divided by its
    standard deviation to the power `power` (0: plain PCA, 1: full whitening)."""
    deviations = centred_scans - centred_scans.mean(axis=0)
    covariance = deviations.T @ deviations / len(deviations)
    variances, components = np.linalg.eigh(covariance)
    order = np.argsort(variances)[::-1][: settings.dim]
    variances, components = variances[order], components[:, order]
    floor = settings.variance_floor * variances[0]
    return (components / (np.maximum(variances, 0) + floor) ** (settings.power / 2)).astype(
        np.float32
    )


def fit_whitening(
    centred_scans: np.ndarray,
    unlabeled: int,
    catalog: np.ndarray | None,
    image_means: DomainMeans,
    settings: WhiteningSettings,
    hubness: HubnessSettings,
) -> RerankSpace:
    """The whitening of the centred scans (image embeddings; the first `unlabeled` of them are
    unlabeled, the rest confirmed photos), with its hub penalty from the unlabeled ones only
    (confirmed photos would crowd their own products' pools), and its score scale measured on
    the centred catalog images (when at least two)."""
    space = RerankSpace("whitening", fit_projection(centred_scans, settings), image_means)
    hubs = None
    if hubness.weight and unlabeled:
        hubs = HubPenalty.fit(space.project(centred_scans[:unlabeled]), hubness)
        space = RerankSpace(space.name, space.projection, image_means, hubs=hubs)
    if catalog is not None and len(catalog) >= 2:
        scale = margin_ratio(centred_scans, catalog, space)
        space = RerankSpace(space.name, space.projection, image_means, scale, hubs)
    return space


def margin_ratio(centred_scans: np.ndarray, catalog: np.ndarray, space: RerankSpace) -> float:
    """Median margin (best minus second-best catalog image) of scans in the plain space over
    the same in the space, on evenly spaced samples of scans and catalog images."""

    def spaced(rows: np.ndarray, count: int) -> np.ndarray:
        return rows[np.linspace(0, len(rows) - 1, min(count, len(rows))).astype(int)]

    scans, catalog = spaced(centred_scans, MARGIN_SAMPLE), spaced(catalog, 5 * MARGIN_SAMPLE)

    def median_margin(scores: np.ndarray) -> float:
        best_two = np.sort(scores, axis=1)[:, -2:]
        return float(np.median(best_two[:, 1] - best_two[:, 0]))

    projected_catalog = space.project(catalog)
    projected = median_margin(
        space.project(scans) @ projected_catalog.T - space.hub_penalty(projected_catalog)
    )
    plain = median_margin(scans @ catalog.T)
    if projected <= 0 or plain <= 0:  # catalog images that are exact twins: nothing to measure
        return 1.0
    return plain / projected

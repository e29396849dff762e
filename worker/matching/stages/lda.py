"""A metric learned from confirmed matches (LDA): linear discriminant analysis on the
reference images grouped by product (catalog images and confirmed scans) finds the directions
that separate products and ignores those that vary within a product (light, bag, angle).
Candidates are re-ranked by their product prototype in that space. It is only switched on
when it ranks held-out confirmations better than the centred space, through the live ranking
(`worker.matching.fitting`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from worker.matching.stages.space import RerankSpace
from worker.settings import LdaSettings
from worker.vectors import SOURCE_CONFIRMED_SCAN

if TYPE_CHECKING:
    from worker.index.base import ReferenceSet
    from worker.matching.stages.centring import DomainMeans


def fit_lda(
    vectors: np.ndarray, labels: np.ndarray, max_dim: int, shrinkage: float
) -> np.ndarray | None:
    """Projection (d × k) maximising between-product over within-product scatter.

    The within-product scatter is shrunk toward a multiple of the identity, so that products
    with a single image, and dimensions no confirmation has varied, stay usable.
    """
    classes, inverse = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        return None
    dim = vectors.shape[1]
    counts = np.bincount(inverse).astype(np.float64)
    sums = np.zeros((len(classes), dim))
    np.add.at(sums, inverse, vectors)
    class_means = sums / counts[:, None]
    overall = vectors.mean(axis=0)
    within = vectors - class_means[inverse]
    between = (class_means - overall) * np.sqrt(counts)[:, None]
    # Both scatters live in the span of the centred vectors; outside it the within scatter is
    # the shrinkage's multiple of the identity and the between scatter zero, so no direction
    # there can be chosen: solving inside the span (rank ≤ references) gives the same
    # projection as the full d × d problem, in a fraction of the time.
    basis = _span(vectors - overall) if len(vectors) < dim else np.eye(dim)
    within, between = within @ basis, between @ basis
    scatter_within = within.T @ within / len(vectors)
    scatter_between = between.T @ between / len(vectors)
    rank = basis.shape[1]
    scatter_within = (1 - shrinkage) * scatter_within + shrinkage * np.trace(
        scatter_within
    ) / dim * np.eye(rank)
    scatter_within += 1e-9 * np.eye(rank)
    # generalised symmetric eigenproblem via whitening of the within scatter
    eigenvalues, eigenvectors = np.linalg.eigh(scatter_within)
    whiten = eigenvectors / np.sqrt(np.maximum(eigenvalues, 1e-12))
    values, vectors_b = np.linalg.eigh(whiten.T @ scatter_between @ whiten)
    order = np.argsort(values)[::-1][: min(max_dim, len(classes) - 1)]
    return (basis @ whiten @ vectors_b[:, order]).astype(np.float32)


def _span(centred: np.ndarray) -> np.ndarray:
    """An orthonormal basis (d × r) of the rows' span."""
    _, singular, rows = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    return rows[singular > singular.max() * 1e-10].T


def lda_space(
    image_refs: ReferenceSet, image_means: DomainMeans, settings: LdaSettings
) -> RerankSpace | None:
    """The learned space from these references (image embeddings), centred per domain; None
    when they do not teach one (a single product)."""
    projection = fit_lda(
        image_means.centre_references(image_refs),
        image_refs.product_ids,
        settings.max_dim,
        settings.shrinkage,
    )
    return RerankSpace("lda", projection, image_means) if projection is not None else None


def held_out(refs: ReferenceSet, settings: LdaSettings, draw_seed: int = 0) -> np.ndarray:
    """A deterministic share (at most `max_validation_queries`) of the confirmed scans, drawn
    by a hash of each one's product and image id: a confirmation stays held out (or not) as
    others arrive, whatever order the index keeps them in."""
    confirmed = np.flatnonzero(refs.sources == SOURCE_CONFIRMED_SCAN)
    hashes = refs.key_hashes(confirmed, draw_seed)
    share = hashes % 1000 < settings.validation_share * 1000
    # the cap takes the smallest hashes, not the first products by name
    kept = confirmed[share][np.argsort(hashes[share], kind="stable")]
    held = np.zeros(len(refs), dtype=bool)
    held[kept[: settings.max_validation_queries]] = True
    return held

"""What the system learns from its catalog, its scans and confirmed matches; the backbone stays
frozen and nothing here needs more than a few seconds of CPU.

Two pieces, both chosen on the accuracy benchmark (docs/benchmarks.md, "Matching quality"):

* **Domain centring.** Scans (hand-held photos of a jewel in a bag) and catalog images (clean
  studio shots) differ systematically. Subtracting each domain's mean vector before comparing
  removes much of that difference. The scan mean comes from unlabeled scans, so it needs no
  confirmation at all. It is applied to the query only: stored vectors never change.
* **Whitening learned from unlabeled scans.** Before any confirmation, the directions along which
  scans vary most (light, bag, hand, background) dominate the cosine; a mild PCA whitening of
  the centred scans (the leading components, each scaled by its variance to the power
  -power/2) evens them out. It needs hundreds of scans and no label, and re-ranks candidates
  like the metric below, which replaces it once confirmations teach better directions.
* **A learned metric (LDA) fitted on confirmed matches.** Linear discriminant analysis on the
  reference images grouped by product (catalog images and confirmed scans) finds the
  directions that separate products and ignores those that vary within a product (light,
  bag, angle). Candidates found in the plain space are re-ranked by their product prototype in
  the LDA space. It is only switched on when it beats the plain space on confirmed scans it
  was not fitted on.
"""

from __future__ import annotations

import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from worker.index import SOURCE_CATALOG, SOURCE_CONFIRMED_SCAN, ReferenceSet
from worker.vision.embedder import unit_rows


@dataclass(frozen=True)
class DomainMeans:
    catalog: np.ndarray | None = None
    scan: np.ndarray | None = None

    def for_source(self, source: str) -> np.ndarray | None:
        return self.catalog if source == SOURCE_CATALOG else self.scan

    def centre_query(self, vectors: np.ndarray) -> np.ndarray:
        return unit_rows(vectors - self.scan) if self.scan is not None else vectors

    def centre_references(self, refs: ReferenceSet) -> np.ndarray:
        centred = refs.vectors.copy()
        for source in (SOURCE_CATALOG, SOURCE_CONFIRMED_SCAN):
            mean = self.for_source(source)
            if mean is not None:
                centred[refs.sources == source] -= mean
        return unit_rows(centred)


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
    scatter_within = within.T @ within / len(vectors)
    between = (class_means - overall) * np.sqrt(counts)[:, None]
    scatter_between = between.T @ between / len(vectors)
    scatter_within = (1 - shrinkage) * scatter_within + shrinkage * np.trace(
        scatter_within
    ) / dim * np.eye(dim)
    scatter_within += 1e-9 * np.eye(dim)
    # generalised symmetric eigenproblem via whitening of the within scatter
    eigenvalues, eigenvectors = np.linalg.eigh(scatter_within)
    whiten = eigenvectors / np.sqrt(np.maximum(eigenvalues, 1e-12))
    values, vectors_b = np.linalg.eigh(whiten.T @ scatter_between @ whiten)
    order = np.argsort(values)[::-1][: min(max_dim, len(classes) - 1)]
    return (whiten @ vectors_b[:, order]).astype(np.float32)


def prototypes(projected: np.ndarray, product_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Each product's prototype: the unit mean of its unit projected reference vectors."""
    grouped: dict[str, list[int]] = defaultdict(list)
    for row, product_id in enumerate(product_ids):
        grouped[product_id].append(row)
    return {
        product_id: unit_rows(projected[rows].mean(axis=0)) for product_id, rows in grouped.items()
    }


def fit_whitening(centred_scans: np.ndarray, max_dim: int, power: float) -> np.ndarray:
    """Projection (d × k) onto the scans' leading principal components, each divided by its
    standard deviation to the power `power` (0: plain PCA, 1: full whitening).

    The variances are floored at a tenth of the largest, so that weak, noisy components are
    not blown up (chosen with `power` and `max_dim` on the accuracy benchmark's `train` split).
    """
    deviations = centred_scans - centred_scans.mean(axis=0)
    covariance = deviations.T @ deviations / len(deviations)
    variances, components = np.linalg.eigh(covariance)
    order = np.argsort(variances)[::-1][:max_dim]
    variances, components = variances[order], components[:, order]
    floor = 0.1 * variances[0]
    return (components / (np.maximum(variances, 0) + floor) ** (power / 2)).astype(np.float32)


@dataclass(frozen=True)
class HubPenalty:
    """Thinned scans in a projection's space (unit rows, at least one): a prototype's mean
    similarity to its `neighbours` nearest ones, times `weight`, is its penalty."""

    scans: np.ndarray
    weight: float
    neighbours: int


@dataclass
class LearnedMetric:
    """The fitted state a matcher applies to queries and candidates."""

    means: DomainMeans = field(default_factory=DomainMeans)
    """Of the vectors as stored (colour included): the search's centring and correction."""
    image_means: DomainMeans = field(default_factory=DomainMeans)
    """Of the image embedding alone (`image_part`): the re-ranking space's centring; the same
    as `means` without the colour term."""
    projection: np.ndarray | None = None
    score_scale: float = 1.0
    """Re-ranked scores are multiplied by this: 1 for LDA; for the whitening, the factor that
    brings its scores' margins back to the plain space's scale, so that `matched` answers about
    as often at the same margin (the whitened cosines spread wider)."""
    whitening: LearnedMetric | None = None
    """The scans' whitening alone (kept when LDA takes over): it ranks scans against catalog
    images only, as on day one (`LEARNING__NEW_PRODUCTS_FIRST`)."""
    hubs: HubPenalty | None = None
    """Where set, taken off re-ranked scores (`hub_penalty`)."""
    fitted_at: float = 0.0
    report: dict = field(default_factory=dict)

    @property
    def reranks(self) -> bool:
        return self.projection is not None

    def project(self, centred: np.ndarray) -> np.ndarray:
        assert self.projection is not None
        return unit_rows(centred @ self.projection)

    def hub_penalty(self, prototypes: np.ndarray) -> np.ndarray:
        """What is taken off the scores of these prototypes (rows, in the projection's space):
        a prototype near many different photos (a hub) would otherwise rank first for photos
        of other products (docs/benchmarks.md, "Hubness")."""
        if self.hubs is None:
            return np.zeros(len(prototypes), dtype=np.float32)
        similarities = prototypes @ self.hubs.scans.T
        nearest = min(self.hubs.neighbours, similarities.shape[1])
        return self.hubs.weight * np.sort(similarities, axis=1)[:, -nearest:].mean(axis=1)

    def prototype(self, refs: ReferenceSet) -> np.ndarray:
        """The LDA-space prototype of one product from its reference vectors."""
        return unit_rows(self.project(self.image_means.centre_references(refs)).mean(axis=0))


@dataclass(frozen=True)
class MetricOptions:
    max_dim: int = 128
    shrinkage: float = 0.3
    min_confirmations: int = 20
    min_scans_for_centring: int = 20
    validation_share: float = 0.2
    max_validation_queries: int = 2000
    whiten_dim: int = 0
    whiten_power: float = 0.25
    min_scans_for_whitening: int = 500
    hubness_weight: float = 0.0
    hubness_neighbours: int = 10
    hubness_distinct: float = 0.5
    view_dim: int | None = None
    """The vectors' leading dimensions that are the image embedding; the rest (the colour term)
    is left out of everything fitted here and scored apart (`Matcher`)."""


def image_part(vectors: np.ndarray, view_dim: int | None) -> np.ndarray:
    """The image embedding inside vectors (rows) that carry colour after `view_dim`: its
    dimensions at unit length, the colour's set to zero (the same shape, so that means and
    projections apply to either)."""
    if view_dim is None or view_dim >= vectors.shape[-1]:
        return vectors
    image_only = np.zeros_like(vectors)
    image_only[..., :view_dim] = unit_rows(vectors[..., :view_dim])
    return image_only


def image_references(refs: ReferenceSet, view_dim: int | None) -> ReferenceSet:
    """Reference vectors reduced to their image embedding (`image_part`)."""
    return ReferenceSet(image_part(refs.vectors, view_dim), refs.product_ids, refs.sources)


def _held_out(refs: ReferenceSet, share: float, limit: int) -> np.ndarray:
    """A deterministic share (at most `limit`) of the confirmed scans, held out to validate."""
    keys = np.array(
        [zlib.crc32(f"{p}/{i}".encode()) % 1000 for i, p in enumerate(refs.product_ids)]
    )
    held = (refs.sources == SOURCE_CONFIRMED_SCAN) & (keys < share * 1000)
    held[np.flatnonzero(held)[limit:]] = False
    return held


def _recall_at_1(
    queries: np.ndarray,
    truth: np.ndarray,
    refs: ReferenceSet,
    metric: LearnedMetric,
    rerank_candidates: int,
) -> float:
    """Recall@1 of `queries` (raw scan vectors) against `refs`, as `Matcher` would rank."""
    centred_queries = metric.means.centre_query(queries)
    product_list, columns = np.unique(refs.product_ids, return_inverse=True)
    scores = centred_queries @ refs.vectors.T
    for source in (SOURCE_CATALOG, SOURCE_CONFIRMED_SCAN):
        mean = metric.means.for_source(source)
        if mean is not None:  # the same per-source correction Matcher applies
            scores[:, refs.sources == source] -= (centred_queries @ mean)[:, None]
    best = np.full((len(queries), len(product_list)), -np.inf)
    for column in range(len(product_list)):
        best[:, column] = scores[:, columns == column].max(axis=1)
    if metric.reranks:
        centred_refs = metric.image_means.centre_references(refs)
        protos = prototypes(metric.project(centred_refs), refs.product_ids)
        proto_matrix = np.stack([protos[p] for p in product_list])
        projected = metric.project(centred_queries) @ proto_matrix.T
        candidates = np.argsort(-best, axis=1)[:, :rerank_candidates]
        reranked = np.full_like(best, -np.inf)
        rows = np.arange(len(queries))[:, None]
        reranked[rows, candidates] = projected[rows, candidates]
        best = reranked
    predicted = product_list[np.argmax(best, axis=1)]
    return float(np.mean(predicted == truth)) if len(truth) else float("nan")


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


def _margin_ratio(
    centred_scans: np.ndarray, catalog: np.ndarray, metric: LearnedMetric, sample: int = 1000
) -> float:
    """Median margin (best minus second-best catalog image) of scans in the plain space over
    the same in the metric's space, on evenly spaced samples of scans and catalog images."""

    def spaced(rows: np.ndarray, count: int) -> np.ndarray:
        return rows[np.linspace(0, len(rows) - 1, min(count, len(rows))).astype(int)]

    scans, catalog = spaced(centred_scans, sample), spaced(catalog, 5 * sample)

    def median_margin(scores: np.ndarray) -> float:
        best_two = np.sort(scores, axis=1)[:, -2:]
        return float(np.median(best_two[:, 1] - best_two[:, 0]))

    projected_catalog = metric.project(catalog)
    projected = median_margin(
        metric.project(scans) @ projected_catalog.T - metric.hub_penalty(projected_catalog)
    )
    plain = median_margin(scans @ catalog.T)
    if projected <= 0 or plain <= 0:  # catalog images that are exact twins: nothing to measure
        return 1.0
    return plain / projected


def _domain_means(
    refs: ReferenceSet, scan_vectors: np.ndarray, options: MetricOptions
) -> DomainMeans:
    """Each domain's mean: catalog images, and photos (unlabeled scans and confirmed ones)."""
    catalog_mask = refs.sources == SOURCE_CATALOG
    scans = np.concatenate([scan_vectors, refs.vectors[~catalog_mask]])
    return DomainMeans(
        catalog=refs.vectors[catalog_mask].mean(axis=0) if catalog_mask.any() else None,
        scan=scans.mean(axis=0) if len(scans) >= options.min_scans_for_centring else None,
    )


def fit_metric(
    refs: ReferenceSet, scan_vectors: np.ndarray, options: MetricOptions, rerank_candidates: int
) -> LearnedMetric:
    """Fit domain means, the scans' whitening if enough scans exist, then the LDA metric
    (instead of the whitening) if enough confirmations exist and it beats the plain space on
    held-out confirmations; all on the image embedding alone (`options.view_dim`): colour
    would otherwise enter through the catalog images, which carry it while most scans of a
    busy backdrop do not, and shift every scan's ranking."""
    catalog_mask = refs.sources == SOURCE_CATALOG
    means = _domain_means(refs, scan_vectors, options)
    image_means = means
    if options.view_dim is not None and options.view_dim < refs.vectors.shape[1]:
        refs = image_references(refs, options.view_dim)
        scan_vectors = image_part(scan_vectors, options.view_dim)
        image_means = _domain_means(refs, scan_vectors, options)
    scans = np.concatenate([scan_vectors, refs.vectors[~catalog_mask]])
    confirmations = int((~catalog_mask).sum())
    report = {
        "references": len(refs),
        "confirmations": confirmations,
        "scans_for_centring": len(scans),
        "centred": means.scan is not None,
        "whitened": False,
        "lda": False,
    }
    metric = LearnedMetric(
        means=means, image_means=image_means, fitted_at=time.time(), report=report
    )
    if (
        options.whiten_dim
        and image_means.scan is not None
        and len(scans) >= max(options.min_scans_for_whitening, 2)
    ):
        centred_scans = image_means.centre_query(scans)
        whitening = LearnedMetric(
            means=means,
            image_means=image_means,
            projection=fit_whitening(centred_scans, options.whiten_dim, options.whiten_power),
        )
        if options.hubness_weight and len(scan_vectors):
            # the unlabeled scans only (`scans` begins with them): confirmed photos would
            # crowd their own products' pools
            unlabeled = whitening.project(centred_scans[: len(scan_vectors)])
            whitening.hubs = HubPenalty(
                thinned(unlabeled, options.hubness_distinct),
                options.hubness_weight,
                options.hubness_neighbours,
            )
            report["hub_scans"] = len(whitening.hubs.scans)
        if catalog_mask.sum() >= 2:
            catalog = image_means.centre_references(refs.subset(catalog_mask))
            whitening.score_scale = _margin_ratio(centred_scans, catalog, whitening)
        metric.projection, metric.score_scale = whitening.projection, whitening.score_scale
        metric.hubs = whitening.hubs
        metric.whitening = whitening
        report.update(
            whitened=True,
            whitened_score_scale=round(metric.score_scale, 3),
            reranked_by="whitening",
        )
    if confirmations < options.min_confirmations:
        report["lda_skipped"] = f"fewer than {options.min_confirmations} confirmations"
        return metric
    held_out = _held_out(refs, options.validation_share, options.max_validation_queries)
    fit_part, check_part = refs.subset(~held_out), refs.subset(held_out)
    projection = fit_lda(
        image_means.centre_references(fit_part),
        fit_part.product_ids,
        options.max_dim,
        options.shrinkage,
    )
    if projection is None or not len(check_part):
        report["lda_skipped"] = "nothing to validate on"
        return metric
    # validated in the image embedding's space, where it re-ranks
    trial = LearnedMetric(means=image_means, image_means=image_means, projection=projection)
    # judged against the centred space alone: with few confirmations, the held-out photos are
    # too few to judge against the whitening, which LDA then beats on the benchmark anyway
    before = _recall_at_1(
        check_part.vectors,
        check_part.product_ids,
        fit_part,
        LearnedMetric(means=image_means, image_means=image_means),
        rerank_candidates,
    )
    learned = _recall_at_1(
        check_part.vectors, check_part.product_ids, fit_part, trial, rerank_candidates
    )
    report.update(
        validation_queries=len(check_part),
        validation_recall_plain=before,
        validation_recall_lda=learned,
    )
    if learned < before:
        report["lda_skipped"] = "did not beat the plain space on held-out confirmations"
        return metric
    projection = fit_lda(
        image_means.centre_references(refs), refs.product_ids, options.max_dim, options.shrinkage
    )
    if projection is not None:
        metric.projection, metric.score_scale = projection, 1.0
        metric.hubs = None  # (measured for the whitening only)
        report.update(lda=True, lda_dim=int(projection.shape[1]), reranked_by="lda")
    return metric

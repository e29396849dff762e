"""Fitting the stages from what the index holds: the catalog's and the scans' domain means,
the scans' whitening (with its hub penalty) once enough scans exist, and the metric learned
from confirmed matches once enough exist and it ranks held-out confirmations better than the
centred space, judged through `ranking.rank` itself. The backbone stays frozen; a fit takes
seconds of CPU. Everything learned is fitted on the image embedding alone: colour would
otherwise enter through the catalog images, which carry it while most scans of a busy
backdrop do not, and it is scored apart (`stages/colour.py`)."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from worker.index.base import ReferenceSet
from worker.index.memory import InMemoryIndex
from worker.matching.labels import confirmation_outcomes, labelled_rows
from worker.matching.ranking import MatchPolicy, Prototypes, Snapshot, rank
from worker.matching.stages.centring import Centring, image_references
from worker.matching.stages.confidence import Outcomes, fit_confidence
from worker.matching.stages.detail import DetailStage
from worker.matching.stages.lda import LdaSettings, held_out, lda_space
from worker.matching.stages.new_products import NewProductsFirst
from worker.matching.stages.space import RerankSpace
from worker.matching.stages.whitening import fit_whitening
from worker.settings import LearningSettings
from worker.vectors import SOURCE_CATALOG, SOURCE_CONFIRMED_SCAN, VectorLayout


def fit_snapshot(
    refs: ReferenceSet,
    scan_vectors: np.ndarray,
    layout: VectorLayout,
    learning: LearningSettings,
    policy: MatchPolicy,
    trained_on: frozenset[str] = frozenset(),
) -> Snapshot:
    """A new snapshot of every stage from the references and remembered scans (`trained_on`:
    the URIs of the confirmed photos the image towers trained on, never labels)."""
    image_refs = image_references(refs, layout)
    image_scans = layout.image_part(scan_vectors)
    centring = Centring.fit(refs, scan_vectors, image_refs, image_scans, learning.centring)
    catalog_mask = refs.sources == SOURCE_CATALOG
    scans = np.concatenate([image_scans, image_refs.vectors[~catalog_mask]])
    confirmations = int((~catalog_mask).sum())
    report: dict = {
        "references": len(refs),
        "confirmations": confirmations,
        "scans_for_centring": len(scans),
        "centred": centring.means.scan is not None,
        "whitened": False,
        "lda": False,
    }
    whitening = _whitening(centring, image_refs, scans, len(image_scans), learning, report)
    lda = _lda(centring, image_refs, confirmations, learning, report)
    new_products = learning.new_products_first
    snapshot = Snapshot(
        layout=layout,
        centring=centring,
        space=lda or whitening,
        whitening=whitening,
        new_products=NewProductsFirst(
            new_products.enabled,
            new_products.photo_match_stands,
            frozenset(refs.product_ids[refs.sources == SOURCE_CONFIRMED_SCAN]),
            new_products.doubt_within if new_products.doubt else None,
            new_products.doubt_among,
        ),
        policy=policy,
        rerank_candidates=learning.rerank_candidates,
        detail=DetailStage.from_settings(learning.detail),
        fitted_at=time.time(),
        report=report,
    )
    return _with_confidence(snapshot, refs, learning, trained_on)


def _with_confidence(
    snapshot: Snapshot, refs: ReferenceSet, learning: LearningSettings, trained_on: frozenset[str]
) -> Snapshot:
    """The snapshot with its confidence stage learned from its confirmations, once enough."""
    settings = learning.confidence.for_towers(bool(trained_on))
    outcomes = Outcomes.none()
    labelled = labelled_rows(refs, trained_on)
    confirmations = len(labelled)
    if trained_on:
        snapshot.report["confirmations_trained_on"] = (
            snapshot.report["confirmations"] - confirmations
        )
    if settings.enabled and confirmations >= min(settings.min_labels, settings.min_refusal_labels):
        outcomes = confirmation_outcomes(refs, labelled, snapshot, learning)
    policy = snapshot.policy
    confidence = fit_confidence(
        outcomes, settings, policy.target_precision, policy.prior(), learning.draw_seed
    )
    labels = confidence.report.get("labels") or confirmations
    snapshot.report["confidence"] = {
        **confidence.report,
        "labels": labels,
        "unknown_refusal": settings.unknown_refusal,
    }
    return replace(snapshot, confidence=confidence)


def _whitening(
    centring: Centring,
    image_refs: ReferenceSet,
    scans: np.ndarray,
    unlabeled: int,
    learning: LearningSettings,
    report: dict,
) -> RerankSpace | None:
    """The scans' whitening, once `whitening.min_scans` scans (unlabeled first, then
    confirmed photos) can be centred."""
    settings = learning.whitening
    image_means = centring.image_means
    if not settings.dim or image_means.scan is None or len(scans) < max(settings.min_scans, 2):
        return None
    catalog_mask = image_refs.sources == SOURCE_CATALOG
    catalog = None
    if catalog_mask.sum() >= 2:
        catalog = image_means.centre_references(image_refs.subset(catalog_mask))
    space = fit_whitening(
        image_means.centre_query(scans), unlabeled, catalog, image_means, settings, learning.hubness
    )
    if space.hubs is not None:
        report["hub_scans"] = len(space.hubs.scans)
    report.update(
        whitened=True, whitened_score_scale=round(space.score_scale, 3), reranked_by="whitening"
    )
    return space


def _lda(
    centring: Centring,
    image_refs: ReferenceSet,
    confirmations: int,
    learning: LearningSettings,
    report: dict,
) -> RerankSpace | None:
    """The metric learned from confirmations, when it ranks held-out ones better."""
    settings: LdaSettings = learning.lda
    needed = settings.min_confirmations if settings.enabled else None
    if needed is None or confirmations < needed:
        report["lda_skipped"] = f"fewer than {settings.min_confirmations} confirmations"
        return None
    image_means = centring.image_means
    held = held_out(image_refs, settings, learning.draw_seed)
    fit_part, check_part = image_refs.subset(~held), image_refs.subset(held)
    candidate = lda_space(fit_part, image_means, settings)
    if candidate is None or not len(check_part):
        report["lda_skipped"] = "nothing to validate on"
        return None
    before = recall_at_1(check_part, fit_part, centring, None, learning)
    learned = recall_at_1(check_part, fit_part, centring, candidate, learning)
    report.update(
        validation_queries=len(check_part),
        validation_recall_plain=before,
        validation_recall_lda=learned,
    )
    if learned < before:
        report["lda_skipped"] = "did not beat the plain space on held-out confirmations"
        return None
    space = lda_space(image_refs, image_means, settings)
    if space is None:
        return None
    report.update(lda=True, lda_dim=int(space.projection.shape[1]), reranked_by="lda")
    return space


def recall_at_1(
    queries: ReferenceSet,
    refs: ReferenceSet,
    centring: Centring,
    space: RerankSpace | None,
    learning: LearningSettings,
) -> float:
    """Recall@1 of held-out confirmed photos (image embeddings) against `refs`, ranked by
    `rank` itself: centred (on the image embedding's means) and re-ranked in `space` when
    given; no colour, no other stage."""
    if not len(queries):
        return float("nan")
    image_centring = Centring(centring.enabled, centring.image_means, centring.image_means)
    layout = VectorLayout(refs.vectors.shape[1])
    snapshot = Snapshot(
        layout=layout,
        centring=image_centring,
        space=space,
        rerank_candidates=learning.rerank_candidates,
    )
    index = InMemoryIndex.of_references(refs)
    rankings = rank(
        snapshot, index, Prototypes(index, layout, ttl=float("inf")), queries.vectors, 1
    )
    predicted = np.array([r.hits[0].product_id if r.hits else None for r in rankings], dtype=object)
    return float(np.mean(predicted == queries.product_ids))

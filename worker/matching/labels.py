"""Every confirmation as a labelled outcome, for the confidence stage: each confirmed photo
ranked as if it arrived now, by the snapshot being fitted, against the references of the
other folds (and, where the snapshot ranks in the learned metric, a metric fitted on them:
cross-fitting, so that no photo is ranked by what it taught), once with its product's other
confirmed photos and once without them (`confirmation_outcomes`). Its ranking read once more
without its own product is the outcome of a jewel outside the catalog.

A photo the image towers trained on (`jewelmatch train`) is no label: the towers drew it to its
product, so it looks easier than any new scan, and a confidence learned from it answers too
boldly. Those photos still serve as references; the labels come from the confirmations the
model in use never trained on (the share `train` held out, and every confirmation since)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np

from worker.index.base import ReferenceSet, draw_hash
from worker.index.memory import InMemoryIndex
from worker.matching.ranking import Prototypes, Snapshot, rank
from worker.matching.stages.centring import image_references
from worker.matching.stages.confidence import Outcomes, evidence
from worker.matching.stages.lda import lda_space
from worker.settings import LearningSettings
from worker.vectors import SOURCE_CONFIRMED_SCAN

_CANDIDATES = 3  # the first, the second and, once the product is taken out, a third


def labelled_rows(refs: ReferenceSet, trained_on: frozenset[str]) -> np.ndarray:
    """The rows of confirmed photos that can be labels: those the towers never trained on."""
    confirmed = refs.sources == SOURCE_CONFIRMED_SCAN
    if trained_on and refs.uris is not None:
        confirmed &= np.array([uri not in trained_on for uri in refs.uris], dtype=bool)
    return np.flatnonzero(confirmed)


def confirmation_outcomes(
    refs: ReferenceSet, labelled: np.ndarray, snapshot: Snapshot, learning: LearningSettings
) -> Outcomes:
    """Labelled outcomes of (at most `confidence.max_labels`) of the `labelled` rows (the
    confirmed photos the towers never trained on: `labelled_rows`), each ranked twice: in folds
    of confirmations (its product keeps its other confirmed photos) and in folds of products
    (every confirmed photo of its product held out with it). Photos confirmed together are
    often near-copies of one another (a delivery of one jewel scanned in one go), so the first
    ranking is easier than a scan taken another day, and a threshold learned from it alone
    answers too boldly; the second is as hard as the product's first scan. Both outcomes of a
    confirmation share its key."""
    settings = learning.confidence
    hashes = refs.key_hashes(labelled, learning.draw_seed)
    # at most `max_labels`, drawn by their keys' hashes: the same draw whatever the order
    # of the rows, and not the first products by name
    chosen = np.argsort(hashes, kind="stable")[: settings.max_labels]
    confirmed = labelled[chosen]
    keys = np.array([refs.key(row) for row in confirmed], dtype=object)
    per_product = Counter(refs.product_ids[labelled])  # all of them, not only those drawn
    counts = np.array([per_product[refs.product_ids[row]] for row in confirmed], dtype=float)
    by_confirmation = hashes[chosen] % settings.folds
    by_product = np.array(
        [
            draw_hash(str(refs.product_ids[i]), learning.draw_seed) % settings.folds
            for i in confirmed
        ]
    )
    return Outcomes.joined(
        [
            _fold_outcomes(refs, confirmed, keys, counts, fold_of, alone, snapshot, learning)
            for fold_of, alone in ((by_confirmation, False), (by_product, True))
        ]
    )


def _fold_outcomes(
    refs: ReferenceSet,
    confirmed: np.ndarray,
    keys: np.ndarray,
    counts: np.ndarray,
    fold_of: np.ndarray,
    alone: bool,
    snapshot: Snapshot,
    learning: LearningSettings,
) -> Outcomes:
    """The outcomes of the `confirmed` rows (their products' `counts` of confirmations), each
    fold ranked without its rows (`fold_of`; `alone`: folds of products)."""
    rows: list[np.ndarray] = []
    right: list[bool] = []
    known: list[bool] = []
    kept: list[str] = []
    product_confirmations: list[float] = []
    for fold in range(learning.confidence.folds):
        in_fold = fold_of == fold
        held = confirmed[in_fold]
        if not len(held):
            continue
        kept_rows = np.ones(len(refs), dtype=bool)
        kept_rows[held] = False
        training = refs.subset(kept_rows)
        fold_snapshot = _fold_snapshot(training, snapshot, learning)
        index = InMemoryIndex.of_references(training)
        prototypes = Prototypes(index, snapshot.layout, ttl=float("inf"))
        rankings = rank(fold_snapshot, index, prototypes, refs.vectors[held], _CANDIDATES)
        for row, key, count, ranking in zip(
            held, keys[in_fold], counts[in_fold], rankings, strict=True
        ):
            truth = refs.product_ids[row]
            hits = ranking.hits
            others = [hit.score for hit in hits if hit.product_id != truth]
            rows += [evidence([hit.score for hit in hits]), evidence(others)]
            right += [bool(hits) and hits[0].product_id == truth, False]
            known += [True, False]
            kept += [key, key]
            product_confirmations += [count, count]
    if not rows:
        return Outcomes.none()
    return Outcomes(
        np.array(rows),
        np.array(right),
        np.array(known),
        np.array(kept, dtype=object),
        np.array(product_confirmations),
        np.full(len(rows), alone),
    )


def _fold_snapshot(
    training: ReferenceSet, snapshot: Snapshot, learning: LearningSettings
) -> Snapshot:
    """The snapshot as it would rank without the held-out fold: its learned metric refitted on
    the rest, its new products those with confirmed photos in the rest."""
    space = snapshot.space
    if space is not None and space.name == "lda":
        image_refs = image_references(training, snapshot.layout)
        space = lda_space(image_refs, snapshot.centring.image_means, learning.lda)
        space = space or snapshot.whitening
    with_photos = frozenset(training.product_ids[training.sources == SOURCE_CONFIRMED_SCAN])
    return replace(
        snapshot,
        space=space,
        new_products=replace(snapshot.new_products, with_photos=with_photos),
        confidence=None,
    )

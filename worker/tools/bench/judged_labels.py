"""The judged photos as labels: each version decided as it would be on the day it is promoted.

`jewelmatch train` judges two versions on the latest confirmations, which neither trained on.
Once a version is in service, those photos are confirmations like any other and its confidence
learns from them (`worker/matching/labels.py`). A candidate whose towers trained on most
confirmations has few labels at judging time (the share held out for it), but those and the
judged photos on its first day in service. So each judged photo is decided again by a
confidence that also learned from the other judged photos, in folds (cross-fitting: no photo is
decided by a confidence that learned from it); the photos of products judged brand-new or
outside the catalog (scans no one has confirmed yet, or ever will) are decided by one that
learned from all of them. Both versions are judged this way; the ranking is untouched, only
the decision."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from shared.contract import MatchStatus
from worker.index.base import ReferenceSet, draw_hash
from worker.matching.labels import confirmation_outcomes, labelled_rows
from worker.matching.learner import Learner
from worker.matching.ranking import Ranking
from worker.matching.stages.confidence import Confidence, Outcomes, fit_confidence
from worker.settings import ConfidenceSettings
from worker.vectors import SOURCE_CONFIRMED_SCAN


def decided_with_judged_labels(
    learner: Learner,
    photos: Sequence[tuple[str, str]],
    vectors: np.ndarray,
    rankings: Sequence[Ranking],
    labels: np.ndarray,
) -> tuple[list[Ranking], dict]:
    """`rankings` of `photos` (`(product id, key)`, one per row of `vectors`) decided again,
    the photos marked in `labels` (confirmations, in production) teaching the confidence that
    decides the others; with a report of the confidences."""
    settings = learner.learning.confidence
    refs = learner.index.references()
    judged = np.flatnonzero(labels)
    as_refs = ReferenceSet(
        vectors[judged].astype(np.float32),
        np.array([photos[i][0] for i in judged], dtype=object),
        np.full(len(judged), SOURCE_CONFIRMED_SCAN, dtype=object),
        np.array([f"judged:{photos[i][1]}" for i in judged], dtype=object),
        np.array([f"judged-{photos[i][1]}" for i in judged], dtype=object),
    )
    both = ReferenceSet.joined([refs, as_refs])
    rows = np.r_[len(refs) + np.arange(len(judged)), labelled_rows(refs, learner.trained_on)]
    outcomes = confirmation_outcomes(both, rows, learner.snapshot, learner.learning)
    seed = learner.learning.draw_seed
    photo_fold = [draw_hash(key, seed) % settings.folds for _, key in photos]
    # the judged photos' rows follow refs' in `both`
    fold_of_key = {both.key(len(refs) + n): photo_fold[i] for n, i in enumerate(judged)}
    fold = np.array([fold_of_key.get(str(key), -1) for key in outcomes.keys])
    deciding = settings.for_towers(bool(learner.trained_on))  # as the version in service
    without = [_fit(learner, deciding, outcomes.subset(fold != f)) for f in range(settings.folds)]
    with_all = _fit(learner, deciding, outcomes)
    decided = [
        _decided(ranking, without[f] if label else with_all)
        for ranking, label, f in zip(rankings, labels, photo_fold, strict=True)
    ]
    report = {
        "judged_labels": len(judged),
        "folds": settings.folds,
        "labels_per_fold": [c.report.get("labels") for c in without],
        "origins": sorted({c.origin for c in without}),
        "min_margins": sorted({round(c.min_margin, 4) for c in without}),
        "labels_for_the_others": with_all.report.get("labels"),
        "origin_for_the_others": with_all.origin,
        "unknown_refusal": deciding.unknown_refusal,
    }
    return decided, report


def _decided(ranking: Ranking, confidence: Confidence) -> Ranking:
    status, probability = confidence.assess(ranking.evidence)
    if ranking.doubted:  # a new look-alike: refused whatever the confidence
        status = MatchStatus.no_confident_match
    return replace(
        ranking, status=status, confidence=probability, confidence_origin=confidence.origin
    )


def _fit(learner: Learner, settings: ConfidenceSettings, outcomes: Outcomes) -> Confidence:
    policy = learner.snapshot.policy
    return fit_confidence(
        outcomes, settings, policy.target_precision, policy.prior(), learner.learning.draw_seed
    )

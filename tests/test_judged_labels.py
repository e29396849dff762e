"""`jewelmatch train`'s gate decides the judged photos as a version would on its first day in
service, when those photos are its confirmations: each by a confidence that also learned from
the other judged photos, never from itself."""

import zlib
from dataclasses import replace

import numpy as np

from shared.contract import MatchStatus
from tests.test_confidence import DIM, PRODUCTS, _shop
from worker.index.base import ReferenceImage
from worker.index.memory import InMemoryIndex
from worker.matching.fitting import fit_snapshot
from worker.matching.learner import Learner
from worker.matching.ranking import MatchPolicy, Prototypes, rank
from worker.settings import LearningSettings
from worker.tools.bench.judged_labels import decided_with_judged_labels
from worker.vectors import SOURCE_CONFIRMED_SCAN, VectorLayout

MATCHED = MatchStatus.matched


def _trained_learner():
    """A shop whose towers trained on all its confirmed photos but one per product: too few
    labels to learn a confidence, so the prior decides (its margin raised by them)."""
    refs, photo = _shop()
    layout, learning = VectorLayout(DIM), LearningSettings()
    index = InMemoryIndex("memory", DIM)
    index.upsert(
        [
            ReferenceImage(str(p), f"ref-{row}", str(p), vector, str(source), uri=str(uri))
            for row, (p, source, vector, uri) in enumerate(
                zip(refs.product_ids, refs.sources, refs.vectors, refs.uris, strict=True)
            )
        ]
    )
    trained_on = frozenset(
        uri
        for uri in refs.uris[refs.sources == SOURCE_CONFIRMED_SCAN]
        if not uri.endswith("-0.jpg")
    )
    policy = MatchPolicy(min_margin=0.5, target_precision=0.95)
    learner = Learner(index, layout, learning, policy, trained_on)
    scans = np.array([photo(p % PRODUCTS) for p in range(200)])
    learner.snapshot = fit_snapshot(refs, scans, layout, learning, policy, trained_on)
    return learner, index, photo


def test_judged_photos_are_decided_by_a_confidence_that_learned_from_the_others_not_itself():
    learner, index, photo = _trained_learner()
    assert learner.snapshot.decision.origin == "prior"
    judged = [(f"p{p}", f"p{p}/val-{n}.jpg") for p in range(PRODUCTS) for n in range(3)]
    strangers = [(f"p{p}", f"p{p}/val-0.jpg") for p in range(PRODUCTS, PRODUCTS + 10)]
    photos = judged + strangers
    vectors = np.array(
        [photo(int(pid[1:])) for pid, _ in judged] + [photo(p) for p in range(PRODUCTS, 70)]
    )
    before = rank(learner.snapshot, index, Prototypes(index, learner.layout), vectors, 3)
    labels = np.array([True] * len(judged) + [False] * len(strangers))

    decided, report = decided_with_judged_labels(learner, photos, vectors, before, labels)

    folds = learner.learning.confidence.folds
    fold = [zlib.crc32(key.encode()) % folds for _, key in judged]
    at_judging = PRODUCTS  # the one confirmed photo per product the towers never trained on
    # each fold's confidence learned from every judged photo but its own fold's
    assert report["labels_per_fold"] == [
        at_judging + len(judged) - fold.count(f) for f in range(folds)
    ]
    assert report["labels_for_the_others"] == at_judging + len(judged)
    # towers trained here refuse unknown jewels as the version in service will
    assert report["unknown_refusal"] == learner.learning.confidence.trained_unknown_refusal
    assert report["unknown_refusal"] != learner.learning.confidence.unknown_refusal
    assert report["origins"] != ["prior"]
    # the ranking is untouched: only the decision is taken again, on the same evidence
    assert [r.hits for r in decided] == [r.hits for r in before]
    assert all(r.confidence_origin != "prior" for r in decided)
    known = zip(decided[: len(judged)], judged, strict=True)
    answered = [r.hits[0].product_id == pid for r, (pid, _) in known if r.status is MATCHED]
    answered_before = [r for r in before[: len(judged)] if r.status is MATCHED]
    assert len(answered) > len(answered_before)
    assert np.mean(answered) >= 0.9  # right
    assert sum(r.status is MATCHED for r in decided[len(judged) :]) <= 2


def test_a_doubted_answer_stays_refused_whatever_the_confidence_says():
    """A ranking refused because a new look-alike is as close on catalog images keeps that
    refusal when the gate decides it again (its evidence alone would answer it)."""
    learner, index, photo = _trained_learner()
    judged = [(f"p{p}", f"p{p}/val-{n}.jpg") for p in range(PRODUCTS) for n in range(3)]
    vectors = np.array([photo(int(pid[1:])) for pid, _ in judged])
    before = rank(learner.snapshot, index, Prototypes(index, learner.layout), vectors, 3)
    labels = np.ones(len(judged), dtype=bool)
    decided, _ = decided_with_judged_labels(learner, judged, vectors, before, labels)
    answered = [n for n, r in enumerate(decided) if r.status is MATCHED]
    assert answered
    doubted = [
        replace(r, status=MatchStatus.no_confident_match, doubted=n in answered)
        for n, r in enumerate(before)
    ]
    decided_again, _ = decided_with_judged_labels(learner, judged, vectors, doubted, labels)
    assert not any(r.status is MATCHED for n, r in enumerate(decided_again) if n in answered)


def test_twin_photos_in_two_folds_are_decided_by_two_different_confidences():
    """The same picture judged twice, its copies in different folds: each copy is decided by
    the confidence that did not learn from its own fold, so the two probabilities differ (one
    confidence learned from every judged photo, itself included, would give both the same)."""
    learner, index, photo = _trained_learner()
    folds = learner.learning.confidence.folds
    judged = [(f"p{p}", f"p{p}/val-{n}.jpg") for p in range(PRODUCTS) for n in range(3)]
    taken = {zlib.crc32(key.encode()) % folds for _, key in judged[:1]}
    twin = next(
        key
        for key in (f"p0/twin-{n}.jpg" for n in range(100))
        if zlib.crc32(key.encode()) % folds not in taken
    )
    photos = [judged[0], *judged[1:], ("p0", twin)]
    vectors = np.array([photo(int(pid[1:])) for pid, _ in judged] + [photo(0)])
    vectors[-1] = vectors[0]  # the very same picture
    before = rank(learner.snapshot, index, Prototypes(index, learner.layout), vectors, 3)
    labels = np.ones(len(photos), dtype=bool)
    decided, _ = decided_with_judged_labels(learner, photos, vectors, before, labels)
    assert decided[0].hits == decided[-1].hits  # the same evidence
    assert decided[0].confidence != decided[-1].confidence

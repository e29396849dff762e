"""The confidence stage: a logistic model of the ranking's evidence fitted on labelled
outcomes, and a threshold that keeps the target precision on held-out ones."""

from dataclasses import replace

import numpy as np
import pytest

from shared.contract import MatchStatus
from worker.index.base import draw_hash
from worker.matching.stages.confidence import (
    Confidence,
    Outcomes,
    conformal_threshold,
    evidence,
    expected_calibration_error,
    fit_confidence,
    fit_logistic,
    refusal_threshold,
)
from worker.settings import ConfidenceSettings, LearningSettings

TRUE_WEIGHTS = np.array([2.0, 30.0, -4.0])  # score, margin, intercept


def outcomes(n: int, seed: int, unknown: bool = True) -> Outcomes:
    """Rankings whose first product is right with the probability of a known logistic model,
    and (when `unknown`) as many of jewels outside the catalog, whose margins are small."""
    rng = np.random.default_rng(seed)
    score, margin = rng.uniform(0.2, 0.9, n), rng.exponential(0.08, n)
    evidence = np.column_stack([score, margin])
    right = rng.random(n) < 1 / (1 + np.exp(-(evidence @ TRUE_WEIGHTS[:2] + TRUE_WEIGHTS[2])))
    known = np.ones(n, dtype=bool)
    if unknown:
        strays = np.column_stack([rng.uniform(0.2, 0.8, n), rng.exponential(0.03, n)])
        evidence = np.vstack([evidence, strays])
        right = np.r_[right, np.zeros(n, dtype=bool)]
        known = np.r_[known, np.zeros(n, dtype=bool)]
    keys = np.array([f"k{seed}-{i}" for i in range(len(right))], dtype=object)
    return Outcomes(evidence, right, known, keys, np.ones(len(right)), np.zeros(len(right), bool))


def test_the_logistic_fit_recovers_the_model_that_made_the_labels():
    data = outcomes(20000, seed=1, unknown=False)
    weights = fit_logistic(data.evidence, data.right.astype(float), np.ones(len(data)))
    # 20 000 draws: each weight within a few standard errors of the truth
    assert weights == pytest.approx(TRUE_WEIGHTS, rel=0.15)


def test_without_evidence_the_fit_says_how_often_answers_were_right():
    # the intercept is not shrunk toward a half: 18 of 20 right is a probability of 0.9
    right = np.r_[np.ones(18), np.zeros(2)]
    weights = fit_logistic(np.zeros((20, 2)), right, np.ones(20))
    assert Confidence(weights, 0.0).of(np.zeros(2))[0] == pytest.approx(0.9, abs=1e-3)


def test_the_threshold_keeps_the_target_on_the_labels_it_was_chosen_on_with_a_margin():
    data = outcomes(3000, seed=2)
    confidence = fit_logistic(data.evidence, data.right.astype(float), data.weights(0.2))
    scores = Confidence(confidence, 0.0).of(data.evidence)
    threshold, precision, coverage = conformal_threshold(
        scores, data.right, data.weights(0.2), 0.95
    )
    answered = scores >= threshold
    weights = data.weights(0.2)[answered]
    wrong = (weights * ~data.right[answered]).sum()
    assert (wrong + 1) / (weights.sum() + 1) <= 0.05
    assert precision == pytest.approx(1 - wrong / weights.sum())
    assert 0 < coverage < 1


def test_the_threshold_holds_on_fresh_scans_of_the_same_kind():
    learned = fit_confidence(outcomes(3000, seed=3), ConfidenceSettings(), 0.95, prior())
    assert learned.origin == "labels"
    fresh = outcomes(20000, seed=4)
    answered = learned.of(fresh.evidence) >= learned.threshold
    # 20 000 fresh draws: sampling error well under 0.01
    assert fresh.right[answered & fresh.known].mean() >= 0.95 - 0.01
    assert (~answered[~fresh.known]).mean() >= ConfidenceSettings().unknown_refusal - 0.01
    assert learned.report["estimated_coverage"] > 0.05


def test_the_threshold_refuses_the_asked_share_of_unknown_jewels():
    rng = np.random.default_rng(9)
    unknown = rng.random(999)
    threshold = refusal_threshold(unknown, 0.9)
    assert (unknown < threshold).mean() >= 0.9
    assert (unknown < threshold).sum() == 900  # the conformal quantile, not one more
    assert refusal_threshold(unknown[:5], 0.9) == 1.0  # five cannot promise 90 %
    assert refusal_threshold(unknown, 0.0) == 0.0


def test_the_confidence_is_calibrated_where_the_model_fits():
    learned = fit_confidence(outcomes(4000, seed=5), ConfidenceSettings(), 0.95, prior())
    fresh = outcomes(20000, seed=6, unknown=False)
    error = expected_calibration_error(learned.of(fresh.evidence), fresh.right)
    # unknown outcomes weigh in the fit, so known ones are slightly under-confident
    assert error < 0.06


def test_until_enough_labels_the_prior_decides():
    settings = ConfidenceSettings(min_labels=500)
    fallback = fit_confidence(outcomes(400, seed=7), settings, 0.99, prior())
    assert fallback.origin == "prior"
    assert fallback.report["skipped"] == "fewer than 500"
    assert fallback.assess([0.8, 0.65])[0] is MatchStatus.matched


def test_the_first_labels_raise_the_priors_margin_until_it_refuses_unknown_jewels():
    # a lax prior (margin 0.01): the stray jewels' margins (exponential, mean 0.03) pass it
    lax = Confidence.prior(min_margin=0.01)
    settings = ConfidenceSettings(min_labels=500, min_refusal_labels=20)
    few = outcomes(60, seed=12)
    raised = fit_confidence(few, settings, 0.99, lax)
    assert raised.origin == "prior"
    assert raised.min_margin > lax.min_margin
    assert raised.min_margin == pytest.approx(raised.report["margin_for_unknown_refusal"], abs=1e-4)
    assert raised.report["prior_margin"] == lax.min_margin
    assert raised.report["estimated_unknown_refused"] >= 0.9
    # the conformal quantile of 60 holds on fresh strays, up to sampling (a 90 % quantile
    # of 60 draws covers at least 0.90 of fresh ones in expectation; 0.83 is 2 sd below)
    fresh = outcomes(20000, seed=13)
    assert _refused(raised, fresh) >= 0.83
    assert _refused(lax, fresh) < 0.4  # what the margin it replaces refuses
    # the margin is raised, not the confidence: a probability of the margin alone
    at_the_margin = [0.8, 0.8 - raised.min_margin]
    assert raised.assess(at_the_margin)[1] == pytest.approx(lax.assess(at_the_margin)[1])


def test_a_prior_that_already_refuses_enough_and_too_few_labels_leave_the_margin_as_it_is():
    settings = ConfidenceSettings(min_labels=500, min_refusal_labels=20)
    strict = fit_confidence(outcomes(60, seed=12), settings, 0.99, Confidence.prior(0.5))
    assert strict.min_margin == 0.5
    assert strict.report["margin_for_unknown_refusal"] < 0.5
    lax = Confidence.prior(min_margin=0.01)
    too_few = fit_confidence(outcomes(15, seed=12), settings, 0.99, lax)
    assert too_few.min_margin == 0.01 and "margin_for_unknown_refusal" not in too_few.report
    off = ConfidenceSettings(enabled=False, min_labels=500)
    assert fit_confidence(outcomes(60, seed=12), off, 0.99, lax).min_margin == 0.01


def _refused(confidence: Confidence, data: Outcomes) -> float:
    """Share of the unknown jewels' rankings (two products: score and margin) refused."""
    strays = data.evidence[~data.known]
    return float(
        np.mean(
            [
                confidence.assess([score, score - margin])[0] is MatchStatus.no_confident_match
                for score, margin in strays
            ]
        )
    )


def test_labels_that_cannot_promise_the_target_keep_the_margin_and_refuse_unknown_jewels():
    # every outcome a coin toss: no threshold keeps 99 %; the unknown ones can still be told
    data = outcomes(1000, seed=8)
    coin = replace(data, right=(np.arange(len(data)) % 2 == 0) & data.known)
    hybrid = fit_confidence(coin, ConfidenceSettings(), 0.99, prior())
    assert hybrid.origin == "labels+margin"
    assert hybrid.min_margin == prior().min_margin
    assert hybrid.report["threshold_for_precision"] == 1.0
    assert hybrid.report["estimated_unknown_refused"] >= 0.9
    # a ranking the labels let through is still refused below the prior's margin
    just_below = [0.9, 0.9 - 0.099]
    assert hybrid.assess(just_below)[1] >= hybrid.threshold
    assert hybrid.assess(just_below)[0] is MatchStatus.no_confident_match
    assert hybrid.assess([0.9, 0.7])[0] is MatchStatus.matched
    # the report's estimates are the decisions `assess` makes on the calibration labels
    checked = np.array([draw_hash(str(key), 0) % 3 != 0 for key in coin.keys])
    answered = np.array(
        [hybrid.assess([s, s - m])[0] is MatchStatus.matched for s, m in coin.evidence]
    )
    assert hybrid.report["estimated_coverage"] == pytest.approx(
        answered[checked & coin.known].mean(), abs=1e-4
    )
    assert hybrid.report["estimated_unknown_refused"] == pytest.approx(
        1 - answered[checked & ~coin.known].mean(), abs=1e-4
    )


def test_a_ranking_at_the_threshold_the_score_and_the_margin_asked_is_matched():
    # values exact in binary: a confidence of 0.5, a score of 0.75, a margin of 0.25
    at = Confidence(np.zeros(3), threshold=0.5, min_score=0.75, min_margin=0.25)
    assert at.assess([0.75, 0.5]) == (MatchStatus.matched, 0.5)
    assert at.assess([0.75, 0.5 + 1e-9])[0] is MatchStatus.no_confident_match
    assert replace(at, min_score=0.76).assess([0.75, 0.5])[0] is MatchStatus.no_confident_match
    assert replace(at, threshold=0.51).assess([0.75, 0.5])[0] is MatchStatus.no_confident_match


def test_an_empty_ranking_is_refused_and_a_lone_product_leads_by_its_score_above_minus_one():
    assert prior().assess([]) == (MatchStatus.no_confident_match, 0.0)
    assert evidence([]).tolist() == [-1.0, 0.0]  # below any ranking's evidence
    assert evidence([0.5]).tolist() == [0.5, 1.5]  # nothing else near: the widest lead
    assert evidence([0.5, 0.25, 0.0]).tolist() == [0.5, 0.25]


def test_learned_with_exactly_the_labels_asked_and_not_one_fewer():
    data = outcomes(3000, seed=3)
    assert data.labels() == 3000
    assert fit_confidence(data, ConfidenceSettings(min_labels=3000), 0.95, prior()).origin == (
        "labels"
    )
    assert fit_confidence(data, ConfidenceSettings(min_labels=3001), 0.95, prior()).origin == (
        "prior"
    )


def test_a_lax_precision_target_still_refuses_the_asked_share_of_unknown_jewels():
    learned = fit_confidence(outcomes(3000, seed=3), ConfidenceSettings(), 0.6, prior())
    report = learned.report
    assert report["threshold_for_unknown_refusal"] > report["threshold_for_precision"]
    assert learned.threshold == pytest.approx(report["threshold_for_unknown_refusal"], abs=1e-4)
    fresh = outcomes(20000, seed=4)
    refused = learned.of(fresh.evidence[~fresh.known]) < learned.threshold
    assert refused.mean() >= ConfidenceSettings().unknown_refusal - 0.01


def test_the_weights_give_unknown_jewels_their_share_and_labels_without_any_a_first_share():
    data = outcomes(1000, seed=8)
    weights = data.weights(0.2)
    assert weights[~data.known].sum() / weights.sum() == pytest.approx(0.2)
    assert weights[data.known].mean() == pytest.approx(1.0)
    assert Outcomes.none().first_share() == 1.0  # no label yet: every scan a product's first


def test_tied_confidences_are_answered_together():
    # a threshold answers every outcome at or above it: three at 0.9, one of them wrong, is
    # a bound of (1 + 1) / (3 + 1), which 60 % precision does not allow, though the first
    # two alone would
    ties = np.full(3, 0.9)
    threshold, _, _ = conformal_threshold(ties, np.array([1, 1, 0]), np.ones(3), 0.6)
    assert threshold == 1.0


def test_outcomes_that_weigh_nothing_leave_the_calibration_error_alone():
    confidence, right = np.array([0.95, 0.95, 0.15]), np.array([1, 1, 1])
    # the third outcome weighs nothing: its bin is left out, not divided by zero
    assert expected_calibration_error(confidence, right, np.array([1.0, 1.0, 0.0])) == (
        pytest.approx(0.05)
    )


def test_expected_calibration_error_is_zero_for_a_perfect_forecast_and_the_gap_otherwise():
    assert expected_calibration_error(np.array([1.0, 1.0, 0.0]), np.array([1, 1, 0])) == 0.0
    assert expected_calibration_error(np.full(4, 0.95), np.array([1, 0, 1, 0])) == pytest.approx(
        0.45
    )
    # a confidence of exactly 1 falls in the last bin, not outside every bin
    assert expected_calibration_error(np.ones(4), np.zeros(4)) == 1.0


def prior() -> Confidence:
    return Confidence.prior(min_margin=0.1)


# --- learned from confirmations, through the refit and the ranking ------------------------

PRODUCTS, PHOTOS, DIM = 60, 4, 48


def _shop(seed: int = 11):
    """Products as directions; catalog shots near them, photos noisier."""
    from worker.index.base import ReferenceSet
    from worker.vectors import SOURCE_CATALOG, SOURCE_CONFIRMED_SCAN, unit_rows

    rng = np.random.default_rng(seed)
    centres = unit_rows(rng.normal(size=(PRODUCTS + 10, DIM)))

    def photo(product: int, spread: float = 0.12) -> np.ndarray:
        return unit_rows(centres[product] + rng.normal(size=DIM) * spread).astype(np.float32)

    rows, ids, sources, uris = [], [], [], []
    for product in range(PRODUCTS):
        rows.append(photo(product, 0.05))
        ids.append(f"p{product}")
        sources.append(SOURCE_CATALOG)
        uris.append(f"s3://catalog/p{product}.jpg")
        for n in range(PHOTOS):
            rows.append(photo(product))
            ids.append(f"p{product}")
            sources.append(SOURCE_CONFIRMED_SCAN)
            uris.append(f"s3://scans/p{product}-{n}.jpg")
    refs = ReferenceSet(
        np.array(rows),
        np.array(ids, dtype=object),
        np.array(sources, dtype=object),
        np.array(uris, dtype=object),
    )
    return refs, photo


def _trained_on_all_but_first_photos(refs, products: int = PRODUCTS) -> frozenset[str]:
    """The confirmed photos towers trained on when each of the first `products` products kept
    its first photo (`-0`) out of training, as a label: `products` labels."""
    from worker.vectors import SOURCE_CONFIRMED_SCAN

    def kept_out(uri: str) -> bool:
        product, photo = uri.rsplit("/p", 1)[-1].removesuffix(".jpg").split("-")
        return photo == "0" and int(product) < products

    confirmed = refs.uris[refs.sources == SOURCE_CONFIRMED_SCAN]
    return frozenset(uri for uri in confirmed if not kept_out(uri))


def test_a_refit_learns_the_confidence_from_its_confirmations_and_ranks_with_it():
    from worker.index.memory import InMemoryIndex
    from worker.matching.fitting import fit_snapshot
    from worker.matching.ranking import MatchPolicy, Prototypes, rank
    from worker.settings import LearningSettings
    from worker.vectors import VectorLayout

    refs, photo = _shop()
    layout = VectorLayout(DIM)
    scans = np.array([photo(p % PRODUCTS) for p in range(200)])
    snapshot = fit_snapshot(
        refs, scans, layout, LearningSettings(), MatchPolicy(min_margin=0.5, target_precision=0.95)
    )
    assert snapshot.decision.origin == "labels"
    report = snapshot.report["confidence"]
    assert report["labels"] == PRODUCTS * PHOTOS
    assert report["estimated_precision"] >= 0.95 and report["estimated_coverage"] > 0.5
    assert snapshot.stages[-1] == "confidence:labels"

    index = InMemoryIndex.of_references(refs)
    prototypes = Prototypes(index, layout)
    known = rank(snapshot, index, prototypes, np.array([photo(p) for p in range(20)]), 3)
    strangers = rank(snapshot, index, prototypes, np.array([photo(p) for p in range(60, 70)]), 3)
    answered = [r for r in known if r.status is MatchStatus.matched]
    # the prior (a margin of 0.5) would answer none of these; the labels answer most, rightly
    assert len(answered) >= 10
    assert all(r.hits[0].product_id == f"p{n}" for n, r in enumerate(known) if r in answered)
    assert all(r.confidence_origin == "labels" and 0 <= r.confidence <= 1 for r in known)
    assert sum(r.status is MatchStatus.matched for r in strangers) <= 2


def test_photos_the_towers_trained_on_are_references_but_never_labels():
    """After `jewelmatch train`, the confirmations the towers learned look easier than any new
    scan: the confidence learns only from the others, and from the prior while too few."""
    from worker.matching.fitting import fit_snapshot
    from worker.matching.ranking import MatchPolicy
    from worker.settings import LearningSettings
    from worker.vectors import SOURCE_CONFIRMED_SCAN, VectorLayout

    refs, photo = _shop()
    scans = np.array([photo(p % PRODUCTS) for p in range(200)])
    confirmed = refs.uris[refs.sources == SOURCE_CONFIRMED_SCAN]
    policy = MatchPolicy(min_margin=0.5, target_precision=0.95)

    def fitted(trained_on) -> dict:
        snapshot = fit_snapshot(
            refs, scans, VectorLayout(DIM), LearningSettings(), policy, frozenset(trained_on)
        )
        return snapshot.report

    half = [uri for uri in confirmed if uri.endswith(("-0.jpg", "-1.jpg"))]
    report = fitted(half)
    assert report["confidence"]["labels"] == PRODUCTS * PHOTOS - len(half)
    assert report["confirmations_trained_on"] == len(half)
    assert report["references"] == len(refs)  # they still rank as references
    everything = fitted(confirmed)
    assert everything["confidence"]["origin"] == "prior"
    assert everything["confirmations_trained_on"] == PRODUCTS * PHOTOS
    assert "margin_for_unknown_refusal" not in everything["confidence"]


def test_a_few_labels_after_training_make_a_lax_prior_refuse_unknown_jewels():
    """Right after `jewelmatch train` the labels are few (the share it held out): too few to
    learn a confidence, enough to raise the prior's margin until unknown jewels are refused."""
    from worker.index.memory import InMemoryIndex
    from worker.matching.fitting import fit_snapshot
    from worker.matching.ranking import MatchPolicy, Prototypes, rank
    from worker.settings import LearningSettings
    from worker.vectors import VectorLayout

    refs, photo = _shop()
    layout = VectorLayout(DIM)
    scans = np.array([photo(p % PRODUCTS) for p in range(200)])
    trained_on = _trained_on_all_but_first_photos(refs)
    lax = MatchPolicy(min_margin=0.0, target_precision=0.99)
    snapshot = fit_snapshot(refs, scans, layout, LearningSettings(), lax, trained_on)
    report = snapshot.report["confidence"]
    assert report["origin"] == "prior" and report["labels"] == PRODUCTS
    assert snapshot.decision.min_margin == report["min_margin"] > 0.0

    index = InMemoryIndex.of_references(refs)
    strangers = np.array([photo(p) for p in range(PRODUCTS, PRODUCTS + 10) for _ in range(4)])
    rankings = rank(snapshot, index, Prototypes(index, layout), strangers, 3)
    refused = np.mean([r.status is MatchStatus.no_confident_match for r in rankings])
    assert refused >= 0.75  # 40 strangers; 90 % asked, a few points of sampling allowed


def test_trained_towers_are_asked_to_refuse_more_of_the_simulated_unknown_jewels():
    """A confirmation ranked without its product is an easier unknown jewel for towers that
    trained on its product's photos than a jewel never seen: their decision asks
    `trained_unknown_refusal` of the simulated ones, the untrained towers' `unknown_refusal`."""
    from worker.matching.fitting import fit_snapshot
    from worker.matching.ranking import MatchPolicy
    from worker.settings import ConfidenceSettings, LearningSettings
    from worker.vectors import VectorLayout

    refs, photo = _shop()
    scans = np.array([photo(p % PRODUCTS) for p in range(200)])
    trained_on = _trained_on_all_but_first_photos(refs)
    lax = MatchPolicy(min_margin=0.0, target_precision=0.99)

    def decided(trained_on: frozenset[str], refusal: float) -> tuple[float, dict]:
        learning = LearningSettings(confidence=ConfidenceSettings(trained_unknown_refusal=refusal))
        snapshot = fit_snapshot(refs, scans, VectorLayout(DIM), learning, lax, trained_on)
        return snapshot.decision.min_margin, snapshot.report["confidence"]

    stricter, report = decided(trained_on, 0.98)
    assert report["unknown_refusal"] == 0.98 and report["estimated_unknown_refused"] >= 0.98
    laxer, report = decided(trained_on, 0.8)
    assert report["unknown_refusal"] == 0.8 and 0.0 < laxer < stricter
    _, untrained = decided(frozenset(), 0.8)
    assert untrained["unknown_refusal"] == ConfidenceSettings().unknown_refusal

    # 21 labels give 42 simulated unknown jewels, fewer than 98 % takes (49): all are refused
    margin, report = decided(_trained_on_all_but_first_photos(refs, 21), 0.98)
    assert report["labels"] == 21 and report["estimated_unknown_refused"] == 1.0
    assert margin > 0.0  # the lax prior's 0 would let them all through


def test_each_label_is_ranked_with_and_without_its_products_other_confirmed_photos():
    """Photos confirmed in one go are near-copies: ranked beside them a label is easy, so each
    is ranked a second time with every confirmed photo of its product held out (folds of
    products), as hard as that product's first scan on another day."""
    from worker.matching.fitting import fit_snapshot
    from worker.matching.labels import confirmation_outcomes, labelled_rows
    from worker.matching.ranking import MatchPolicy
    from worker.settings import LearningSettings
    from worker.vectors import SOURCE_CONFIRMED_SCAN, VectorLayout, unit_rows

    refs, photo = _shop(seed=5)
    rng = np.random.default_rng(5)
    confirmed = refs.sources == SOURCE_CONFIRMED_SCAN
    vectors = refs.vectors.copy()
    for product in range(PRODUCTS):  # one look per product: its photos a little shaken
        rows = np.flatnonzero(confirmed & (refs.product_ids == f"p{product}"))
        look = photo(product, 0.2)
        vectors[rows] = unit_rows(look + rng.normal(size=(len(rows), DIM)) * 0.01)
    refs = type(refs)(vectors, refs.product_ids, refs.sources, refs.uris)
    learning = LearningSettings()
    scans = np.array([photo(p % PRODUCTS) for p in range(200)])
    policy = MatchPolicy(min_margin=0.5, target_precision=0.95)
    snapshot = fit_snapshot(refs, scans, VectorLayout(DIM), learning, policy)

    labelled = labelled_rows(refs, frozenset())
    outcomes = confirmation_outcomes(refs, labelled, snapshot, learning)
    # per confirmation: beside its copies and without them, each also read without its product
    assert len(outcomes) == 4 * len(labelled)
    for key in outcomes.keys[:: 4 * PHOTOS][:10]:
        mine = outcomes.subset((outcomes.keys == key) & outcomes.known)
        beside_copies, alone = mine.evidence[:, 0]
        assert beside_copies - alone > 0.2  # its copy's score against its catalog image's
        assert list(mine.alone) == [False, True]
        assert set(mine.product_confirmations) == {PHOTOS}
    right = outcomes.right[outcomes.known]
    assert right[: len(labelled)].mean() == 1.0  # beside their copies, every label is right
    # a scan is its product's first as often as a confirmation was
    assert outcomes.first_share() == pytest.approx(PRODUCTS / len(labelled))


def test_the_labels_and_their_folds_do_not_depend_on_where_the_index_keeps_them():
    """A confirmation's folds follow its product and image id, not its row: the same
    references in another order (another model id's point order) give the same outcomes."""
    from worker.index.base import ReferenceSet
    from worker.matching.fitting import fit_snapshot
    from worker.matching.labels import confirmation_outcomes, labelled_rows
    from worker.matching.ranking import MatchPolicy
    from worker.settings import LearningSettings
    from worker.vectors import VectorLayout

    refs, photo = _shop(seed=3)
    refs = ReferenceSet(
        refs.vectors, refs.product_ids, refs.sources, refs.uris, image_ids=refs.uris.copy()
    )
    shuffled = np.random.default_rng(0).permutation(len(refs))
    moved = ReferenceSet(*(getattr(refs, name)[shuffled] for name in _COLUMNS))
    learning = LearningSettings()
    learning.confidence.max_labels = 150  # fewer than the confirmations: a draw
    scans = np.array([photo(p % PRODUCTS) for p in range(200)])
    policy = MatchPolicy(min_margin=0.5, target_precision=0.95)

    def outcomes_of(references: ReferenceSet) -> dict:
        snapshot = fit_snapshot(references, scans, VectorLayout(DIM), learning, policy)
        outcomes = confirmation_outcomes(
            references, labelled_rows(references, frozenset()), snapshot, learning
        )
        return {
            (key, n): (bool(right), tuple(np.round(evidence, 4)))
            for n, (key, right, evidence) in enumerate(
                zip(outcomes.keys, outcomes.right, outcomes.evidence, strict=True)
            )
        }

    first, second = outcomes_of(refs), outcomes_of(moved)
    assert len({key for key, _ in first}) == 150
    assert sorted(first.values()) == sorted(second.values())
    assert {key for key, _ in first} == {key for key, _ in second}


_COLUMNS = ("vectors", "product_ids", "sources", "uris", "image_ids")


def test_a_draw_of_the_labels_tells_the_same_share_of_first_confirmations():
    """Past `max_labels` the labels are a draw; the share of confirmations that were their
    product's first is still that of all of them, not of the draw."""
    from worker.matching.fitting import fit_snapshot
    from worker.matching.labels import confirmation_outcomes, labelled_rows
    from worker.matching.ranking import MatchPolicy
    from worker.settings import LearningSettings
    from worker.vectors import VectorLayout

    refs, photo = _shop(seed=3)
    learning = LearningSettings()
    learning.confidence.max_labels = 150  # of 240 confirmations, 4 per product
    scans = np.array([photo(p % PRODUCTS) for p in range(200)])
    policy = MatchPolicy(min_margin=0.5, target_precision=0.95)
    snapshot = fit_snapshot(refs, scans, VectorLayout(DIM), learning, policy)
    outcomes = confirmation_outcomes(refs, labelled_rows(refs, frozenset()), snapshot, learning)
    assert outcomes.labels() == 150
    assert outcomes.first_share() == pytest.approx(1 / PHOTOS)
    # the products among the drawn labels alone would count most products first once more
    drawn_products = {str(key).split("/")[0] for key in outcomes.keys}  # a key: product/image
    assert len(drawn_products) / 150 > 1 / PHOTOS + 0.05


def test_another_draw_seed_draws_and_splits_other_labels_and_keeps_the_promise():
    """`LEARNING__DRAW_SEED` changes which confirmations are drawn (and how they are folded
    and split), not how many, nor the promise the threshold keeps; seed 0 is the draw every
    earlier figure was measured with."""
    from worker.matching.fitting import fit_snapshot
    from worker.matching.labels import confirmation_outcomes, labelled_rows
    from worker.matching.ranking import MatchPolicy
    from worker.settings import LearningSettings
    from worker.vectors import VectorLayout

    refs, photo = _shop(seed=3)
    scans = np.array([photo(p % PRODUCTS) for p in range(200)])
    policy = MatchPolicy(min_margin=0.5, target_precision=0.95)

    def drawn_keys(seed: int) -> set[str]:
        learning = LearningSettings(draw_seed=seed)
        learning.confidence.max_labels = 150  # of 240 confirmations: a draw
        snapshot = fit_snapshot(refs, scans, VectorLayout(DIM), learning, policy)
        outcomes = confirmation_outcomes(refs, labelled_rows(refs, frozenset()), snapshot, learning)
        assert outcomes.labels() == 150
        return {str(key) for key in outcomes.keys}

    first, again, other = drawn_keys(0), drawn_keys(0), drawn_keys(1)
    assert first == again and first != other

    labels, fresh = outcomes(3000, seed=3), outcomes(20000, seed=4)
    plain = fit_confidence(labels, ConfidenceSettings(), 0.95, prior())
    assert (
        plain.threshold == fit_confidence(labels, ConfidenceSettings(), 0.95, prior(), 0).threshold
    )
    for seed in (1, 2):
        learned = fit_confidence(labels, ConfidenceSettings(), 0.95, prior(), seed)
        assert learned.report["calibration_labels"] != plain.report["calibration_labels"]
        answered = learned.of(fresh.evidence) >= learned.threshold
        assert fresh.right[answered & fresh.known].mean() >= 0.95 - 0.01


EASY = np.array([2.0, 30.0, -3.0])  # a product with confirmed photos: its own vouch for it
FIRST_DAY = np.array([2.0, 30.0, -5.0])  # the same evidence, less often right


def two_rankings(n: int, seed: int, per_product: int) -> Outcomes:
    """`n` confirmations, `per_product` of each product, each ranked beside its product's
    other confirmed photos and `alone`, as `labels.py` ranks them, with a stray each time."""
    rng = np.random.default_rng(seed)
    keys = np.array([f"k{i}" for i in range(n)] * 2, dtype=object)
    counts = np.full(2 * n, float(per_product))
    parts = []
    for alone, true_weights in ((False, EASY), (True, FIRST_DAY)):
        evidence = np.column_stack([rng.uniform(0.2, 0.9, n), rng.exponential(0.08, n)])
        right = rng.random(n) < 1 / (1 + np.exp(-(evidence @ true_weights[:2] + true_weights[2])))
        strays = np.column_stack([rng.uniform(0.2, 0.8, n), rng.exponential(0.03, n)])
        known = np.r_[np.ones(n, dtype=bool), np.zeros(n, dtype=bool)]
        parts.append(
            Outcomes(
                np.vstack([evidence, strays]),
                np.r_[right, np.zeros(n, dtype=bool)],
                known,
                keys,
                counts,
                np.full(2 * n, alone),
            )
        )
    return Outcomes.joined(parts)


def test_the_served_confidence_is_calibrated_for_how_often_a_scan_is_a_products_first():
    ten_each = two_rankings(3000, seed=20, per_product=10)
    assert ten_each.first_share() == pytest.approx(0.1)
    served = fit_confidence(ten_each, ConfidenceSettings(), 0.95, prior())
    # the same labels, two confirmations per product: both rankings weigh alike
    two_each = two_rankings(3000, seed=20, per_product=2)
    assert np.array_equal(two_each.right, ten_each.right)
    even = fit_confidence(two_each, ConfidenceSettings(), 0.95, prior())
    assert served.origin == even.origin == "labels"
    assert served.report["first_share"] == 0.1
    # fresh scans as the labels tell: nine of ten of products with confirmed photos
    fresh = two_rankings(20000, seed=21, per_product=10)
    scans = fresh.known & (~fresh.alone | (np.arange(len(fresh)) % 9 == 0))
    evidence, right = fresh.evidence[scans], fresh.right[scans]
    # measured over seeds 0-4: 0.007-0.035 served, 0.105-0.128 even
    assert expected_calibration_error(served.of(evidence), right) < 0.06
    assert expected_calibration_error(even.of(evidence), right) > 0.08
    # the probability moves, not the decision: the same scans are answered
    answered = served.of(evidence) >= served.threshold
    assert np.array_equal(answered, even.of(evidence) >= even.threshold)
    assert 0.05 < answered.mean() < 0.5


def test_a_confirmation_nearer_another_product_is_a_wrong_label():
    from worker.index.base import ReferenceSet
    from worker.matching.labels import confirmation_outcomes, labelled_rows
    from worker.matching.ranking import Snapshot
    from worker.vectors import SOURCE_CATALOG, SOURCE_CONFIRMED_SCAN, VectorLayout, unit_rows

    eye = np.eye(8, dtype=np.float32)
    rows = [*eye[:4], eye[0] + 0.1 * eye[5], eye[2] + 0.1 * eye[5]]
    ids = ["p0", "p1", "p2", "p3", "p0", "p1"]  # p1's photo looks like p2's catalog image
    sources = [SOURCE_CATALOG] * 4 + [SOURCE_CONFIRMED_SCAN] * 2
    refs = ReferenceSet(
        unit_rows(np.array(rows)),
        np.array(ids, dtype=object),
        np.array(sources, dtype=object),
        np.array([f"s3://images/{n}.jpg" for n in range(6)], dtype=object),
    )
    outcomes = confirmation_outcomes(
        refs, labelled_rows(refs, frozenset()), Snapshot(layout=VectorLayout(8)), LearningSettings()
    )
    said: dict[str, set[bool]] = {}
    for key, right in zip(
        outcomes.keys[outcomes.known], outcomes.right[outcomes.known], strict=True
    ):
        said.setdefault(key, set()).add(bool(right))
    assert said == {refs.key(4): {True}, refs.key(5): {False}}
    assert not outcomes.right[~outcomes.known].any()  # an unknown jewel is never right


# --- each fold ranked as the snapshot would rank without it --------------------------------


def _fold_of(refs, held_products: set[str], learning, scans: int = 200):
    """The snapshot fitted on every reference, and the one its labels' fold ranks with when
    the confirmed photos of `held_products` are held out."""
    from worker.matching.fitting import fit_snapshot
    from worker.matching.labels import _fold_snapshot
    from worker.matching.ranking import MatchPolicy
    from worker.vectors import SOURCE_CONFIRMED_SCAN, VectorLayout

    rng = np.random.default_rng(3)
    scan_vectors = refs.vectors[rng.integers(0, len(refs), scans)]
    snapshot = fit_snapshot(refs, scan_vectors, VectorLayout(DIM), learning, MatchPolicy())
    held = (refs.sources == SOURCE_CONFIRMED_SCAN) & np.isin(refs.product_ids, list(held_products))
    training = refs.subset(~held)
    return snapshot, training, _fold_snapshot(training, snapshot, learning)


def test_a_folds_metric_is_refitted_without_its_labels():
    from worker.matching.stages.centring import image_references
    from worker.matching.stages.lda import lda_space
    from worker.settings import LearningSettings
    from worker.vectors import VectorLayout

    refs, _ = _shop()
    learning = LearningSettings()
    snapshot, training, fold = _fold_of(refs, {"p0", "p1", "p2"}, learning)
    assert snapshot.space.name == "lda" and fold.space.name == "lda"
    refitted = lda_space(
        image_references(training, VectorLayout(DIM)),
        snapshot.centring.image_means,
        learning.lda,
    )
    np.testing.assert_allclose(fold.space.projection, refitted.projection)
    assert not np.allclose(fold.space.projection, snapshot.space.projection, atol=1e-3)
    assert fold.confidence is None and fold.centring is snapshot.centring


def test_a_fold_that_teaches_no_metric_ranks_in_the_whitening():
    """Without its labels a fold may hold a single product, which teaches no metric: it ranks
    in the scans' whitening, as the snapshot ranks new products."""
    from worker.matching.labels import _fold_snapshot
    from worker.settings import LearningSettings

    refs, _ = _shop()
    learning = LearningSettings(whitening={"dim": 8, "min_scans": 100})
    snapshot, _, _ = _fold_of(refs, set(), learning)
    assert snapshot.space.name == "lda" and snapshot.whitening is not None
    fold = _fold_snapshot(refs.subset(refs.product_ids == "p1"), snapshot, learning)
    assert fold.space is snapshot.whitening


def test_a_snapshot_ranking_in_the_whitening_keeps_it_in_its_folds():
    from worker.settings import LearningSettings

    refs, _ = _shop()
    learning = LearningSettings(whitening={"dim": 8, "min_scans": 100}, lda={"enabled": False})
    snapshot, _, fold = _fold_of(refs, {"p0"}, learning)
    assert snapshot.space.name == "whitening"
    assert fold.space is snapshot.space


def test_a_folds_new_products_are_those_without_confirmed_photos_left():
    from worker.settings import LearningSettings
    from worker.vectors import SOURCE_CATALOG

    refs, _ = _shop()
    refs = refs.subset((refs.product_ids != "p5") | (refs.sources == SOURCE_CATALOG))
    snapshot, _, fold = _fold_of(refs, {"p0", "p1"}, LearningSettings())
    expected = {f"p{n}" for n in range(PRODUCTS)} - {"p0", "p1", "p5"}
    assert fold.new_products.with_photos == expected
    assert snapshot.new_products.with_photos == expected | {"p0", "p1"}

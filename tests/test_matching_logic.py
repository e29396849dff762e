import uuid

import numpy as np
import pytest

from shared.contract import MatchStatus
from worker.index import ImageHit, ProductHit, group_by_product, point_id
from worker.matching.matcher import MatchPolicy, Ranking, policy_from_settings
from worker.matching.stages.confidence import PRIOR_CALIBRATION
from worker.settings import MatchingSettings


def test_point_ids_are_deterministic_uuids_of_product_image_and_model():
    a = point_id("p1", "front", "efficientnet-lite0")
    assert a == point_id("p1", "front", "efficientnet-lite0")
    assert uuid.UUID(a).version == 5
    others = {
        point_id("p1", "back", "efficientnet-lite0"),
        point_id("p2", "front", "efficientnet-lite0"),
        point_id("p1", "front", "vit-b-32"),
    }
    assert a not in others and len(others) == 3
    # no ambiguity from concatenation
    assert point_id("p1", "2front", "m") != point_id("p12", "front", "m")


def hit(product, image, score):
    return ImageHit(product, image, f"sku-{product}", score, "catalog")


def test_grouping_keeps_each_products_best_image_in_score_order():
    hits = [
        hit("a", "a1", 0.70),
        hit("b", "b1", 0.90),
        hit("a", "a2", 0.95),
        hit("c", "c1", 0.60),
        hit("b", "b2", 0.10),
    ]
    grouped = group_by_product(hits, top_k=2)
    assert [(g.product_id, g.image_id, g.score) for g in grouped] == [
        ("a", "a2", 0.95),
        ("b", "b1", 0.90),
    ]


def test_grouping_breaks_ties_by_product_id_for_stable_results():
    grouped = group_by_product([hit("b", "b", 0.5), hit("a", "a", 0.5)], top_k=5)
    assert [g.product_id for g in grouped] == ["a", "b"]


def product(pid, score):
    return ProductHit(pid, f"sku-{pid}", score, "img", "catalog")


def test_the_prior_needs_score_and_margin():
    prior = MatchPolicy(min_score=0.5, min_margin=0.05).prior()
    assert prior.assess([0.80, 0.70])[0] is MatchStatus.matched
    assert prior.assess([0.45, 0.10])[0] is MatchStatus.no_confident_match
    assert prior.assess([0.80, 0.78])[0] is MatchStatus.no_confident_match
    assert prior.assess([0.80])[0] is MatchStatus.matched
    assert prior.assess([])[0] is MatchStatus.no_confident_match
    # its confidence is the calibration's probability at that margin, whatever the margin
    # asked: it grows with the margin, and a stricter prior does not make it surer
    slope, intercept = PRIOR_CALIBRATION
    expected = 1 / (1 + np.exp(-(slope * 0.05 + intercept)))
    assert prior.assess([0.80, 0.75])[1] == pytest.approx(expected)
    assert prior.assess([0.80, 0.70])[1] > prior.assess([0.80, 0.74])[1]
    # a tie is about a coin flip, a clear lead near certain (grocery `train`'s calibration)
    assert 0.4 < prior.assess([0.80, 0.80])[1] < 0.6
    assert prior.assess([0.80, 0.50])[1] > 0.95
    stricter = MatchPolicy(min_score=0.5, min_margin=0.2).prior()
    status, confidence = stricter.assess([0.80, 0.70])
    assert status is MatchStatus.no_confident_match
    assert confidence == prior.assess([0.80, 0.70])[1]


def test_the_policy_is_what_the_matching_settings_say():
    settings = MatchingSettings(min_score=0.31, min_margin=0.07, target_precision=0.95)
    assert policy_from_settings(settings) == MatchPolicy(0.31, 0.07, 0.95)


def test_ranking_numbers_products_from_one():
    ranking = Ranking(MatchStatus.matched, [product("a", 0.9), product("b", np.float32(0.8))])
    ranked = ranking.ranked_products()
    assert [(r.rank, r.product_id, r.sku) for r in ranked] == [(1, "a", "sku-a"), (2, "b", "sku-b")]
    assert isinstance(ranked[1].score, float)

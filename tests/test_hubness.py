"""The hubness penalty (`LEARNING__HUBNESS__WEIGHT`): where the whitening ranks, each
candidate's score is lowered by its prototype's mean similarity to its nearest scans, those
scans thinned so that a product scanned far more often than the others is not penalised for
it. Whether it helps is measured on real photos (docs/benchmarks.md, "Hubness").

Vectors: products in look-alike pairs, photos varying along a nuisance direction, the
second of each pair shot apart from its photos (a domain gap).
"""

from __future__ import annotations

import numpy as np
import pytest

from worker.index import ReferenceImage, ScanRecord
from worker.index.base import SOURCE_CATALOG, SOURCE_CONFIRMED_SCAN, ReferenceSet
from worker.index.memory import InMemoryIndex
from worker.matching.fitting import fit_snapshot
from worker.matching.matcher import Matcher, MatchPolicy
from worker.matching.stages.centring import DomainMeans
from worker.matching.stages.hubness import HubPenalty, thinned
from worker.matching.stages.space import RerankSpace
from worker.settings import LearningSettings
from worker.vectors import VectorLayout, unit_rows

PAIRS = 5
PRODUCTS = [f"p{n}" for n in range(2 * PAIRS)]
HUBS = PRODUCTS[:PAIRS]  # shot like photos
STUDIO = PRODUCTS[PAIRS:]  # their look-alikes, shot apart
DIM = 32
SCANS = 300
GAP, SPREAD = 1.0, 0.7


class _Geometry:
    def __init__(self, seed: int = 3) -> None:
        self.rng = np.random.default_rng(seed)
        basis, _ = np.linalg.qr(self.rng.normal(size=(DIM, DIM)))
        self.products = {}
        for n in range(PAIRS):
            self.products[HUBS[n]] = basis[:, 2 * n]
            self.products[STUDIO[n]] = 0.6 * basis[:, 2 * n] + 0.8 * basis[:, 2 * n + 1]
        self.nuisance = basis[:, 20]  # light, bag: photos vary along it either way
        self.gaps = {p: -GAP * self.nuisance if p in STUDIO else 0.0 for p in PRODUCTS}

    def catalog(self, product: str) -> np.ndarray:
        return unit_rows(self.products[product] + self.gaps[product]).astype(np.float32)

    def photo(self, product: str) -> np.ndarray:
        look = self.products[product] + self.nuisance * self.rng.normal() * SPREAD
        return unit_rows(look + self.rng.normal(size=DIM) * 0.05).astype(np.float32)


def _fitted(weight: float, pool: list[str], distinct: float = 0.5):
    """A matcher over the pairs' catalog shots, refitted on scans of `pool`'s products."""
    geometry = _Geometry()
    index = InMemoryIndex("hubs", DIM)
    learning = LearningSettings(
        whitening={"dim": 16, "min_scans": 100},
        hubness={"weight": weight, "distinct": distinct},
    )
    matcher = Matcher(index, VectorLayout(DIM), "hubs", MatchPolicy(), learning)
    index.upsert([ReferenceImage(p, "front", p, geometry.catalog(p)) for p in PRODUCTS])
    for n, product in enumerate(pool):
        index.remember_scan(ScanRecord(f"scan-{n}", geometry.photo(product), "s3://k.jpg", 0.0))
    matcher.refit()
    return matcher, index, geometry


def _balanced() -> list[str]:
    return [PRODUCTS[n % len(PRODUCTS)] for n in range(SCANS)]


def _penalty(matcher: Matcher, product: str) -> float:
    space = matcher.snapshot.space
    prototype = space.prototype(matcher.index.references(product))
    return float(space.hub_penalty(prototype[None, :])[0])


def test_each_candidate_loses_its_penalty_in_the_whitened_ranking():
    plain, _, geometry = _fitted(0.0, _balanced())
    penalised, _, _ = _fitted(0.5, _balanced())
    report = penalised.snapshot.report
    assert report["whitened"] and report["hub_scans"] > 0
    assert "hub_scans" not in plain.snapshot.report
    assert "hubness" in penalised.snapshot.stages and "hubness" not in plain.snapshot.stages
    scans = np.stack([geometry.photo(p) for p in PRODUCTS])
    for before, after in zip(plain.rank(scans, 3), penalised.rank(scans, 3), strict=True):
        scores = {hit.product_id: hit.score for hit in before.hits}
        for hit in after.hits:
            if hit.product_id in scores:
                # the same whitening, so the same cosine; less its penalty, rescaled
                cosine = scores[hit.product_id] / plain.snapshot.space.score_scale
                penalty = _penalty(penalised, hit.product_id)
                expected = (cosine - penalty) * penalised.snapshot.space.score_scale
                assert hit.score == pytest.approx(expected, abs=1e-4)
    penalties = [_penalty(penalised, p) for p in PRODUCTS]
    assert min(penalties) > 0 and max(penalties) - min(penalties) > 0.01  # not one shift


def test_a_product_scanned_often_is_not_penalised_for_it():
    popular = "p3"
    skewed_pool = _balanced() + [popular] * 4 * (SCANS // len(PRODUCTS))  # five times as often
    penalties = {}
    for name, pool, distinct in [
        ("balanced", _balanced(), 0.5),
        ("skewed", skewed_pool, 0.5),
        ("skewed, not thinned", skewed_pool, 1.0),
    ]:
        matcher, _, _ = _fitted(0.5, pool, distinct)
        penalties[name] = _penalty(matcher, popular) / max(
            _penalty(matcher, p) for p in PRODUCTS if p != popular
        )
    assert penalties["skewed"] <= penalties["balanced"] + 0.05
    assert penalties["skewed, not thinned"] > penalties["skewed"] + 0.02


def test_thinning_keeps_one_row_of_a_dense_cluster_and_every_distinct_row():
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    dense = unit_rows(basis[:, 0] + rng.normal(size=(50, 16)) * 0.01)
    distinct = basis[:, 1:6].T
    kept = thinned(np.concatenate([dense, distinct]).astype(np.float32), 0.5)
    assert len(kept) == 6
    assert (kept @ basis[:, 0] > 0.9).sum() == 1


def test_no_penalty_without_scans_or_weight():
    prototypes = np.eye(4, dtype=np.float32)
    plain = RerankSpace("whitening", np.eye(4, dtype=np.float32), DomainMeans())
    assert not plain.hub_penalty(prototypes).any()
    hubs = HubPenalty(prototypes[:2], weight=0.5, neighbours=1)
    penalised = RerankSpace("whitening", np.eye(4, dtype=np.float32), DomainMeans(), hubs=hubs)
    np.testing.assert_allclose(penalised.hub_penalty(prototypes), [0.5, 0.5, 0.0, 0.0])


def test_confirmed_photos_stay_out_of_the_thinned_scans():
    """Confirmed photos are labeled and crowd around their own products; only the unlabeled
    scans stand for the photos a catalog shot is compared with."""
    rng = np.random.default_rng(1)
    dim = 24
    catalog = unit_rows(rng.normal(size=(6, dim))).astype(np.float32)
    confirmed = unit_rows(catalog[0] + rng.normal(size=(40, dim)) * 0.3).astype(np.float32)
    scans = unit_rows(rng.normal(size=(200, dim))).astype(np.float32)
    refs = ReferenceSet(
        np.concatenate([catalog, confirmed]),
        np.array([f"p{n}" for n in range(6)] + ["p0"] * 40, dtype=object),
        np.array([SOURCE_CATALOG] * 6 + [SOURCE_CONFIRMED_SCAN] * 40, dtype=object),
    )
    learning = LearningSettings(
        whitening={"dim": 8, "min_scans": 100}, lda={"enabled": False}, hubness={"weight": 0.5}
    )
    snapshot = fit_snapshot(refs, scans, VectorLayout(dim), learning, MatchPolicy())
    whitening = snapshot.whitening
    assert whitening is not None
    expected = thinned(whitening.project_scans(scans), 0.5)
    assert whitening.hubs is not None
    np.testing.assert_allclose(whitening.hubs.scans, expected, atol=1e-6)


def test_a_prototypes_penalty_is_its_mean_similarity_to_its_nearest_scans():
    scans = np.eye(3)
    prototype = np.array([[0.8, 0.6, 0.0]])
    assert HubPenalty(scans, 0.5, neighbours=2).of(prototype) == pytest.approx([0.35])
    # fewer scans than neighbours: all of them
    assert HubPenalty(scans, 0.5, neighbours=5).of(prototype) == pytest.approx([0.7 / 3])


def test_a_scan_exactly_as_distinct_as_asked_is_kept():
    rows = np.array([[1.0, 0.0], [0.5, np.sqrt(0.75)]])  # a cosine of 0.5 exactly
    assert len(thinned(rows, distinct=0.5)) == 2
    assert len(thinned(rows, distinct=0.49)) == 1

"""Whitening learned from unlabeled scans: before any confirmation, the directions along which
scans vary most (light, bag, hand) must not decide the ranking.

Vectors here are made with that shape: each product a direction; scans vary strongly along a
few shared nuisance directions, along which the catalog shots happen to differ too. Compared
plainly, a scan's nuisance component picks the wrong catalog shot; the scans' own statistics,
no label needed, tell those directions apart.
"""

from __future__ import annotations

import numpy as np
import pytest

from worker.index import ReferenceImage, ScanRecord
from worker.index.memory import InMemoryIndex
from worker.matching.matcher import Matcher, MatchPolicy
from worker.matching.stages import whitening
from worker.matching.stages.centring import DomainMeans
from worker.matching.stages.space import RerankSpace
from worker.matching.stages.whitening import fit_whitening, margin_ratio
from worker.settings import LearningSettings
from worker.vectors import VectorLayout, unit_rows

PRODUCTS = [f"p{n}" for n in range(10)]
DIM = 32
SCANS = 200


class _Geometry:
    def __init__(self, seed: int = 5) -> None:
        self.rng = np.random.default_rng(seed)
        basis, _ = np.linalg.qr(self.rng.normal(size=(DIM, DIM)))
        self.products = {p: basis[:, n] for n, p in enumerate(PRODUCTS)}
        self.nuisance = basis[:, 10:13]
        self.tilt = {p: self.nuisance @ self.rng.normal(size=3) * 0.3 for p in PRODUCTS}
        self.catalog_domain, self.photo_domain = basis[:, 20], basis[:, 21]

    def catalog(self, product: str) -> np.ndarray:
        look = self.products[product] + self.tilt[product] + self.catalog_domain
        return unit_rows(look).astype(np.float32)

    def photo(self, product: str) -> np.ndarray:
        look = self.products[product] + self.nuisance @ self.rng.normal(size=3)
        noise = self.rng.normal(size=DIM) * 0.05
        return unit_rows(look + self.photo_domain + noise).astype(np.float32)


def _recall_at_1(learning: LearningSettings, scans: int = SCANS):
    geometry = _Geometry()
    index = InMemoryIndex("geometry", DIM)
    matcher = Matcher(index, VectorLayout(DIM), "geometry", MatchPolicy(), learning)
    index.upsert([ReferenceImage(p, "front", p, geometry.catalog(p)) for p in PRODUCTS])
    for n in range(scans):
        photo = geometry.photo(PRODUCTS[n % len(PRODUCTS)])
        index.remember_scan(ScanRecord(f"scan-{n}", photo, "s3://scans/k.jpg", 0.0))
    matcher.refit()
    truth = [PRODUCTS[n % len(PRODUCTS)] for n in range(SCANS)]
    rankings = matcher.rank(np.stack([geometry.photo(p) for p in truth]), 5)
    right = [r.hits[0].product_id == t for r, t in zip(rankings, truth, strict=True)]
    return float(np.mean(right)), matcher.snapshot.report


def test_whitening_from_unlabeled_scans_ranks_more_photos_right():
    plain, plain_report = _recall_at_1(_learning(0))
    whitened, report = _recall_at_1(_learning(16))
    assert not plain_report["whitened"] and report["whitened"]
    assert plain < 0.9
    assert whitened >= plain + 0.05


@pytest.mark.parametrize("scans", [50, 99])
def test_too_few_scans_are_not_whitened(scans):
    _, report = _recall_at_1(_learning(16), scans=scans)
    assert report["centred"] and not report["whitened"]


def _learning(whiten_dim: int) -> LearningSettings:
    return LearningSettings(whitening={"dim": whiten_dim, "min_scans": 100})


def _scans_and_catalog(scans: int, catalog: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    return (
        rng.normal(size=(scans, DIM)).astype(np.float32),
        rng.normal(size=(catalog, DIM)).astype(np.float32),
    )


WHITENING = LearningSettings(whitening={"dim": 8}, hubness={"weight": 0}).whitening
NO_HUBS = LearningSettings(hubness={"weight": 0}).hubness


@pytest.mark.parametrize("images", [None, 1])
def test_without_two_catalog_images_the_score_scale_stays_one(images):
    scans, catalog = _scans_and_catalog(300, 1)
    space = fit_whitening(
        scans, len(scans), None if images is None else catalog, DomainMeans(), WHITENING, NO_HUBS
    )
    assert space.score_scale == 1.0


def test_two_catalog_images_set_the_score_scale_to_the_margins_ratio():
    scans, catalog = _scans_and_catalog(300, 2)
    space = fit_whitening(scans, len(scans), catalog, DomainMeans(), WHITENING, NO_HUBS)
    unscaled = RerankSpace("whitening", space.projection, DomainMeans())
    assert space.score_scale == pytest.approx(margin_ratio(scans, catalog, unscaled))
    assert space.score_scale != pytest.approx(1.0)


def _median_margin(scores: np.ndarray) -> float:
    best_two = np.sort(scores, axis=1)[:, -2:]
    return float(np.median(best_two[:, 1] - best_two[:, 0]))


def test_the_margins_ratio_reads_evenly_spaced_samples(monkeypatch):
    """The plain and projected margins are medians over MARGIN_SAMPLE scans spread evenly
    over all of them (first and last included), not over every scan."""
    monkeypatch.setattr(whitening, "MARGIN_SAMPLE", 3)
    scans, catalog = _scans_and_catalog(40, 6)
    space = RerankSpace("whitening", np.eye(DIM, dtype=np.float32)[:, :4], DomainMeans())
    sample = scans[[0, 19, 39]]
    expected = _median_margin(sample @ catalog.T) / _median_margin(
        space.project(sample) @ space.project(catalog).T
    )
    everything = _median_margin(scans @ catalog.T) / _median_margin(
        space.project(scans) @ space.project(catalog).T
    )
    assert margin_ratio(scans, catalog, space) == pytest.approx(expected)
    assert expected != pytest.approx(everything)


TIED_IN_THE_SPACE = (np.eye(3)[:, :2], [[1, 0, 0], [1, 0, 1]], [[1, 0.2, 0.1], [0.9, 0.1, 0.3]])
TIED_IN_THE_PLAIN = ([[1, 0, 0], [0, 1, 0], [0, 1, 1]], [[1, 0, 1], [1, 0, -1]], [[1, 1, 0]])


@pytest.mark.parametrize("projection, catalog, scans", [TIED_IN_THE_SPACE, TIED_IN_THE_PLAIN])
def test_a_margin_of_zero_on_either_side_leaves_the_scale_at_one(projection, catalog, scans):
    """Scans whose two best catalog images tie, in the space or in the plain embedding, have
    no margin to measure there: the scale stays 1, neither infinite nor 0."""
    catalog, scans = np.array(catalog, np.float32), np.array(scans, np.float32)
    space = RerankSpace("whitening", np.array(projection, np.float32), DomainMeans())
    plain = _median_margin(scans @ catalog.T)
    projected = _median_margin(space.project(scans) @ space.project(catalog).T)
    assert (plain == 0) != (projected == 0)
    assert margin_ratio(scans, catalog, space) == 1.0

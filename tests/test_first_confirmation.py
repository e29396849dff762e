"""A first confirmation must not make the worker worse before it has learned the photo domain.

Bag photos resemble each other more than they resemble catalog shots (lighting, bag, hand):
a confirmed photo of one product, compared uncorrected, would attract photos of every other
product. Vectors here are made with that shape: each product a direction, each domain (catalog,
photo) a strong common offset, so that the test fails on a matcher that lets such a reference
compete before the photo domain's mean is known.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from shared.contract import MatchStatus
from worker.index import ReferenceImage, ScanRecord
from worker.index.edge import EdgeIndex
from worker.index.memory import InMemoryIndex
from worker.matching.matcher import Matcher, MatchPolicy
from worker.settings import IndexSettings, LearningSettings
from worker.vectors import VectorLayout, unit_rows

MIN_SCANS = LearningSettings().centring.min_scans

PRODUCTS = [f"p{n}" for n in range(8)]
DIM = 32


class _Geometry:
    def __init__(self, dim: int, seed: int = 3) -> None:
        rng = np.random.default_rng(seed)
        basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
        self.products = {p: basis[:, n] for n, p in enumerate(PRODUCTS)}
        self.catalog_domain = basis[:, len(PRODUCTS)]
        self.photo_domain = basis[:, len(PRODUCTS) + 1]
        self.studio_backdrop = basis[:, len(PRODUCTS) + 2]
        self.rng = rng

    def catalog(self, product: str) -> np.ndarray:
        """p0's catalog shot shows it poorly (half of it is backdrop): photos help there."""
        look = self.products[product]
        if product == "p0":
            look = 0.5 * look + 0.85 * self.studio_backdrop
        return unit_rows(look + 1.2 * self.catalog_domain).astype(np.float32)

    def photo(self, product: str) -> np.ndarray:
        noise = self.rng.normal(size=self.photo_domain.shape) * 0.08
        return unit_rows(self.products[product] + 1.2 * self.photo_domain + noise).astype(
            np.float32
        )


def _matcher(learning: LearningSettings | None = None) -> Matcher:
    index = InMemoryIndex("geometry", DIM)
    return Matcher(index, VectorLayout(DIM), "geometry", MatchPolicy(min_margin=0.05), learning)


@pytest.fixture
def matcher():
    return _matcher()


def _remember(matcher: Matcher, scan_id: str, vector: np.ndarray) -> ScanRecord:
    record = ScanRecord(scan_id, vector, f"s3://scans/{scan_id}.jpg", time.time())
    matcher.scans.remember(record)
    return record


def _answers(matcher: Matcher, geometry: _Geometry, products: list[str]):
    vectors = np.stack([geometry.photo(p) for p in products])
    return [(ranking.status, ranking.hits[0].product_id) for ranking in matcher.rank(vectors, 5)]


def test_one_confirmation_never_turns_a_right_answer_into_a_wrong_match(matcher):
    geometry = _Geometry(DIM)
    catalog = matcher.catalog()
    catalog_images = [ReferenceImage(p, "front", f"sku-{p}", geometry.catalog(p)) for p in PRODUCTS]
    matcher.index.upsert(catalog_images)
    matcher.refit()
    others = PRODUCTS[1:]
    before = _answers(matcher, geometry, others)
    assert [product for _, product in before] == others  # the catalog alone ranks them right

    # a fresh worker: a few scans seen, one of them confirmed, no photo-domain mean yet
    first = _remember(matcher, "scan-0", geometry.photo("p0"))
    assert catalog.confirm("p0", first)
    matcher.refit()
    after = _answers(matcher, geometry, others)
    assert [product for _, product in after] == others
    assert all(p != "p0" for status, p in after if status is MatchStatus.matched)

    # once the worker has seen enough photos to know their domain, the confirmation counts
    for n in range(MIN_SCANS):
        _remember(matcher, f"unlabeled-{n}", geometry.photo(PRODUCTS[n % len(PRODUCTS)]))
    matcher.refit()
    learned = _answers(matcher, geometry, PRODUCTS)
    assert [product for _, product in learned] == PRODUCTS
    [confirmed_hit] = [
        hit
        for hit in matcher.rank(geometry.photo("p0")[None, :], 5)[0].hits
        if hit.product_id == "p0"
    ]
    assert confirmed_hit.source == "confirmed_scan"  # the photo reference is now used


def test_a_confirmed_scan_is_a_reference_the_index_remembers_and_unknown_ones_change_nothing(
    tmp_path,
):
    """On the embedded index, which keeps copies: the scan's record itself says where its
    photo went (a later correction moves it from there)."""
    index = EdgeIndex(IndexSettings(path=tmp_path / "index"), "geometry", DIM)
    matcher = Matcher(index, VectorLayout(DIM), "geometry", MatchPolicy(min_margin=0.05))
    geometry = _Geometry(DIM)
    index.upsert([ReferenceImage(p, "front", f"sku-{p}", geometry.catalog(p)) for p in PRODUCTS])
    _remember(matcher, "scan-1", geometry.photo("p1"))
    assert matcher.scans.confirm("never-scanned", "p1") is False
    assert matcher.scans.confirm("scan-1", "p-unknown") is False
    assert [image.image_id for image in index.product_images("p1")] == ["front"]
    assert matcher.scans.confirm("scan-1", "p1") is True
    assert {image.image_id for image in index.product_images("p1")} == {"front", "scan:scan-1"}
    assert matcher.scans.recall("scan-1").extra["confirmed_product_id"] == "p1"
    matcher.scans.forget_before(time.time() + 1)
    assert matcher.scans.recall("scan-1") is None
    index.close()


def test_the_refit_that_learns_the_photo_domain_is_due_as_soon_as_enough_scans_exist(matcher):
    geometry = _Geometry(DIM)
    matcher.index.upsert([ReferenceImage("p1", "front", "sku-p1", geometry.catalog("p1"))])
    matcher.refit()
    needed = MIN_SCANS
    for n in range(needed - 1):
        _remember(matcher, f"scan-{n}", geometry.photo("p1"))
    learner = matcher.learner
    assert not learner.refit_in_background_if_due()  # refit.seconds (300 s) not reached
    _remember(matcher, "one-more", geometry.photo("p1"))
    assert learner.refit_in_background_if_due()
    learner.wait(timeout=30)
    assert matcher.snapshot.centring.means.scan is not None


def _photo_domain_known(matcher: Matcher, geometry: _Geometry) -> None:
    for n in range(MIN_SCANS):
        _remember(matcher, f"unlabeled-{n}", geometry.photo(PRODUCTS[n % len(PRODUCTS)]))


@pytest.mark.parametrize("new_products_first", [True, False])
def test_a_new_product_is_not_lost_to_a_confirmed_look_alike(new_products_first):
    """p0 is new (catalog shot only, and a poor one); p1 has a confirmed photo that shows
    much of p0 (a look-alike). A photo of p0 is closest to that photo, but its closest
    catalog image is p0's: it is ranked as on day one, against catalog images only."""
    geometry = _Geometry(DIM)
    matcher = _matcher(LearningSettings(new_products_first={"enabled": new_products_first}))
    index = matcher.index
    catalog = matcher.catalog()
    index.upsert([ReferenceImage(p, "front", f"sku-{p}", geometry.catalog(p)) for p in PRODUCTS])
    _photo_domain_known(matcher, geometry)
    look_alike = unit_rows(
        0.75 * geometry.products["p0"] + 0.6 * geometry.products["p1"] + 1.2 * geometry.photo_domain
    ).astype(np.float32)
    assert catalog.confirm("p1", _remember(matcher, "scan-p1", look_alike))
    # a correction: this bag looks more like p2 (new) but a person said it is p3
    corrected_bag = unit_rows(
        0.8 * geometry.products["p2"] + 0.6 * geometry.products["p3"] + 1.2 * geometry.photo_domain
    ).astype(np.float32)
    assert catalog.confirm("p3", _remember(matcher, "scan-p3", corrected_bag))
    matcher.refit()

    [photo_of_new] = matcher.rank(geometry.photo("p0")[None, :], 5)
    [photo_of_confirmed] = matcher.rank(geometry.photo("p1")[None, :], 5)
    assert photo_of_confirmed.hits[0].product_id == "p1"  # confirmed products: as before
    # the corrected bag photographed again: its closest catalog image is p2's (new), but a
    # confirmed photo of the very item decides
    [same_bag_again] = matcher.rank(corrected_bag[None, :], 5)
    assert same_bag_again.hits[0].product_id == "p3"
    if new_products_first:
        assert photo_of_new.hits[0].product_id == "p0"
        assert {hit.source for hit in photo_of_new.hits} == {"catalog"}
    else:
        assert photo_of_new.hits[0].product_id == "p1"  # what the option is there to prevent


def _twins(learning: LearningSettings) -> tuple[Matcher, _Geometry, np.ndarray]:
    """p4 and p5 are twins; p5 has three confirmed bag photos, p4 is new (catalog shot only).
    Bag photos share the bag (`bag`), so a bag photo of p4 looks like p5's photos."""
    geometry = _Geometry(DIM)
    matcher = _matcher(learning)
    catalog = matcher.catalog()
    matcher.index.upsert(
        [ReferenceImage(p, "front", f"sku-{p}", geometry.catalog(p)) for p in PRODUCTS]
    )
    _photo_domain_known(matcher, geometry)
    others = [*geometry.products.values(), geometry.catalog_domain, geometry.photo_domain]
    bag = geometry.rng.normal(size=DIM)
    bag -= sum((bag @ v) * v for v in [*others, geometry.studio_backdrop])
    bag /= np.linalg.norm(bag)
    for n in range(3):
        noise = geometry.rng.normal(size=DIM) * 0.05
        photo = geometry.products["p5"] + 0.35 * bag + 1.2 * geometry.photo_domain + noise
        assert catalog.confirm("p5", _remember(matcher, f"p5-{n}", unit_rows(photo)))
    matcher.refit()
    return matcher, geometry, bag


def _bag_photo(geometry: _Geometry, bag: np.ndarray, p4_share: float) -> np.ndarray:
    look = p4_share * geometry.products["p4"] + (1 - p4_share) * geometry.products["p5"]
    return unit_rows(look + 0.35 * bag + 1.2 * geometry.photo_domain).astype(np.float32)[None, :]


def test_an_answer_ahead_only_by_its_photos_of_a_new_twin_is_not_matched():
    """A bag photo between the twins: on catalog shots alone p4 is within 0.05 of p5 (measured
    here: 0.303 against 0.350), but p5's bag photos put it 0.09 ahead, past the margin. A new
    product has no photos to show, so the answer is doubted (the ranking kept); a clear photo
    of p5 is not. (No photo shows the very item: `photo_match_stands` 0.99.)"""
    answers = {}
    for doubt in (True, False):
        learning = LearningSettings(new_products_first={"doubt": doubt, "photo_match_stands": 0.99})
        matcher, geometry, bag = _twins(learning)
        [between] = matcher.rank(_bag_photo(geometry, bag, 0.38), 5)
        [clear] = matcher.rank(_bag_photo(geometry, bag, 0.0), 5)
        answers[doubt] = between, clear
    (doubted, clear), (undoubted, clear_too) = answers[True], answers[False]
    assert undoubted.status is MatchStatus.matched and undoubted.hits[0].product_id == "p5"
    assert doubted.status is MatchStatus.no_confident_match and doubted.doubted
    assert doubted.hits == undoubted.hits
    assert clear.status is clear_too.status is MatchStatus.matched and not clear.doubted


def test_a_confirmed_photo_of_the_very_item_is_not_doubted():
    """The same bag photo with the default `photo_match_stands` (0.93): p5's closest confirmed
    photo is 0.94 alike, a photo of the very item, and the answer stands."""
    matcher, geometry, bag = _twins(LearningSettings())
    [between] = matcher.rank(_bag_photo(geometry, bag, 0.38), 5)
    assert between.status is MatchStatus.matched and not between.doubted

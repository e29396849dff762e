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

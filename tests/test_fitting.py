"""Fitting a snapshot from the index (`matching/fitting.py`): each stage joins at its threshold,
and the learned metric only where it ranks held-out confirmations better than the space
without it, as `rank` itself ranks them."""

from __future__ import annotations

import numpy as np
import pytest

from worker.index import ReferenceImage, ScanRecord
from worker.index.memory import InMemoryIndex
from worker.matching.matcher import Matcher, MatchPolicy
from worker.settings import LearningSettings
from worker.vectors import SOURCE_CONFIRMED_SCAN, VectorLayout, unit_rows

DIM = 32


class Shop:
    """Products as directions; photos lean along a few strong directions every product shares
    (light, bag, hand) that a metric learned from confirmations can set aside."""

    def __init__(self, products: int, nuisance: float, seed: int = 11) -> None:
        self.rng = np.random.default_rng(seed)
        basis, _ = np.linalg.qr(self.rng.normal(size=(DIM, DIM)))
        self.products = [f"p{n:02d}" for n in range(products)]
        self.looks = {p: basis[:, n] for n, p in enumerate(self.products)}
        self.nuisance = basis[:, 24:27] * nuisance
        self.index = InMemoryIndex("shop", DIM)
        self.index.upsert([ReferenceImage(p, "front", p, self.look(p)) for p in self.products])

    def look(self, product: str) -> np.ndarray:
        return unit_rows(self.looks[product]).astype(np.float32)

    def photo(self, product: str) -> np.ndarray:
        look = self.looks[product] + self.nuisance @ self.rng.normal(size=3)
        return unit_rows(look + self.rng.normal(size=DIM) * 0.05).astype(np.float32)

    def confirm(self, count: int) -> None:
        """`count` confirmed photos, spread over the products in turn."""
        self.index.upsert(
            [
                ReferenceImage(
                    product,
                    f"scan-{n}",
                    product,
                    self.photo(product),
                    source=SOURCE_CONFIRMED_SCAN,
                    uri=f"s3://scans/{n}.jpg",
                    taken_at=float(n),
                )
                for n in range(count)
                for product in [self.products[n % len(self.products)]]
            ]
        )

    def scan(self, count: int) -> None:
        for n in range(count):
            photo = self.photo(self.products[n % len(self.products)])
            self.index.remember_scan(ScanRecord(f"s-{n}", photo, "s3://scans/k.jpg", 0.0))

    def report(self, **learning) -> dict:
        matcher = Matcher(
            self.index, VectorLayout(DIM), "shop", MatchPolicy(), LearningSettings(**learning)
        )
        return matcher.refit().report


def test_a_metric_that_ranks_held_out_confirmations_better_is_kept():
    shop = Shop(products=10, nuisance=1.5)
    shop.confirm(120)
    report = shop.report(lda={"min_confirmations": 100})
    assert report["lda"] and report["reranked_by"] == "lda"
    plain, learned = report["validation_recall_plain"], report["validation_recall_lda"]
    assert 0.0 <= plain < learned <= 1.0
    assert report["validation_queries"] > 0


def test_a_metric_that_ranks_them_worse_is_not_kept():
    # nothing to set aside, and too few dimensions to keep ten products apart
    shop = Shop(products=10, nuisance=0.0)
    shop.confirm(120)
    report = shop.report(lda={"min_confirmations": 100, "max_dim": 2})
    assert not report["lda"]
    assert report["validation_recall_plain"] == 1.0 > report["validation_recall_lda"]
    assert report["lda_skipped"] == "did not beat the plain space on held-out confirmations"


@pytest.mark.parametrize("confirmed, considered", [(99, False), (100, True)])
def test_a_metric_is_considered_from_its_minimum_of_confirmations(confirmed, considered):
    shop = Shop(products=10, nuisance=1.5)
    shop.confirm(confirmed)
    report = shop.report(lda={"min_confirmations": 100})
    assert ("validation_queries" in report) is considered
    assert report["confirmations"] == confirmed


@pytest.mark.parametrize("scans, whitened", [(99, False), (100, True)])
def test_scans_are_whitened_from_their_minimum(scans, whitened):
    shop = Shop(products=10, nuisance=1.5)
    shop.scan(scans)
    report = shop.report(whitening={"dim": 16, "min_scans": 100})
    assert report["centred"] and report["whitened"] is whitened


@pytest.mark.parametrize("products", [2, 10])
def test_the_whitened_score_scale_comes_from_the_catalog_images(products):
    shop = Shop(products=products, nuisance=1.5)
    shop.scan(100)
    report = shop.report(whitening={"dim": 16, "min_scans": 100})
    # two catalog images are enough to read margins in both spaces; 1 would mean none read
    assert report["whitened"] and report["whitened_score_scale"] != 1.0


def test_unknown_jewels_are_refused_from_the_minimum_of_confirmations_for_it():
    shop = Shop(products=10, nuisance=1.5)
    shop.confirm(20)
    confidence = shop.report(confidence={"min_refusal_labels": 20})["confidence"]
    assert confidence["labels"] == 20
    assert "margin_for_unknown_refusal" in confidence  # read on simulated unknown jewels


def test_with_the_confidence_off_the_report_still_counts_the_confirmations():
    shop = Shop(products=10, nuisance=1.5)
    shop.confirm(30)
    confidence = shop.report(confidence={"enabled": False})["confidence"]
    assert confidence["labels"] == 30 and "margin_for_unknown_refusal" not in confidence

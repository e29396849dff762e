"""The colour term once the worker has learned a space (whitening, LDA): colour is scored apart
from the image embedding, so that it tells twins apart where a scan shows colour and changes
nothing where it does not (a shelf or a busy backdrop: no colour descriptor).

Vectors here are built as the embedder builds them with JEWELMATCH_MODEL__COLOUR_WEIGHT:
image part and colour part side by side, weighted. Each design comes in two metals whose image
parts are the same; most scans show no colour, as photos on a busy backdrop.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.tiny_model import tiny_settings
from worker.index import ReferenceImage, ScanRecord
from worker.index.memory import InMemoryIndex
from worker.matching.matcher import Matcher, MatchPolicy
from worker.settings import LearningSettings
from worker.vectors import VectorLayout, unit_rows
from worker.vision import colour
from worker.vision.embedder import Embedder

WEIGHT = 0.5
DESIGNS = 8
METALS = ("gold", "silver")
PRODUCTS = [f"d{d}-{metal}" for d in range(DESIGNS) for metal in METALS]
SCANS = 240


VIEW_DIM = 32
COLOURED = VectorLayout(VIEW_DIM, WEIGHT)
"""As the embedder lays out a 32-d image embedding with the colour term at WEIGHT."""


class _Twins:
    def __init__(self, view_dim: int, seed: int = 3) -> None:
        self.rng = np.random.default_rng(seed)
        self.view_dim = view_dim
        basis, _ = np.linalg.qr(self.rng.normal(size=(view_dim, view_dim)))
        self.designs = basis[:, :DESIGNS]
        self.nuisance = basis[:, DESIGNS : DESIGNS + 3]
        self.detail = {
            p: basis[:, DESIGNS + 3 :] @ self.rng.normal(size=view_dim - DESIGNS - 3) * 0.02
            for p in PRODUCTS
        }
        self.photo_domain = basis[:, -1]
        self.metal_colour = {metal: unit_rows(self.rng.random(colour.DIM) ** 4) for metal in METALS}

    def _fused(self, image: np.ndarray, shown: np.ndarray) -> np.ndarray:
        joined = np.concatenate([unit_rows(image), np.sqrt(WEIGHT) * shown]) / np.sqrt(1 + WEIGHT)
        return joined.astype(np.float32)

    def catalog(self, product: str) -> np.ndarray:
        design, metal = int(product[1 : product.index("-")]), product.split("-")[1]
        image = self.designs[:, design] + self.detail[product]  # twins differ by a hair
        return self._fused(image, self.metal_colour[metal])

    def photo(self, product: str, shows_colour: bool) -> np.ndarray:
        design, metal = int(product[1 : product.index("-")]), product.split("-")[1]
        look = self.designs[:, design] + self.nuisance @ self.rng.normal(size=3) * 0.6
        look = look + self.photo_domain + self.rng.normal(size=self.view_dim) * 0.05
        seen = self.metal_colour[metal] + self.rng.random(colour.DIM) * 0.05
        shown = unit_rows(seen) if shows_colour else np.zeros(colour.DIM)
        return self._fused(look, shown)


def _fitted_matcher(twins: _Twins, image_only: bool = False) -> Matcher:
    """A matcher whose scans (a tenth of them showing colour) have whitened the space; with
    `image_only`, the same vectors without their colour part, for a colour-free embedder."""

    def vector(fused: np.ndarray) -> np.ndarray:
        return unit_rows(fused[: twins.view_dim]) if image_only else fused

    layout = VectorLayout(VIEW_DIM) if image_only else COLOURED
    index = InMemoryIndex("twins", VIEW_DIM + (0 if image_only else colour.DIM))
    learning = LearningSettings(whitening={"dim": 8, "min_scans": 100})
    matcher = Matcher(index, layout, "twins", MatchPolicy(), learning)
    index.upsert([ReferenceImage(p, "front", p, vector(twins.catalog(p))) for p in PRODUCTS])
    for n in range(SCANS):
        photo = twins.photo(PRODUCTS[n % len(PRODUCTS)], shows_colour=n % 10 == 0)
        index.remember_scan(ScanRecord(f"scan-{n}", vector(photo), "s3://scans/k.jpg", 0.0))
    matcher.refit()
    assert matcher.snapshot.report["whitened"]
    return matcher


@pytest.fixture()
def fitted():
    twins = _Twins(VIEW_DIM)
    return twins, _fitted_matcher(twins)


def test_the_embedder_lays_out_its_vectors_so(tiny_model_dir, tmp_path):
    embedder = Embedder(
        tiny_settings(
            tiny_model_dir, tmp_path / "model-cache", scan_crops=[1.0], colour_weight=WEIGHT
        )
    )
    assert embedder.layout == COLOURED
    assert embedder.dim == VIEW_DIM + colour.DIM


def test_the_learned_space_is_the_image_embeddings_alone(fitted):
    _, matcher = fitted
    snapshot = matcher.snapshot
    assert np.allclose(snapshot.space.projection[VIEW_DIM:], 0.0, atol=1e-6)
    assert not snapshot.centring.image_means.scan[VIEW_DIM:].any()
    assert not snapshot.centring.image_means.catalog[VIEW_DIM:].any()
    assert "colour" in snapshot.stages


def test_colour_tells_twins_apart_in_the_learned_space(fitted):
    twins, matcher = fitted
    truth = [PRODUCTS[n % len(PRODUCTS)] for n in range(64)]
    rankings = matcher.rank(np.stack([twins.photo(p, shows_colour=True) for p in truth]), 5)
    right = np.mean([r.hits[0].product_id == t for r, t in zip(rankings, truth, strict=True)])
    assert right >= 0.9


def test_a_scan_without_colour_is_ranked_as_without_the_colour_term(fitted):
    """The same scans, ranked by a matcher that never saw colour (the catalog images' colour
    must not shift a colourless scan's ranking through the learned space)."""
    twins, matcher = fitted
    same_scans = _Twins(twins.view_dim)  # the same seed: the same catalog and scans
    image_only = _fitted_matcher(same_scans, True)
    photos = np.stack([twins.photo(p, shows_colour=False) for p in PRODUCTS * 4])
    with_term = matcher.rank(photos, 5)
    without = image_only.rank(unit_rows(photos[:, : twins.view_dim]), 5)
    for one, other in zip(with_term, without, strict=True):
        assert [h.product_id for h in one.hits] == [h.product_id for h in other.hits]
        assert [h.score for h in one.hits] == pytest.approx([h.score for h in other.hits], rel=1e-3)

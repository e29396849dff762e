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

from worker.index import ReferenceImage, ScanRecord, open_index
from worker.matching.matcher import Matcher, MatchPolicy
from worker.settings import IndexSettings, LearningSettings, ModelSettings
from worker.vision import colour
from worker.vision.embedder import Embedder, unit_rows

WEIGHT = 0.5
DESIGNS = 8
METALS = ("gold", "silver")
PRODUCTS = [f"d{d}-{metal}" for d in range(DESIGNS) for metal in METALS]
SCANS = 240


@pytest.fixture(scope="module")
def coloured_embedder(tiny_model_dir, tmp_path_factory) -> Embedder:
    return Embedder(
        ModelSettings(
            name=f"local-dir:{tiny_model_dir}",
            threads=1,
            runtime="torch",
            scan_crops=[1.0],
            colour_weight=WEIGHT,
            cache_dir=tmp_path_factory.mktemp("model-cache"),
        )
    )


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


def _fitted_matcher(path, embedder, twins: _Twins, image_only: bool = False) -> Matcher:
    """A matcher whose scans (a tenth of them showing colour) have whitened the space; with
    `image_only`, the same vectors without their colour part, for a colour-free embedder."""

    def vector(fused: np.ndarray) -> np.ndarray:
        return unit_rows(fused[: twins.view_dim]) if image_only else fused

    index = open_index(IndexSettings(path=path), "twins", embedder.dim)
    learning = LearningSettings(whiten_dim=8, min_scans_for_whitening=100)
    matcher = Matcher(embedder, index, MatchPolicy(), learning)
    index.upsert([ReferenceImage(p, "front", p, vector(twins.catalog(p))) for p in PRODUCTS])
    for n in range(SCANS):
        photo = twins.photo(PRODUCTS[n % len(PRODUCTS)], shows_colour=n % 10 == 0)
        index.remember_scan(ScanRecord(f"scan-{n}", vector(photo), "s3://scans/k.jpg", 0.0))
    matcher.refit()
    assert matcher.metric.report["whitened"]
    return matcher


@pytest.fixture()
def fitted(tmp_path, coloured_embedder):
    twins = _Twins(coloured_embedder.view_dim)
    matcher = _fitted_matcher(tmp_path / "index", coloured_embedder, twins)
    yield twins, matcher
    matcher.index.close()


def test_the_learned_space_is_the_image_embeddings_alone(fitted, coloured_embedder):
    _, matcher = fitted
    view_dim = coloured_embedder.view_dim
    assert coloured_embedder.dim == view_dim + colour.DIM
    assert np.allclose(matcher.metric.projection[view_dim:], 0.0, atol=1e-6)
    assert not matcher.metric.image_means.scan[view_dim:].any()
    assert not matcher.metric.image_means.catalog[view_dim:].any()


def test_colour_tells_twins_apart_in_the_learned_space(fitted):
    twins, matcher = fitted
    truth = [PRODUCTS[n % len(PRODUCTS)] for n in range(64)]
    rankings = matcher.rank(np.stack([twins.photo(p, shows_colour=True) for p in truth]), 5)
    right = np.mean([r.hits[0].product_id == t for r, t in zip(rankings, truth, strict=True)])
    assert right >= 0.9


def test_a_scan_without_colour_is_ranked_as_without_the_colour_term(
    fitted, tmp_path, tiny_embedder
):
    """The same scans, ranked by a matcher that never saw colour (the catalog images' colour
    must not shift a colourless scan's ranking through the learned space)."""
    twins, matcher = fitted
    assert tiny_embedder.dim == twins.view_dim
    same_scans = _Twins(twins.view_dim)  # the same seed: the same catalog and scans
    image_only = _fitted_matcher(tmp_path / "image-only", tiny_embedder, same_scans, True)
    try:
        photos = np.stack([twins.photo(p, shows_colour=False) for p in PRODUCTS * 4])
        with_term = matcher.rank(photos, 5)
        without = image_only.rank(unit_rows(photos[:, : twins.view_dim]), 5)
        for one, other in zip(with_term, without, strict=True):
            assert [h.product_id for h in one.hits] == [h.product_id for h in other.hits]
            assert [h.score for h in one.hits] == pytest.approx(
                [h.score for h in other.hits], rel=1e-3
            )
    finally:
        image_only.index.close()

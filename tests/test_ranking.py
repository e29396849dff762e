"""The one ranking's own rules (`worker/matching/ranking.py`), on the in-memory index with a
plain re-ranking space: the runner-up read for the margin whatever `top_k`, and prototypes
that follow the index (what each stage does is in its own test file)."""

from __future__ import annotations

import numpy as np
import pytest

from worker.index.base import ReferenceImage
from worker.index.memory import InMemoryIndex
from worker.matching.ranking import Prototypes, Snapshot, rank
from worker.matching.stages.centring import DomainMeans
from worker.matching.stages.space import RerankSpace
from worker.vectors import SOURCE_CONFIRMED_SCAN, VectorLayout

DIM = 4
LAYOUT = VectorLayout(DIM)
PLAIN = RerankSpace("whitening", np.eye(DIM, dtype=np.float32), DomainMeans())


def unit(*values: float) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def catalog_image(product_id: str, vector: np.ndarray, image_id: str = "front"):
    return ReferenceImage(product_id, image_id, f"SKU-{product_id}", vector)


def photo(product_id: str, vector: np.ndarray, n: int = 1):
    return ReferenceImage(
        product_id, f"scan:{n}", f"SKU-{product_id}", vector, source=SOURCE_CONFIRMED_SCAN
    )


@pytest.fixture
def index() -> InMemoryIndex:
    index = InMemoryIndex("memory", DIM)
    index.upsert(
        [
            catalog_image("a", unit(1, 0, 0, 0)),
            catalog_image("b", unit(0.8, 0.6, 0, 0)),
            catalog_image("c", unit(0, 0, 1, 0)),
        ]
    )
    return index


@pytest.mark.parametrize("space", [None, PLAIN], ids=["searched", "re-ranked"])
def test_one_product_asked_still_leads_by_its_margin_over_the_next(index, space):
    snapshot = Snapshot(layout=LAYOUT, space=space)
    scan = unit(1, 0, 0, 0)[None, :]
    [one] = rank(snapshot, index, Prototypes(index, LAYOUT), scan, top_k=1)
    [five] = rank(snapshot, index, Prototypes(index, LAYOUT), scan, top_k=5)
    assert [hit.product_id for hit in one.hits] == ["a"]
    assert one.evidence == pytest.approx((1.0, 0.8))
    assert (one.status, one.confidence) == (five.status, five.confidence)


def test_a_prototype_follows_the_index_after_its_ttl_or_when_its_product_is_forgotten(index):
    cached = Prototypes(index, LAYOUT, ttl=3600)
    before = cached.get("a", PLAIN, catalog_only=False).image
    index.upsert([photo("a", unit(1, 1, 0, 0))])
    assert np.allclose(cached.get("a", PLAIN, catalog_only=False).image, before)  # cached
    cached.forget(["b"])
    assert np.allclose(cached.get("a", PLAIN, catalog_only=False).image, before)
    cached.forget(["a"])
    after = cached.get("a", PLAIN, catalog_only=False).image
    assert not np.allclose(after, before)
    fresh = Prototypes(index, LAYOUT, ttl=0.0)  # expired at once: read on every ask
    fresh.get("c", PLAIN, catalog_only=False)
    index.upsert([photo("c", unit(0, 1, 1, 0))])
    assert fresh.get("c", PLAIN, catalog_only=False).image == pytest.approx(
        _mean(unit(0, 0, 1, 0), unit(0, 1, 1, 0))
    )


def _mean(*rows: np.ndarray) -> np.ndarray:
    m = np.mean(rows, axis=0)
    return m / np.linalg.norm(m)


def test_catalog_only_prototypes_leave_photos_out_unless_a_product_has_only_photos(index):
    prototypes = Prototypes(index, LAYOUT)
    index.upsert([photo("a", unit(1, 1, 0, 0)), photo("d", unit(0, 0, 0, 1))])
    assert prototypes.get("a", PLAIN, catalog_only=True).image == pytest.approx(unit(1, 0, 0, 0))
    assert prototypes.get("a", PLAIN, catalog_only=False).image == pytest.approx(
        _mean(unit(1, 0, 0, 0), unit(1, 1, 0, 0))
    )
    # a product known by its confirmed photo alone keeps it as its prototype
    assert prototypes.get("d", PLAIN, catalog_only=True).image == pytest.approx(unit(0, 0, 0, 1))

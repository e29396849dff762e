"""Keeping the index in step with the PIM (`worker/matching/catalog.py`), on the in-memory
index: versions at their edges, what an update keeps and removes, corrections, and what is
reported as a change. (The same through the handlers and a real index: test_handlers.py,
test_worker_integration.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from shared.contract import ProductDeleted, ProductUpserted
from worker.index import SOURCE_CATALOG, SOURCE_CONFIRMED_SCAN, ScanRecord
from worker.index.memory import InMemoryIndex
from worker.matching.catalog import Catalog, EmbeddedImage, confirmed_scan_image_id

DIM = 8


def vector(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def upsert(product_id: str = "p1", version: int | None = None, keys=("front",)):
    return ProductUpserted(
        product_id=product_id,
        sku=f"SKU-{product_id}",
        images=[{"image_id": key, "uri": f"s3://catalog/{product_id}/{key}.jpg"} for key in keys],
        version=version,
    )


@pytest.fixture
def catalog():
    changes: list[list[str]] = []
    photos: list[str] = []
    catalog = Catalog(
        InMemoryIndex("memory", DIM),
        on_change=lambda ids, count: changes.append(list(ids)),
        on_photo=photos.append,
    )
    catalog.changes, catalog.photos = changes, photos
    return catalog


def applied(catalog: Catalog, event: ProductUpserted, unusable=()) -> bool:
    """Apply `event` as the handler does, unless it is stale; whether it was applied."""
    if catalog.is_stale(event.product_id, event.version):
        return False
    plan = catalog.plan(event)
    embedded = [
        EmbeddedImage(image, vector(hash(image.uri) % 1000), etag="e1")
        for image in plan.to_embed
        if image.image_id not in unusable
    ]
    catalog.apply(event, plan, embedded, list(unusable))
    return True


def deleted(catalog: Catalog, version: int | None) -> bool:
    if catalog.is_stale("p1", version):
        return False
    catalog.delete(ProductDeleted(product_id="p1", version=version))
    return True


def image_ids(catalog: Catalog, product_id: str = "p1") -> set[str]:
    return {image.image_id for image in catalog.index.product_images(product_id)}


def test_a_version_after_unversioned_events_applies_and_the_same_version_again_too(catalog):
    assert applied(catalog, upsert())
    assert applied(catalog, upsert(version=5))
    assert applied(catalog, upsert(version=5))  # a redelivery: applied again, nothing changes
    assert not applied(catalog, upsert(version=4))


def test_a_deletion_outranks_an_update_of_its_own_version(catalog):
    assert applied(catalog, upsert(version=3))
    assert deleted(catalog, 3)
    assert not applied(catalog, upsert(version=3))
    assert image_ids(catalog) == set()
    assert applied(catalog, upsert(version=4))


def test_unversioned_events_keep_the_last_version_known(catalog):
    assert applied(catalog, upsert(version=5))
    assert deleted(catalog, None)  # an unversioned deletion: its tombstone keeps version 5
    assert not applied(catalog, upsert(version=4))
    assert applied(catalog, upsert())  # an unversioned create brings it back, still at 5
    state = catalog.index.product_state("p1")
    assert (state.version, state.deleted) == (5, False)
    assert not applied(catalog, upsert(version=4))
    assert applied(catalog, upsert(version=6))


def test_an_unversioned_product_deleted_and_created_again_is_no_longer_deleted(catalog):
    assert applied(catalog, upsert())
    assert deleted(catalog, None)
    assert applied(catalog, upsert())
    assert not catalog.index.product_state("p1").deleted
    assert deleted(catalog, None)
    assert applied(catalog, upsert(version=1))  # after a deletion of no version, any version


def scan(scan_id: str = "s1", at: float = 1_700_000_000.0) -> ScanRecord:
    return ScanRecord(scan_id, vector(99), f"s3://scans/{scan_id}.jpg", at)


def test_an_update_keeps_confirmed_photos_and_removes_unlisted_and_unusable_images(catalog):
    assert applied(catalog, upsert(keys=("front", "side", "back")))
    assert catalog.confirm("p1", scan())
    assert applied(catalog, upsert(keys=("front", "side")), unusable=("side",))
    # "back" is no longer listed, "side" cannot be read any more: both go; the photo stays
    assert image_ids(catalog) == {"front", confirmed_scan_image_id("s1")}


def test_a_confirmed_photo_keeps_when_it_was_taken_and_a_correction_moves_it(catalog):
    for product_id in ("p1", "p2"):
        assert applied(catalog, upsert(product_id))
    record = scan(at=1_700_000_123.0)
    assert catalog.confirm("p1", record)
    [photo] = [i for i in catalog.index.product_images("p1") if i.source != SOURCE_CATALOG]
    assert (photo.source, photo.taken_at) == (SOURCE_CONFIRMED_SCAN, 1_700_000_123.0)
    catalog.changes.clear()
    assert catalog.confirm("p2", record)  # a person corrected it
    assert image_ids(catalog, "p1") == {"front"}
    assert confirmed_scan_image_id("s1") in image_ids(catalog, "p2")
    assert sorted(map(sorted, catalog.changes)) == [["p1"], ["p2"]]
    assert catalog.photos == ["p1", "p2"]  # the learner hears of each product's new photo
    assert not catalog.confirm("unknown", scan("s2"))  # nothing to take sku and name from


def test_an_update_that_only_removes_images_is_reported_as_a_change(catalog):
    assert applied(catalog, upsert(keys=("front", "back")))
    catalog.changes.clear()
    assert applied(catalog, upsert(keys=("front",)))
    assert catalog.changes == [["p1"]]
    catalog.changes.clear()
    assert applied(catalog, upsert(keys=("front",)))  # nothing embedded, nothing removed
    assert catalog.changes == []

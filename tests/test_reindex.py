"""Changing the model: re-embed the catalog from moto's S3 server into a new index beside the
old one, on both back ends, while queries keep being answered from the old one."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from shared.contract import ProductDeleted, ProductUpserted
from tests.conftest import CATALOG_BUCKET, SCANS_BUCKET, WHOLE_CATALOG_VIEWS, jpeg_bytes
from tests.support.pictures import set_picture
from tests.support.tiny_model import write_tiny_model
from worker.index import SOURCE_CONFIRMED_SCAN, ScanRecord
from worker.index.edge import EdgeIndex, current_model, make_current
from worker.index.server import references_alias
from worker.matching.catalog import Catalog, EmbeddedImage
from worker.pipeline.storage import S3ImageStore
from worker.service.reindex import reindex
from worker.settings import ImageSettings, IndexSettings, ModelSettings, S3Settings
from worker.tools.synthetic import catalog_designs, render
from worker.vision.embedder import Embedder, ImageKind

pytestmark = pytest.mark.integration

DESIGNS = catalog_designs(8, seed=31)


def embedder_from(directory) -> Embedder:
    return Embedder(
        ModelSettings(
            name=f"local-dir:{directory}", threads=1, scan_crops=[1.0], **WHOLE_CATALOG_VIEWS
        )
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("reindex-models")
    return (
        embedder_from(write_tiny_model(root / "model-old", seed=1)),
        embedder_from(write_tiny_model(root / "model-new", seed=2)),
    )


def pictures():
    return {design.product_id: render(design, 160) for design in DESIGNS}


def test_reindex_builds_the_new_index_while_the_old_one_answers(indexes, models, s3, s3_endpoint):
    backend, settings, (source, target) = indexes
    old, new = models
    images = pictures()
    for product_id, picture in images.items():
        s3.put_object(Bucket=CATALOG_BUCKET, Key=f"{product_id}.jpg", Body=jpeg_bytes(picture))
    s3.put_object(Bucket=SCANS_BUCKET, Key="bag-1.jpg", Body=jpeg_bytes(images["p002"]))
    catalog = Catalog(source)
    for design in DESIGNS:  # the catalog as the old model indexed it
        event = ProductUpserted(
            product_id=design.product_id,
            sku=design.sku,
            images=[
                {"image_id": "front", "bucket": CATALOG_BUCKET, "key": f"{design.product_id}.jpg"}
            ],
        )
        vector = old.embed([images[design.product_id]], ImageKind.catalog)[0]
        catalog.apply(event, catalog.plan(event), [EmbeddedImage(event.images[0], vector)])
    catalog.confirm(
        "p002",
        ScanRecord(
            scan_id="bag-1",
            vector=old.embed([images["p002"]], ImageKind.scan)[0],
            image_uri=f"s3://{SCANS_BUCKET}/bag-1.jpg",
            created_at=0.0,
        ),
    )

    old_queries = old.embed(list(images.values()), ImageKind.scan)
    answered, wrong, errors = [0], [], []
    done = threading.Event()

    def keep_querying() -> None:  # the workers in service, meanwhile
        while not done.is_set() or answered[0] < 20:
            try:
                for expected, hits in zip(images, source.search(old_queries, 1), strict=True):
                    answered[0] += 1
                    if hits[0].product_id != expected:
                        wrong.append((expected, hits[0].product_id))
            except Exception as error:
                errors.append(error)
                return

    querying = threading.Thread(target=keep_querying)
    querying.start()
    store = S3ImageStore(
        S3Settings(endpoint_url=s3_endpoint, allowed_buckets=[CATALOG_BUCKET, SCANS_BUCKET]),
        max_bytes=10_000_000,
    )
    seen: list[int] = []
    report = reindex(source, target, store, new, ImageSettings(), 3, on_progress=seen.append)
    assert sum(seen) == report.images
    done.set()
    querying.join(timeout=60)
    assert errors == [] and wrong == [] and answered[0] >= 20

    assert (report.images, report.reindexed, report.skipped) == (9, 9, 0)
    assert target.count() == source.count() == 9
    confirmed = [i for i in target.product_images("p002") if i.source == SOURCE_CONFIRMED_SCAN]
    assert [i.image_id for i in confirmed] == ["scan:bag-1"]
    new_queries = new.embed(list(images.values()), ImageKind.scan)
    assert [hits[0].product_id for hits in target.search(new_queries, 1)] == list(images)
    assert not np.allclose(
        old_queries[:, : min(old.dim, new.dim)], new_queries[:, : min(old.dim, new.dim)]
    )  # really another model

    # the switch: atomic, and the old index stays intact for a rollback
    if backend == "edge":
        assert current_model(settings.path) == old.model_id
        make_current(settings.path, new.model_id)
        assert current_model(settings.path) == new.model_id
    else:
        assert source.current_collection() == source.references_collection
        target.make_current()
        assert target.current_collection() == target.references_collection
        aliases = {a.alias_name for a in target._client.get_aliases().aliases}
        assert aliases == {references_alias(settings.collection_prefix)}
    assert source.count() == 9

    # a catch-up pass brings the new index level with events that reached only the old one,
    # embedding only what they changed
    source.delete_product("p001")
    s3.put_object(Bucket=CATALOG_BUCKET, Key="p003-new.jpg", Body=jpeg_bytes(images["p004"]))
    replaced = ProductUpserted(
        product_id="p003",
        sku="p003",
        images=[{"image_id": "front", "bucket": CATALOG_BUCKET, "key": "p003-new.jpg"}],
    )
    vector = old.embed([images["p004"]], ImageKind.catalog)[0]
    catalog.apply(replaced, catalog.plan(replaced), [EmbeddedImage(replaced.images[0], vector)])
    again = reindex(source, target, store, new, ImageSettings(), 4)
    assert (again.images, again.reindexed, again.unchanged, again.removed) == (8, 1, 7, 1)
    assert target.product_images("p001") == [] and target.count() == 8
    as_stored = new.embed([images["p004"]], ImageKind.catalog)
    assert {hit.product_id for hit in target.search(as_stored, 2)[0]} == {"p003", "p004"}
    assert [image.uri for image in target.product_images("p003")] == [
        f"s3://{CATALOG_BUCKET}/p003-new.jpg"
    ]


def test_reindex_carries_versions_tombstones_and_etags(indexes, models, s3, s3_endpoint):
    """A late, older product event must stay stale once the new index is in service: the
    versions applied and the deleted products' tombstones move with the images."""
    _, _, (source, target) = indexes
    old, new = models
    images = pictures()
    catalog = Catalog(source)
    for design in DESIGNS[:2]:
        key = f"{design.product_id}.jpg"
        s3.put_object(Bucket=CATALOG_BUCKET, Key=key, Body=jpeg_bytes(images[design.product_id]))
        event = ProductUpserted(
            product_id=design.product_id,
            sku=design.sku,
            version=3,
            images=[{"image_id": "front", "bucket": CATALOG_BUCKET, "key": key}],
        )
        vector = old.embed([images[design.product_id]], ImageKind.catalog)[0]
        embedded = EmbeddedImage(event.images[0], vector, etag=f"etag-{design.product_id}")
        catalog.apply(event, catalog.plan(event), [embedded])
    kept, deleted = DESIGNS[0].product_id, DESIGNS[1].product_id
    catalog.delete(ProductDeleted(product_id=deleted, version=4))
    store = S3ImageStore(
        S3Settings(endpoint_url=s3_endpoint, allowed_buckets=[CATALOG_BUCKET]), max_bytes=10**7
    )

    report = reindex(source, target, store, new, ImageSettings(), 3)

    assert (report.reindexed, report.product_states) == (1, 2)
    moved = Catalog(target)
    assert moved.is_stale(kept, 2) and not moved.is_stale(kept, 3)
    assert moved.is_stale(deleted, 3) and moved.is_stale(deleted, 4)  # not brought back
    assert target.product_state(deleted).deleted
    assert [image.etag for image in target.product_images(kept)] == [f"etag-{kept}"]


def test_a_set_is_cut_into_pieces_again_by_a_model_that_cuts_sets(tmp_path, s3, s3_endpoint):
    """The pieces are derived from their image: a reindex cuts them anew for the new model (or
    leaves them out), never re-embeds a stored piece as if it were a picture."""
    s3.put_object(Bucket=CATALOG_BUCKET, Key="set.jpg", Body=jpeg_bytes(set_picture()))
    directory = write_tiny_model(tmp_path / "tiny", seed=3)
    cutting = Embedder(ModelSettings(name=f"local-dir:{directory}", threads=1, catalog_parts=True))
    plain = embedder_from(directory)
    settings = IndexSettings(path=tmp_path / "index")
    source = EdgeIndex(settings, cutting.model_id, cutting.dim)
    event = ProductUpserted(
        product_id="set-1",
        sku="SET-1",
        images=[{"image_id": "front", "bucket": CATALOG_BUCKET, "key": "set.jpg"}],
    )
    picture = set_picture()
    catalog = Catalog(source)
    vector, parts = cutting.embed([picture])[0], cutting.embed_parts([picture])[0]
    catalog.apply(event, catalog.plan(event), [EmbeddedImage(event.images[0], vector, parts=parts)])
    store = S3ImageStore(
        S3Settings(endpoint_url=s3_endpoint, allowed_buckets=[CATALOG_BUCKET]), max_bytes=10**7
    )
    expected = ["front", "front~part-1", "front~part-2", "front~part-3"]
    assert sorted(i.image_id for i in source.product_images("set-1")) == expected
    for embedder, stored in ((plain, ["front"]), (cutting, expected)):
        target = EdgeIndex(
            IndexSettings(path=tmp_path / embedder.model_id), embedder.model_id, embedder.dim
        )
        report = reindex(source, target, store, embedder, ImageSettings())
        assert (report.images, report.reindexed, report.skipped) == (1, 1, 0)
        assert sorted(i.image_id for i in target.product_images("set-1")) == stored
        again = reindex(source, target, store, embedder, ImageSettings())
        assert (again.reindexed, again.unchanged, again.removed) == (0, 1, 0)
        assert sorted(i.image_id for i in target.product_images("set-1")) == stored
        target.close()
    source.close()


class _CountingStore:
    """moto's S3 server behind a count of the reads in flight at once."""

    def __init__(self, store: S3ImageStore) -> None:
        self._store, self._lock = store, threading.Lock()
        self.in_flight = self.most_at_once = 0

    def fetch(self, ref):
        with self._lock:
            self.in_flight += 1
            self.most_at_once = max(self.most_at_once, self.in_flight)
        try:
            time.sleep(0.2)  # a remote store's wait, long enough for reads to meet
            return self._store.fetch(ref)
        finally:
            with self._lock:
                self.in_flight -= 1


@pytest.mark.parametrize("threads", [1, 4])
def test_a_pages_images_are_read_from_s3_in_parallel(indexes, models, s3, s3_endpoint, threads):
    _, _, (source, target) = indexes
    old, new = models
    images = pictures()
    catalog = Catalog(source)
    for design in DESIGNS:
        key = f"{design.product_id}.jpg"
        s3.put_object(Bucket=CATALOG_BUCKET, Key=key, Body=jpeg_bytes(images[design.product_id]))
        event = ProductUpserted(
            product_id=design.product_id,
            sku=design.sku,
            images=[{"image_id": "front", "bucket": CATALOG_BUCKET, "key": key}],
        )
        vector = old.embed([images[design.product_id]], ImageKind.catalog)[0]
        catalog.apply(event, catalog.plan(event), [EmbeddedImage(event.images[0], vector)])
    store = _CountingStore(
        S3ImageStore(
            S3Settings(endpoint_url=s3_endpoint, allowed_buckets=[CATALOG_BUCKET]), max_bytes=10**7
        )
    )

    report = reindex(source, target, store, new, ImageSettings(), 8, fetch_threads=threads)

    assert (report.reindexed, target.count()) == (len(DESIGNS), len(DESIGNS))
    assert store.most_at_once == threads  # 8 images a page, `threads` of them at once

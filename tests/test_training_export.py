"""What `jewelmatch train` reads from the index (`worker/tools/training/export.py`): what
trains never sees what it is judged on. The latest confirmations are held out, and so is a
product-disjoint share; each photo is judged or trained on, never both. Built on the
in-memory index and a folder store, with photo times the test sets."""

from __future__ import annotations

import numpy as np
from PIL import Image

from worker.index.base import SOURCE_CONFIRMED_SCAN, ReferenceImage
from worker.index.memory import InMemoryIndex
from worker.pipeline.storage import LocalImageStore
from worker.settings import ImageSettings
from worker.tools.training.export import export_confirmations, held_out_product
from worker.vectors import part_image_id

PRODUCTS, PHOTOS, RECENT_SHARE, PRODUCT_SHARE = 12, 10, 0.2, 0.4


def taken_at(product: int, photo: int) -> float:
    """Photo n of every product after photo n-1 of all of them; within a round, by product."""
    return 1_000_000.0 + 1000 * photo + product


def image(product_id: str, image_id: str, uri: str, **extra) -> ReferenceImage:
    return ReferenceImage(
        product_id, image_id, product_id, np.ones(4, np.float32), uri=uri, **extra
    )


def photo_id(product_id: str, n: int) -> str:
    """Ids that sort against the photos' times: the order must come from the times."""
    return f"scan:{product_id}-{PHOTOS - n:02d}"


UNCONFIRMED = next(f"new-{n}" for n in range(100) if held_out_product(f"new-{n}", PRODUCT_SHARE, 0))
"""A product with a catalog image and no confirmed photo, which the draw would hold out."""


def deployment(tmp_path) -> tuple[InMemoryIndex, LocalImageStore]:
    """Products p00..p11, each with a catalog image (p00's cut into a piece too) and ten
    confirmed photos, a product with confirmed photos but no catalog image left, and one
    with a catalog image and no confirmed photo."""
    for bucket in ("catalog", "scans"):
        (tmp_path / "store" / bucket).mkdir(parents=True)
    index = InMemoryIndex("m", 4)
    references = []
    for k in range(PRODUCTS):
        product_id = f"p{k:02d}"
        Image.new("RGB", (32, 32), (k, 0, 0)).save(tmp_path / f"store/catalog/{product_id}.png")
        uri = f"s3://catalog/{product_id}.png"
        references.append(image(product_id, "front", uri))
        for n in range(PHOTOS):
            key = f"{product_id}-{n}.png"
            Image.new("RGB", (32, 32), (k, n, 9)).save(tmp_path / "store/scans" / key)
            references.append(
                image(
                    product_id,
                    photo_id(product_id, n),
                    f"s3://scans/{key}",
                    source=SOURCE_CONFIRMED_SCAN,
                    taken_at=taken_at(k, n),
                )
            )
    references.append(image("p00", part_image_id("front", 1), "s3://catalog/p00.png"))
    Image.new("RGB", (32, 32), (0, 99, 0)).save(tmp_path / "store/catalog/unconfirmed.png")
    references.append(image(UNCONFIRMED, "front", "s3://catalog/unconfirmed.png"))
    Image.new("RGB", (32, 32)).save(tmp_path / "store/scans/orphan.png")
    references.append(
        image(
            "orphan",
            "scan:orphan",
            "s3://scans/orphan.png",
            source=SOURCE_CONFIRMED_SCAN,
            taken_at=taken_at(99, 9),
        )
    )
    index.upsert(references)
    store = LocalImageStore(tmp_path / "store", ["catalog", "scans"], 10**6)
    return index, store


def test_the_latest_confirmations_and_a_share_of_products_are_judged_never_trained(tmp_path):
    index, store = deployment(tmp_path)
    report = export_confirmations(
        index,
        store,
        ImageSettings(),
        tmp_path / "data",
        RECENT_SHARE,
        PRODUCT_SHARE,
        seed=0,
        outside=1,
    )
    by_split: dict[str, set[str]] = {"train": set(), "val": set(), "catalog": set()}
    for file, uri in report.uris.items():
        kind = file.split("/")[1].split("_")[1] if "query_" in file else "catalog"
        by_split[kind].add(uri)
    assert not by_split["train"] & by_split["val"]  # never both

    held_out = set(report.held_out_products)
    assert held_out and len(held_out) < PRODUCTS  # the draw leaves products on both sides
    assert "orphan" not in held_out | {file.split("/")[0] for file in report.uris}
    assert UNCONFIRMED not in held_out  # nothing of it to judge: no role taken for nothing
    trained = [k for k in range(PRODUCTS) if f"p{k:02d}" not in held_out]
    # of the trained products' photos, the latest share overall is judged: here every
    # product's last photo, then the ones before, as the times go
    latest = sorted(((taken_at(k, n), k, n) for k in trained for n in range(PHOTOS)), reverse=True)[
        : round(RECENT_SHARE * len(trained) * PHOTOS)
    ]
    judged = {f"s3://scans/p{k:02d}-{n}.png" for _, k, n in latest}
    trained_uris = {f"s3://scans/p{k:02d}-{n}.png" for k in trained for n in range(PHOTOS)}
    assert by_split["val"] & trained_uris == judged
    assert by_split["train"] & trained_uris == trained_uris - judged
    # a held-out product is judged on all its photos (left out, or judged as brand new) or,
    # kept in the catalog, on its own latest share, its earlier ones confirmed, never trained
    own_latest = round(RECENT_SHARE * PHOTOS)
    for product_id in held_out:
        photos = [f"s3://scans/{product_id}-{n}.png" for n in range(PHOTOS)]
        if product_id in report.kept_products:
            assert set(photos[-own_latest:]) <= by_split["val"]
            assert set(photos[:-own_latest]) <= by_split["train"]
        else:
            assert set(photos) <= by_split["val"]
    assert len(report.outside_products) == 1 and report.kept_products  # each role drawn
    assert report.held_out_references == (PHOTOS - own_latest) * len(report.kept_products)
    assert report.train_photos == len(by_split["train"]) - report.held_out_references
    # catalog images whole, never the pieces cut from them
    catalog = {f"s3://catalog/p{k:02d}.png" for k in range(PRODUCTS)}
    assert by_split["catalog"] == catalog | {"s3://catalog/unconfirmed.png"}
    assert report.catalog_images == PRODUCTS + 1

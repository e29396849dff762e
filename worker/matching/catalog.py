"""Keeping the index in step with the PIM's catalog and with confirmed scans.

Every operation is idempotent: a product event applied twice leaves the index as once
(point ids are deterministic, and an image already stored from the same object, same URI and
same ETag, is not embedded again). Product events may carry a version: one older than the
last applied (a deletion included) changes nothing. Every change is reported to `on_change`
(the matcher's learned state).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from shared.contract import ProductDeleted, ProductImage, ProductUpserted
from worker.index import (
    SOURCE_CATALOG,
    SOURCE_CONFIRMED_SCAN,
    ProductState,
    ReferenceImage,
    ScanRecord,
    StoredImage,
    VectorIndex,
)
from worker.vectors import is_part, whole_image_id, with_pieces


@dataclass(frozen=True)
class SyncPlan:
    """What an upsert event changes: images to embed and add, catalog images to remove (with
    their pieces)."""

    to_embed: list[ProductImage]
    to_remove: list[str]
    stored_parts: dict[str, list[str]] = field(default_factory=dict)
    """The reference ids of each stored catalog image's pieces (`catalog_parts`), by image id."""


@dataclass(frozen=True)
class EmbeddedImage:
    image: ProductImage
    vector: np.ndarray
    etag: str | None = None
    parts: np.ndarray | None = None
    """The vectors of its separate pieces, when it shows a set (`Embedder.embed_parts`)."""


def confirmed_scan_image_id(scan_id: str) -> str:
    return f"scan:{scan_id}"


class Catalog:
    def __init__(
        self,
        index: VectorIndex,
        on_change: Callable[[Iterable[str], int], None] | None = None,
        on_photo: Callable[[str], None] | None = None,
    ) -> None:
        self.index = index
        self._on_change = on_change or (lambda product_ids, count: None)
        self._on_photo = on_photo or (lambda product_id: None)

    def is_stale(self, product_id: str, version: int | None) -> bool:
        """Whether an event of this version comes after a newer one (or the same version's
        deletion) was applied. Unversioned events are never stale."""
        state = self.index.product_state(product_id)
        if version is None or state is None or state.version is None:
            return False
        return version < state.version or (version == state.version and state.deleted)

    def stored_images(self, product_id: str) -> dict[str, StoredImage]:
        """The product's stored reference images by image id."""
        return {image.image_id: image for image in self.index.product_images(product_id)}

    def already_stored(
        self, event: ProductUpserted, stored: dict[str, StoredImage]
    ) -> dict[str, ProductImage]:
        """The event's images stored before from the same URI, whose object may still have
        changed (their stored ETag is compared with the current one)."""
        return {
            image.image_id: image
            for image in event.images
            if image.image_id in stored
            and stored[image.image_id].uri == image.uri
            and stored[image.image_id].etag is not None
        }

    def plan(
        self,
        event: ProductUpserted,
        changed: set[str] = frozenset(),
        stored: dict[str, StoredImage] | None = None,
    ) -> SyncPlan:
        """`changed`: ids of images whose object was replaced at the same URI; `stored`: the
        product's stored images, when the caller has just read them."""
        if stored is None:
            stored = self.stored_images(event.product_id)
        wanted = {image.image_id for image in event.images}
        to_embed = [
            image
            for image in event.images
            if image.image_id not in stored
            or stored[image.image_id].uri != image.uri
            or image.image_id in changed
        ]
        to_remove = [
            image_id
            for image_id, image in stored.items()
            if image.source == SOURCE_CATALOG and whole_image_id(image_id) not in wanted
        ]
        stored_parts: dict[str, list[str]] = {}
        for image_id in stored:
            if is_part(image_id):
                stored_parts.setdefault(whole_image_id(image_id), []).append(image_id)
        return SyncPlan(to_embed, to_remove, stored_parts)

    def apply(
        self,
        event: ProductUpserted,
        plan: SyncPlan,
        embedded: Sequence[EmbeddedImage],
        unusable: Sequence[str] = (),
    ) -> None:
        """Store the embedded new images (and their pieces), remove dropped ones and those now
        `unusable` (their object is gone or broken), refresh the product's payload, record the
        version."""
        state = self.index.product_state(event.product_id)
        references = [
            ReferenceImage(
                product_id=event.product_id,
                image_id=image_id,
                sku=event.sku,
                vector=vector,
                source=SOURCE_CATALOG,
                category=event.category,
                name=event.name,
                uri=item.image.uri,
                etag=item.etag,
            )
            for item in embedded
            for image_id, vector in with_pieces(item.image.image_id, item.vector, item.parts)
        ]
        self.index.upsert(references)
        written = {reference.image_id for reference in references}
        replaced = [*(item.image.image_id for item in embedded), *unusable]
        old_parts = [p for i in replaced for p in plan.stored_parts.get(i, []) if p not in written]
        removed = [*plan.to_remove, *unusable, *old_parts]
        self.index.delete_images(event.product_id, removed)
        self.index.set_product_info(event.product_id, event.sku, event.name, event.category)
        version = event.version if event.version is not None else state and state.version
        if version is not None or (state is not None and state.deleted):
            self.index.set_product_state(ProductState(event.product_id, version, deleted=False))
        if embedded or removed:
            self._on_change([event.product_id], 1)

    def confirm(self, product_id: str, scan: ScanRecord) -> bool:
        """Make a confirmed scan's photo a reference image of the product. A scan confirmed
        before for another product (a correction) moves; `scan.extra` records where.

        Returns False when the product is unknown (no stored images to take sku and
        category from), in which case nothing is stored.
        """
        stored = self.index.product_images(product_id)
        if not stored:
            return False
        previous = scan.extra.get("confirmed_product_id")
        if previous and previous != product_id:
            self.index.delete_images(previous, [confirmed_scan_image_id(scan.scan_id)])
            self._on_change([previous], 1)
        product = stored[0]
        self.index.upsert(
            [
                ReferenceImage(
                    product_id=product_id,
                    image_id=confirmed_scan_image_id(scan.scan_id),
                    sku=product.sku,
                    vector=scan.vector,
                    source=SOURCE_CONFIRMED_SCAN,
                    category=product.category,
                    name=product.name,
                    uri=scan.image_uri,
                    taken_at=scan.created_at,
                )
            ]
        )
        scan.extra["confirmed_product_id"] = product_id
        self._on_change([product_id], 1)
        self._on_photo(product_id)
        return True

    def delete(self, event: ProductDeleted) -> None:
        """Delete every image of the product and leave a tombstone with its version."""
        state = self.index.product_state(event.product_id)
        version = event.version if event.version is not None else state and state.version
        self.index.delete_product(event.product_id)
        self.index.set_product_state(ProductState(event.product_id, version, deleted=True))
        self._on_change([event.product_id], 1)


def catalog_summary(index: VectorIndex) -> list[dict]:
    """Every product in the index with its count of catalog images and confirmed photos, and
    where its first catalog image lies (for the review desk's catalog page)."""
    products: dict[str, dict] = {}
    for page in index.all_images():
        for image in page:
            entry = products.setdefault(
                image.product_id,
                {
                    "product_id": image.product_id,
                    "sku": image.sku,
                    "name": image.name,
                    "category": image.category,
                    "catalog_images": 0,
                    "confirmed_photos": 0,
                    "image": None,
                },
            )
            if image.source == SOURCE_CONFIRMED_SCAN:
                entry["confirmed_photos"] += 1
            elif not is_part(image.image_id):
                entry["catalog_images"] += 1
                entry["image"] = entry["image"] or image.uri
    return sorted(products.values(), key=lambda entry: (entry["sku"], entry["product_id"]))

"""Keeping the index in step with the PIM's catalog and with confirmed scans.

Every operation is idempotent: a product event applied twice leaves the index as once
(point ids are deterministic, and an image already stored from the same URI is not
embedded again). Every change is reported to `on_change` (the matcher's learned state).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from shared.contract import ProductImage, ProductUpserted
from worker.index import (
    SOURCE_CATALOG,
    SOURCE_CONFIRMED_SCAN,
    ReferenceImage,
    ScanRecord,
    VectorIndex,
)


@dataclass(frozen=True)
class SyncPlan:
    """What an upsert event changes: images to embed and add, catalog images to remove."""

    to_embed: list[ProductImage]
    to_remove: list[str]


def confirmed_scan_image_id(scan_id: str) -> str:
    return f"scan:{scan_id}"


class Catalog:
    def __init__(
        self, index: VectorIndex, on_change: Callable[[Iterable[str], int], None] | None = None
    ) -> None:
        self.index = index
        self._on_change = on_change or (lambda product_ids, count: None)

    def plan(self, event: ProductUpserted) -> SyncPlan:
        stored = {image.image_id: image for image in self.index.product_images(event.product_id)}
        wanted = {image.image_id for image in event.images}
        to_embed = [
            image
            for image in event.images
            if image.image_id not in stored or stored[image.image_id].uri != image.uri
        ]
        to_remove = [
            image_id
            for image_id, image in stored.items()
            if image.source == SOURCE_CATALOG and image_id not in wanted
        ]
        return SyncPlan(to_embed, to_remove)

    def apply(
        self,
        event: ProductUpserted,
        plan: SyncPlan,
        embedded: Sequence[tuple[ProductImage, np.ndarray]],
    ) -> None:
        """Store the embedded new images, remove dropped ones, refresh the product's payload."""
        self.index.upsert(
            [
                ReferenceImage(
                    product_id=event.product_id,
                    image_id=image.image_id,
                    sku=event.sku,
                    vector=vector,
                    source=SOURCE_CATALOG,
                    category=event.category,
                    name=event.name,
                    uri=image.uri,
                )
                for image, vector in embedded
            ]
        )
        self.index.delete_images(event.product_id, plan.to_remove)
        self.index.set_product_info(event.product_id, event.sku, event.name, event.category)
        if embedded or plan.to_remove:
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
                )
            ]
        )
        scan.extra["confirmed_product_id"] = product_id
        self._on_change([product_id], 1)
        return True

    def delete(self, product_id: str) -> None:
        self.index.delete_product(product_id)
        self._on_change([product_id], 1)

"""Keeping the index in step with the PIM's catalog and with confirmed scans.

Every operation is idempotent: a product event applied twice leaves the index as once
(point ids are deterministic, and an image already stored from the same URI is not
embedded again).
"""

from __future__ import annotations

from collections.abc import Sequence
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
    def __init__(self, index: VectorIndex) -> None:
        self.index = index

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

    def add_confirmed_scan(self, product_id: str, scan: ScanRecord) -> bool:
        """Make a confirmed scan's photo a reference image of the product.

        Returns False when the product is unknown (no stored images to take sku and
        category from), in which case nothing is stored.
        """
        stored = self.index.product_images(product_id)
        if not stored:
            return False
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
        return True

    def delete(self, product_id: str) -> None:
        self.index.delete_product(product_id)

"""An index in process memory, exact and numpy-only, behind the same interface as the two
Qdrant back ends (as dramatiq's `StubBroker` stands in for a broker): matching and learning
are tested on it in milliseconds, and the refit ranks held-out confirmations through it with
the live ranking code. Nothing is kept across processes; not a production back end."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np

from worker.index.base import (
    ImageHit,
    ProductHit,
    ProductState,
    ReferenceImage,
    ReferenceSet,
    ScanRecord,
    StoredImage,
    VectorIndex,
    group_by_product,
)
from worker.vectors import unit_rows


class InMemoryIndex(VectorIndex):
    def __init__(self, model_id: str, dim: int) -> None:
        self.model_id, self.dim = model_id, dim
        self._images: dict[tuple[str, str], ReferenceImage] = {}
        self._scans: dict[str, ScanRecord] = {}
        self._states: dict[str, ProductState] = {}

    @classmethod
    def of_references(cls, refs: ReferenceSet, model_id: str = "memory") -> InMemoryIndex:
        """An index holding exactly these reference vectors (image ids by position)."""
        index = cls(model_id, refs.vectors.shape[1])
        index.upsert(
            [
                ReferenceImage(str(product), f"ref-{row}", str(product), vector, str(source))
                for row, (product, source, vector) in enumerate(
                    zip(refs.product_ids, refs.sources, refs.vectors, strict=True)
                )
            ]
        )
        return index

    # references -------------------------------------------------------------------------

    def upsert(self, images: Sequence[ReferenceImage]) -> None:
        for image in images:
            self._images[(image.product_id, image.image_id)] = image

    def product_images(self, product_id: str) -> list[StoredImage]:
        return [_stored(i) for (p, _), i in self._images.items() if p == product_id]

    def all_images(self, page_size: int = 256) -> Iterator[list[StoredImage]]:
        stored = [_stored(image) for image in self._images.values()]
        for start in range(0, len(stored), page_size):
            yield stored[start : start + page_size]

    def delete_images(self, product_id: str, image_ids: Sequence[str]) -> None:
        for image_id in image_ids:
            self._images.pop((product_id, image_id), None)

    def delete_product(self, product_id: str) -> None:
        for key in [key for key in self._images if key[0] == product_id]:
            del self._images[key]

    def set_product_info(
        self, product_id: str, sku: str, name: str | None, category: str | None
    ) -> None:
        for key, image in self._images.items():
            if key[0] == product_id:
                self._images[key] = _replace(image, sku=sku, name=name, category=category)

    def search(
        self,
        vectors: np.ndarray,
        top_k: int,
        category: str | None = None,
        source: str | None = None,
    ) -> list[list[ProductHit]]:
        images = [
            image
            for image in self._images.values()
            if (category is None or image.category == category)
            and (source is None or image.source == source)
        ]
        if not images:
            return [[] for _ in vectors]
        matrix = unit_rows(np.stack([image.vector for image in images]).astype(np.float32))
        scores = unit_rows(np.asarray(vectors, dtype=np.float32)) @ matrix.T
        return [
            group_by_product(
                (_hit(image, float(score)) for image, score in zip(images, row, strict=True)), top_k
            )
            for row in scores
        ]

    def count(self) -> int:
        return len(self._images)

    def references(self, product_id: str | None = None) -> ReferenceSet:
        rows = [
            (image.product_id, image.source, image.vector)
            for image in self._images.values()
            if product_id is None or image.product_id == product_id
        ]
        return ReferenceSet.from_rows(rows, self.dim)

    # scans -------------------------------------------------------------------------------

    def scan_vectors(self, limit: int) -> np.ndarray:
        vectors = [record.vector for record in list(self._scans.values())[:limit]]
        return np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)

    def remember_scan(self, record: ScanRecord) -> None:
        self._scans[record.scan_id] = record

    def recall_scan(self, scan_id: str) -> ScanRecord | None:
        return self._scans.get(scan_id)

    def forget_scans_before(self, timestamp: float) -> None:
        for scan_id in [s for s, r in self._scans.items() if r.created_at < timestamp]:
            del self._scans[scan_id]

    # products and administration ---------------------------------------------------------

    def product_state(self, product_id: str) -> ProductState | None:
        return self._states.get(product_id)

    def set_product_state(self, state: ProductState) -> None:
        self._states[state.product_id] = state

    def current_model_id(self) -> str | None:
        return self.model_id

    def close(self) -> None:
        pass


def _hit(image: ReferenceImage, score: float) -> ImageHit:
    return ImageHit(
        image.product_id,
        image.image_id,
        image.sku,
        score,
        image.source,
        image.category,
        image.name,
        image.uri,
    )


def _stored(image: ReferenceImage) -> StoredImage:
    return StoredImage(
        image.image_id,
        image.source,
        image.uri,
        image.sku,
        image.name,
        image.category,
        image.product_id,
        image.etag,
    )


def _replace(image: ReferenceImage, **changes) -> ReferenceImage:
    return replace(image, **changes)

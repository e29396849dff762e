"""An index in process memory, exact and numpy-only, behind the same interface as the two
Qdrant back ends (as dramatiq's `StubBroker` stands in for a broker): matching and learning
are tested on it in milliseconds, and the refit ranks held-out confirmations through it with
the live ranking code. Nothing is kept across processes; not a production back end."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

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
)
from worker.vectors import unit_rows

QUERY_CHUNK = 256
"""Queries scored at once (a chunk's scores against every image are held in memory)."""


@dataclass(frozen=True)
class _Matrix:
    """Every stored image, grouped by product (sorted by product id), as one matrix."""

    images: list[ReferenceImage]
    vectors: np.ndarray  # unit rows
    starts: np.ndarray  # where each product's rows begin
    products: np.ndarray  # product id of each group

    @classmethod
    def of(cls, by_product: dict[str, dict[str, ReferenceImage]], dim: int) -> _Matrix:
        images = [image for p in sorted(by_product) for image in by_product[p].values()]
        vectors = np.stack([i.vector for i in images]) if images else np.zeros((0, dim))
        sizes = [len(by_product[p]) for p in sorted(by_product) if by_product[p]]
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)
        products = np.array([p for p in sorted(by_product) if by_product[p]], dtype=object)
        return cls(images, unit_rows(vectors.astype(np.float32)), starts, products)


class InMemoryIndex(VectorIndex):
    def __init__(self, model_id: str, dim: int) -> None:
        self.model_id, self.dim = model_id, dim
        self._by_product: dict[str, dict[str, ReferenceImage]] = {}
        self._scans: dict[str, ScanRecord] = {}
        self._states: dict[str, ProductState] = {}
        self._matrix: _Matrix | None = None  # rebuilt after a change, on the next search

    @classmethod
    def of_references(cls, refs: ReferenceSet, model_id: str = "memory") -> InMemoryIndex:
        """An index holding exactly these reference vectors, under their own image ids (so a
        piece of a set's image stays a piece), or ids by position where the set has none."""
        index = cls(model_id, refs.vectors.shape[1])
        ids = (
            refs.image_ids
            if refs.image_ids is not None
            else [f"ref-{row}" for row in range(len(refs))]
        )
        index.upsert(
            [
                ReferenceImage(str(product), str(image_id), str(product), vector, str(source))
                for product, image_id, source, vector in zip(
                    refs.product_ids, ids, refs.sources, refs.vectors, strict=True
                )
            ]
        )
        return index

    # references -------------------------------------------------------------------------

    def upsert(self, images: Sequence[ReferenceImage]) -> None:
        for image in images:
            self._by_product.setdefault(image.product_id, {})[image.image_id] = image
        self._matrix = None

    def product_images(self, product_id: str) -> list[StoredImage]:
        return [self._stored(image) for image in self._by_product.get(product_id, {}).values()]

    def all_images(self, page_size: int = 256) -> Iterator[list[StoredImage]]:
        stored = [self._stored(i) for images in self._by_product.values() for i in images.values()]
        for start in range(0, len(stored), page_size):
            yield stored[start : start + page_size]

    def delete_images(self, product_id: str, image_ids: Sequence[str]) -> None:
        for image_id in image_ids:
            self._by_product.get(product_id, {}).pop(image_id, None)
        self._matrix = None

    def delete_product(self, product_id: str) -> None:
        self._by_product.pop(product_id, None)
        self._matrix = None

    def set_product_info(
        self, product_id: str, sku: str, name: str | None, category: str | None
    ) -> None:
        images = self._by_product.get(product_id, {})
        for image_id, image in images.items():
            images[image_id] = replace(image, sku=sku, name=name, category=category)
        self._matrix = None

    def search(
        self,
        vectors: np.ndarray,
        top_k: int,
        category: str | None = None,
        source: str | None = None,
    ) -> list[list[ProductHit]]:
        """Exact: every image scored, each product by its best (numpy, a chunk of queries at
        a time); ties as the other back ends break them (`group_by_product`)."""
        if self._matrix is None:
            self._matrix = _Matrix.of(self._by_product, self.dim)
        matrix = self._matrix
        allowed = np.array(
            [
                (category is None or image.category == category)
                and (source is None or image.source == source)
                for image in matrix.images
            ],
            dtype=bool,
        )
        queries = unit_rows(np.asarray(vectors, dtype=np.float32))
        found: list[list[ProductHit]] = []
        for start in range(0, len(queries), QUERY_CHUNK):
            scores = queries[start : start + QUERY_CHUNK] @ matrix.vectors.T
            found.extend(self._grouped(matrix, np.where(allowed, scores, -np.inf), top_k))
        return found

    @staticmethod
    def _grouped(matrix: _Matrix, scores: np.ndarray, top_k: int) -> list[list[ProductHit]]:
        if not len(matrix.images):
            return [[] for _ in scores]
        best = np.maximum.reduceat(scores, matrix.starts, axis=1)
        ends = [*matrix.starts[1:], len(matrix.images)]
        results = []
        for row, product_best in zip(scores, best, strict=True):
            finite = product_best[np.isfinite(product_best)]
            wanted = min(top_k, len(finite))
            if not wanted:
                results.append([])
                continue
            kth = np.partition(finite, -wanted)[-wanted]  # ties at the boundary stay in
            pool = np.flatnonzero(product_best >= kth)
            # best score first, then product id (as group_by_product sorts)
            order = sorted(pool, key=lambda g: (-product_best[g], matrix.products[g]))
            hits = []
            for group in order[:top_k]:
                first = matrix.starts[group]
                image = matrix.images[first + int(np.argmax(row[first : ends[group]]))]
                hits.append(_hit(image, float(product_best[group])))
            results.append(hits)  # one per product, in group_by_product's order
        return results

    def count(self) -> int:
        return sum(len(images) for images in self._by_product.values())

    def references(self, product_id: str | None = None) -> ReferenceSet:
        groups = [self._by_product.get(product_id, {})] if product_id else self._by_product.values()
        rows = [
            (i.product_id, i.source, i.vector, i.uri, i.image_id)
            for images in groups
            for i in images.values()
        ]
        return ReferenceSet.from_rows(rows, self.dim)

    # scans -------------------------------------------------------------------------------

    def scan_vectors(self, limit: int) -> np.ndarray:
        """The latest `limit` scans' vectors, oldest first (as the other back ends)."""
        ordered = sorted(self._scans.values(), key=lambda r: (r.created_at, r.scan_id))
        vectors = [record.vector for record in ordered[max(0, len(ordered) - limit) :]]
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

    def all_product_states(self) -> list[ProductState]:
        return list(self._states.values())

    def _stored(self, image: ReferenceImage) -> StoredImage:
        """What the other back ends read back from a point's payload."""
        return StoredImage.from_payload(image.payload(self.model_id))

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

"""The index interface: reference images of products, and recent scans, per model.

Two back ends implement it (the Qdrant engine in-process, and a Qdrant server); nothing
above this package sees Qdrant's types.
"""

from __future__ import annotations

import json
import uuid
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from worker.vectors import SOURCE_CATALOG as SOURCE_CATALOG  # re-exported
from worker.vectors import SOURCE_CONFIRMED_SCAN as SOURCE_CONFIRMED_SCAN
from worker.vectors import is_part

POINT_NAMESPACE = uuid.UUID("8f5f7c0e-4d0b-5b8e-9a43-6a1f0c1f9e11")


def point_id(product_id: str, image_id: str, model_id: str) -> str:
    """Deterministic point id: the same product image under the same model is one point."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{product_id}\x1f{image_id}\x1f{model_id}"))


def scan_point_id(scan_id: str, model_id: str) -> str:
    return str(uuid.uuid5(POINT_NAMESPACE, f"scan\x1f{scan_id}\x1f{model_id}"))


def product_point_id(product_id: str, model_id: str) -> str:
    return str(uuid.uuid5(POINT_NAMESPACE, f"product\x1f{product_id}\x1f{model_id}"))


@dataclass(frozen=True)
class ProductState:
    """The last product event applied: its version, and whether it deleted the product (a
    tombstone, so that an older update delivered late does not bring the product back)."""

    product_id: str
    version: int | None
    deleted: bool = False

    def payload(self) -> dict:
        return {"product_id": self.product_id, "version": self.version, "deleted": self.deleted}

    @classmethod
    def from_payload(cls, payload: dict) -> ProductState:
        return cls(payload["product_id"], payload.get("version"), bool(payload.get("deleted")))


@dataclass(frozen=True)
class ReferenceImage:
    """One image of a product, embedded."""

    product_id: str
    image_id: str
    sku: str
    vector: np.ndarray
    source: str = SOURCE_CATALOG
    category: str | None = None
    name: str | None = None
    uri: str | None = None
    etag: str | None = None
    taken_at: float | None = None
    """When a confirmed scan's photo was taken (seconds since the epoch): training holds the
    latest confirmations out."""

    def payload(self, model_id: str) -> dict:
        """What is stored beside the vector (indexed: product_id, category, source)."""
        return {
            "product_id": self.product_id,
            "image_id": self.image_id,
            "sku": self.sku,
            "name": self.name,
            "category": self.category,
            "source": self.source,
            "uri": self.uri,
            "etag": self.etag,
            "taken_at": self.taken_at,
            "model": model_id,
        }


@dataclass(frozen=True)
class StoredImage:
    """What the index knows of a stored reference image (without its vector)."""

    image_id: str
    source: str
    uri: str | None
    sku: str
    name: str | None = None
    category: str | None = None
    product_id: str = ""
    etag: str | None = None
    taken_at: float | None = None

    @classmethod
    def from_payload(cls, payload: dict) -> StoredImage:
        return cls(
            payload["image_id"],
            payload["source"],
            payload.get("uri"),
            payload["sku"],
            payload.get("name"),
            payload.get("category"),
            payload.get("product_id", ""),
            payload.get("etag"),
            payload.get("taken_at"),
        )


@dataclass(frozen=True)
class ImageHit:
    """One reference image found near a query vector."""

    product_id: str
    image_id: str
    sku: str
    score: float
    source: str
    category: str | None = None
    name: str | None = None
    uri: str | None = None


@dataclass(frozen=True)
class ProductHit:
    """A product, scored by its best matching reference image."""

    product_id: str
    sku: str
    score: float
    image_id: str
    source: str
    category: str | None = None
    name: str | None = None
    uri: str | None = None  # where the best matching reference image lies


@dataclass(frozen=True)
class ReferenceSet:
    """Reference vectors with their product ids, sources and image URIs (None where the
    image has none) and ids, for fitting and prototypes."""

    vectors: np.ndarray
    product_ids: np.ndarray
    sources: np.ndarray
    uris: np.ndarray | None = None
    image_ids: np.ndarray | None = None

    @classmethod
    def from_rows(
        cls, rows: list[tuple[str, str, list[float], str | None, str]], dim: int
    ) -> ReferenceSet:
        """From `(product_id, source, vector, uri, image_id)` rows, in a canonical order (by
        product and image id) whatever order the index keeps them in: its point ids carry the
        model id, so that what learns from the rows (which labels, in which fold) would
        otherwise change with the model's name, and two model versions be judged on different
        draws."""
        rows = sorted(rows, key=lambda row: (row[0], row[4], row[1], row[3] or ""))
        if not rows:
            empty = np.array([], dtype=object)
            return cls(np.zeros((0, dim), np.float32), empty, empty.copy(), empty.copy(), empty)
        return cls(
            np.asarray([r[2] for r in rows], dtype=np.float32),
            np.array([r[0] for r in rows], dtype=object),
            np.array([r[1] for r in rows], dtype=object),
            np.array([r[3] for r in rows], dtype=object),
            np.array([r[4] for r in rows], dtype=object),
        )

    @classmethod
    def from_points(cls, points: Iterable, dim: int) -> ReferenceSet:
        """From stored points (anything with the `payload` of `ReferenceImage.payload` and a
        `vector`: the Qdrant back ends' records)."""
        return cls.from_rows(
            [
                (
                    p.payload["product_id"],
                    p.payload["source"],
                    p.vector,
                    p.payload.get("uri"),
                    p.payload["image_id"],
                )
                for p in points
            ],
            dim,
        )

    def __len__(self) -> int:
        return len(self.vectors)

    @classmethod
    def joined(cls, parts: Sequence[ReferenceSet]) -> ReferenceSet:
        """All of `parts`' rows, in order (a part without URIs or ids gives None for them)."""

        def column(name: str) -> np.ndarray:
            return np.concatenate(
                [
                    np.full(len(part), None, dtype=object)
                    if getattr(part, name) is None
                    else getattr(part, name)
                    for part in parts
                ]
            )

        return cls(
            np.concatenate([part.vectors for part in parts]),
            column("product_ids"),
            column("sources"),
            column("uris"),
            column("image_ids"),
        )

    def subset(self, mask: np.ndarray) -> ReferenceSet:
        uris = None if self.uris is None else self.uris[mask]
        ids = None if self.image_ids is None else self.image_ids[mask]
        return ReferenceSet(
            self.vectors[mask], self.product_ids[mask], self.sources[mask], uris, ids
        )

    def key(self, row: int) -> str:
        """A row's key: its product and image id (its row where the set has no ids), so that
        what is drawn or folded by it does not depend on where the index keeps the row."""
        image = self.image_ids[row] if self.image_ids is not None else row
        return f"{self.product_ids[row]}/{image}"

    def key_hashes(self, rows: Sequence[int] | np.ndarray, seed: int = 0) -> np.ndarray:
        """Each row's `draw_hash`: what confirmations are drawn and folded by."""
        return np.array([draw_hash(self.key(row), seed) for row in rows], dtype=np.int64)

    def pieces(self) -> np.ndarray:
        """Which rows are pieces cut from a set's catalog image (`MODEL__CATALOG_PARTS`)."""
        if self.image_ids is None:
            return np.zeros(len(self), dtype=bool)
        return np.array([is_part(str(image_id)) for image_id in self.image_ids], dtype=bool)


def draw_hash(key: str, seed: int = 0) -> int:
    """The CRC-32 of `key`, salted with `seed` (`LEARNING__DRAW_SEED`) unless it is 0: which
    confirmations the learned stages hold out, fold and draw. Any seed is as fair as another;
    others show how far the draw alone moves a figure (docs/benchmarks.md, "How far the draw
    alone moves the decision")."""
    return zlib.crc32((key if seed == 0 else f"{seed}:{key}").encode())


def latest_scans(records: Sequence, limit: int) -> list:
    """Of scan points read without their vectors, the ids of the latest `limit`, oldest
    first (by the time they were taken, then scan id): not the first the index returns in
    the order of its point ids, which carry the model id, so that the scan statistics are
    fitted on the same scans, in the same order, whatever the model is called."""
    ordered = sorted(records, key=lambda r: (r.payload["created_at"], r.payload["scan_id"]))
    return [r.id for r in ordered[max(0, len(ordered) - limit) :]]


def vectors_in_order(ids: Sequence, records: Sequence, dim: int) -> np.ndarray:
    """The vectors of retrieved points, in the order of `ids`."""
    by_id = {str(r.id): r.vector for r in records}
    return np.asarray([by_id[str(i)] for i in ids], dtype=np.float32).reshape(-1, dim)


@dataclass
class ScanRecord:
    """What is kept of a scan so that a redelivery gets the same answer and a confirmation can
    turn its photo into a reference image without fetching it again."""

    scan_id: str
    vector: np.ndarray
    image_uri: str
    created_at: float
    result_json: str | None = None
    extra: dict = field(default_factory=dict)
    station_id: str | None = None

    def same_photo(self, image_uri: str, station_id: str | None) -> bool:
        """Whether a scan event is this scan again (a redelivery) rather than another photo
        under a reused scan id."""
        return self.image_uri == image_uri and self.station_id == station_id

    def payload(self) -> dict:
        return {
            "scan_id": self.scan_id,
            "station_id": self.station_id,
            "image_uri": self.image_uri,
            "created_at": self.created_at,
            "result": self.result_json,
            "extra": json.dumps(self.extra),
        }

    @classmethod
    def from_point(cls, payload: dict, vector) -> ScanRecord:
        return cls(
            scan_id=payload["scan_id"],
            vector=np.asarray(vector, dtype=np.float32),
            image_uri=payload["image_uri"],
            created_at=payload["created_at"],
            result_json=payload.get("result"),
            extra=json.loads(payload.get("extra") or "{}"),
            station_id=payload.get("station_id"),
        )


def collect_pages(fetch_page: Callable[[object], tuple[list, object]], limit: int | None) -> list:
    """Every record of a paged scroll (`fetch_page(offset)` gives a page and the next offset,
    None at the end), or the first `limit` of them."""
    records, offset = [], None
    while limit is None or len(records) < limit:
        page, offset = fetch_page(offset)
        records.extend(page)
        if offset is None:
            break
    return records[:limit] if limit is not None else records


def group_by_product(hits: Iterable[ImageHit], top_k: int) -> list[ProductHit]:
    """Keep each product's best image hit, best products first, at most `top_k`."""
    best: dict[str, ImageHit] = {}
    for hit in hits:
        current = best.get(hit.product_id)
        if current is None or hit.score > current.score:
            best[hit.product_id] = hit
    ranked = sorted(best.values(), key=lambda hit: (-hit.score, hit.product_id))[:top_k]
    return [
        ProductHit(h.product_id, h.sku, h.score, h.image_id, h.source, h.category, h.name, h.uri)
        for h in ranked
    ]


class VectorIndex(ABC):
    """Reference images grouped by product, and a memory of recent scans, for one model."""

    model_id: str
    dim: int

    @abstractmethod
    def upsert(self, images: Sequence[ReferenceImage]) -> None:
        """Insert or replace reference images (same product, image and model: same point)."""

    @abstractmethod
    def product_images(self, product_id: str) -> list[StoredImage]:
        """The reference images stored for a product."""

    @abstractmethod
    def all_images(self, page_size: int = 256) -> Iterator[list[StoredImage]]:
        """Every stored reference image, a page at a time (for re-embedding)."""

    @abstractmethod
    def delete_images(self, product_id: str, image_ids: Sequence[str]) -> None:
        """Delete some reference images of a product."""

    @abstractmethod
    def delete_product(self, product_id: str) -> None:
        """Delete every reference image of a product (catalog and confirmed scans)."""

    @abstractmethod
    def set_product_info(
        self, product_id: str, sku: str, name: str | None, category: str | None
    ) -> None:
        """Update the descriptive payload of every stored image of a product."""

    @abstractmethod
    def search(
        self,
        vectors: np.ndarray,
        top_k: int,
        category: str | None = None,
        source: str | None = None,
    ) -> list[list[ProductHit]]:
        """For each query vector, the `top_k` nearest products by their best image (of
        `category` products, and of `source` images, when given)."""

    @abstractmethod
    def count(self) -> int:
        """Number of stored reference images."""

    @abstractmethod
    def references(self, product_id: str | None = None) -> ReferenceSet:
        """Stored reference vectors, of one product or of all (for fitting the metric)."""

    @abstractmethod
    def scan_vectors(self, limit: int) -> np.ndarray:
        """Vectors of up to `limit` remembered scans (unlabeled, for domain statistics)."""

    @abstractmethod
    def remember_scan(self, record: ScanRecord) -> None:
        """Store (or replace) what is kept of a scan."""

    @abstractmethod
    def recall_scan(self, scan_id: str) -> ScanRecord | None:
        """The kept record of a scan, if it has not expired."""

    @abstractmethod
    def forget_scans_before(self, timestamp: float) -> None:
        """Drop scan records created before `timestamp` (seconds since the epoch)."""

    @abstractmethod
    def product_state(self, product_id: str) -> ProductState | None:
        """The last product event applied to `product_id`, if any."""

    @abstractmethod
    def set_product_state(self, state: ProductState) -> None:
        """Record the last product event applied (a version, or a deletion's tombstone)."""

    def set_product_states(self, states: Sequence[ProductState]) -> None:
        """Record several products' last applied events at once (a reindex's copy)."""
        for state in states:
            self.set_product_state(state)

    @abstractmethod
    def all_product_states(self) -> list[ProductState]:
        """Every product's last applied event, deleted products' tombstones included (a
        reindex carries them, so that a late, older event stays stale on the new index)."""

    def optimize(self) -> bool:
        """Build search structures for a large index; returns whether anything was done."""
        return False

    @abstractmethod
    def current_model_id(self) -> str | None:
        """The model whose index is in service (the `current` link or alias), if any."""

    def hold_writes(self) -> str | None:
        """Ask every worker to hold catalog work while a switch catches up (`catalog_gate`);
        returns the hold, for `release_writes`. Nothing to do where one process owns the
        index (the embedded engine: the worker is stopped while `reindex` runs) or in
        memory."""
        return None

    def release_writes(self, hold: str | None) -> None:
        """Lift the hold `hold_writes` returned (and any left behind by a switch that died;
        another switch's live hold stays)."""
        return None

    def writes_held(self) -> bool:
        """Whether a switch holds catalog work now."""
        return False

    def needs_optimizing(self) -> bool:
        """Whether `optimize()` is due (a server back end builds its own: never)."""
        return False

    @abstractmethod
    def close(self) -> None:
        """Release files and connections."""

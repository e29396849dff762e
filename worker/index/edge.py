"""The embedded back end: the real Qdrant engine in-process (`qdrant-edge-py`).

No server to run. Each model has its own directory with two shards, ``references`` and
``scans``. One process owns a directory (the engine locks its write-ahead log). The engine
has no grouped query, so hits are grouped by product here, fetching more candidates when
too few distinct products came back. Up to `exact_search_max_points` reference images the
search is exact (about 1 ms per 10 000 points); beyond that it uses the HNSW index, which
`optimize()` builds and which is never built on the scan path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from qdrant_edge import (
    CountRequest,
    Distance,
    EdgeConfig,
    EdgeShard,
    EdgeVectorParams,
    FieldCondition,
    Filter,
    HnswIndexConfig,
    MatchValue,
    PayloadSchemaType,
    Point,
    QuantizationSearchParams,
    Query,
    QueryBatchRequest,
    QueryRequest,
    RangeFloat,
    ScalarQuantizationConfig,
    ScalarType,
    ScrollRequest,
    SearchParams,
    UpdateOperation,
)

from worker.index.base import (
    ImageHit,
    ProductHit,
    ProductState,
    ReferenceImage,
    ReferenceSet,
    ScanRecord,
    StoredImage,
    VectorIndex,
    collect_pages,
    group_by_product,
    latest_scans,
    point_id,
    product_point_id,
    scan_point_id,
    vectors_in_order,
)
from worker.index.shard_guard import GuardedShard, ShardGuard
from worker.settings import IndexSettings


def make_current(index_root: Path, model_id: str) -> Path:
    """Point `<index_root>/current` at a model's directory, atomically: the embedded engine's
    counterpart of a Qdrant alias."""
    link = index_root / "current"
    staging = index_root / f".current-{os.getpid()}"
    staging.unlink(missing_ok=True)
    staging.symlink_to(model_id, target_is_directory=True)
    os.replace(staging, link)
    return link


def current_model(index_root: Path) -> str | None:
    link = index_root / "current"
    return os.readlink(link) if link.is_symlink() else None


class IndexLockedError(RuntimeError):
    """Another process holds this index directory."""


def _match(key: str, value: str) -> FieldCondition:
    return FieldCondition(key, match=MatchValue(value))


def _open_shard(
    path: Path, config: EdgeConfig, keyword_fields: Sequence[str], float_fields: Sequence[str] = ()
) -> EdgeShard:
    try:
        if (path / "edge_config.json").exists():
            return EdgeShard.load(str(path), config)
        shard = EdgeShard.create(str(path), config)
    except Exception as error:  # the engine raises plain exceptions
        if "WouldBlock" in str(error):
            raise IndexLockedError(
                f"index directory {path} is in use by another process; "
                "one process owns an embedded index (set JEWELMATCH_INDEX__PATH)"
            ) from error
        raise
    for field in keyword_fields:
        shard.update(UpdateOperation.create_field_index(field, PayloadSchemaType.Keyword))
    for field in float_fields:
        shard.update(UpdateOperation.create_field_index(field, PayloadSchemaType.Float))
    return shard


class EdgeIndex(VectorIndex):
    def __init__(self, settings: IndexSettings, model_id: str, dim: int) -> None:
        self.model_id = model_id
        self.dim = dim
        self.directory = Path(settings.path) / model_id
        self._settings = settings
        hnsw = HnswIndexConfig(
            m=settings.hnsw_m, ef_construct=settings.hnsw_ef_construct, full_scan_threshold=10_000
        )
        quantization = (
            ScalarQuantizationConfig(ScalarType.Int8, quantile=0.99)
            if settings.quantization == "int8"
            else None
        )
        config = EdgeConfig(
            vectors=EdgeVectorParams(size=dim, distance=Distance.Cosine),
            hnsw_config=hnsw,
            quantization_config=quantization,
        )
        shards = (
            _open_shard(
                self.directory / "references", config, ["product_id", "category", "source"]
            ),
            _open_shard(
                self.directory / "scans",
                EdgeConfig(vectors=EdgeVectorParams(size=dim, distance=Distance.Cosine)),
                ["scan_id"],
                ["created_at"],
            ),
            _open_shard(
                self.directory / "products",
                EdgeConfig(vectors=EdgeVectorParams(size=1, distance=Distance.Dot)),
                ["product_id"],
            ),
        )
        # every call on a shard is counted, so that `close` waits for those in progress
        self._guard = ShardGuard()
        self._refs, self._scans, self._products = (
            GuardedShard(shard, self._guard) for shard in shards
        )
        self._count = self._refs.count(CountRequest(exact=True))
        self.optimized_at_count = 0
        if current_model(Path(settings.path)) is None:  # the first model in service
            make_current(Path(settings.path), model_id)

    # references -----------------------------------------------------------------------

    def upsert(self, images: Sequence[ReferenceImage]) -> None:
        if not images:
            return
        points = [
            Point(
                point_id(image.product_id, image.image_id, self.model_id),
                image.vector.astype(np.float32).tolist(),
                image.payload(self.model_id),
            )
            for image in images
        ]
        self._refs.update(UpdateOperation.upsert_points(points))
        self._refresh_count()

    def product_images(self, product_id: str) -> list[StoredImage]:
        records = self._scroll(self._refs, Filter(must=[_match("product_id", product_id)]))
        return [StoredImage.from_payload(record.payload) for record in records]

    def all_images(self, page_size: int = 256) -> Iterator[list[StoredImage]]:
        offset = None
        while True:
            page, offset = self._refs.scroll(
                ScrollRequest(offset=offset, limit=page_size, with_payload=True)
            )
            yield [StoredImage.from_payload(record.payload) for record in page]
            if offset is None:
                return

    def delete_images(self, product_id: str, image_ids: Sequence[str]) -> None:
        if image_ids:
            self._refs.update(
                UpdateOperation.delete_points(
                    [point_id(product_id, image_id, self.model_id) for image_id in image_ids]
                )
            )
            self._refresh_count()

    def delete_product(self, product_id: str) -> None:
        self._refs.update(
            UpdateOperation.delete_points_by_filter(Filter(must=[_match("product_id", product_id)]))
        )
        self._refresh_count()

    def set_product_info(
        self, product_id: str, sku: str, name: str | None, category: str | None
    ) -> None:
        self._refs.update(
            UpdateOperation.set_payload_by_filter(
                Filter(must=[_match("product_id", product_id)]),
                {"sku": sku, "name": name, "category": category},
            )
        )

    def search(
        self,
        vectors: np.ndarray,
        top_k: int,
        category: str | None = None,
        source: str | None = None,
    ) -> list[list[ProductHit]]:
        conditions = [
            _match(key, value)
            for key, value in (("category", category), ("source", source))
            if value
        ]
        query_filter = Filter(must=conditions) if conditions else None
        params = self.search_params()
        limit = max(top_k * self._settings.candidates_per_product, top_k)
        results: list[list[ProductHit] | None] = [None] * len(vectors)
        pending = list(range(len(vectors)))
        while pending:
            batches = self._refs.query_batch(
                QueryBatchRequest(
                    [
                        QueryRequest(
                            limit=limit,
                            query=Query.Nearest(vectors[i].tolist()),
                            filter=query_filter,
                            with_payload=True,
                            params=params,
                        )
                        for i in pending
                    ]
                )
            )
            still_short = []
            for i, points in zip(pending, batches, strict=True):
                grouped = group_by_product((_image_hit(p) for p in points), top_k)
                if len(grouped) < top_k and len(points) == limit and limit < self._count:
                    still_short.append(i)  # one product's many images crowded out others
                else:
                    results[i] = grouped
            pending, limit = still_short, limit * 4
        return [r or [] for r in results]

    def count(self) -> int:
        return self._count

    def configure_search(
        self, hnsw_ef: int | None = None, exact_search_max_points: int | None = None
    ) -> None:
        """Change search parameters of an open index (benchmarks sweep them)."""
        update = {"hnsw_ef": hnsw_ef, "exact_search_max_points": exact_search_max_points}
        self._settings = self._settings.model_copy(
            update={key: value for key, value in update.items() if value is not None}
        )

    def search_params(self) -> SearchParams:
        """Exact up to `exact_search_max_points`; beyond, HNSW (rescored when quantized)."""
        if self._count <= self._settings.exact_search_max_points:
            return SearchParams(exact=True)
        quantization = (
            QuantizationSearchParams(rescore=True, oversampling=2.0)
            if self._settings.quantization == "int8"
            else None
        )
        return SearchParams(hnsw_ef=self._settings.hnsw_ef, quantization=quantization)

    def references(self, product_id: str | None = None) -> ReferenceSet:
        scroll_filter = Filter(must=[_match("product_id", product_id)]) if product_id else None
        records = self._scroll(self._refs, scroll_filter, with_vector=True)
        return ReferenceSet.from_points(records, self.dim)

    def scan_vectors(self, limit: int) -> np.ndarray:
        ids = latest_scans(self._scroll(self._scans, None), limit)
        records = self._scans.retrieve(ids, with_payload=False, with_vector=True)
        return vectors_in_order(ids, records, self.dim)

    def current_model_id(self) -> str | None:
        return current_model(self.directory.parent)

    REBUILD_GROWTH = 1.1
    """After a build, the next is due once the index has grown by this factor."""

    def optimize(self) -> bool:
        """Build the HNSW index. Queries wait for it while it runs: the worker calls it from
        its idle hook, in the background (`needs_optimizing`)."""
        count = self._count
        done = bool(self._refs.optimize())
        self.optimized_at_count = count
        return done

    def needs_optimizing(self) -> bool:
        """Due once the index is past `exact_search_max_points` (searched with HNSW from
        there on) and has grown since the last build."""
        return self._count > self._settings.exact_search_max_points and (
            self._count >= self.optimized_at_count * self.REBUILD_GROWTH
        )

    # scans ------------------------------------------------------------------------------

    def remember_scan(self, record: ScanRecord) -> None:
        self._scans.update(
            UpdateOperation.upsert_points(
                [
                    Point(
                        scan_point_id(record.scan_id, self.model_id),
                        record.vector.astype(np.float32).tolist(),
                        record.payload(),
                    )
                ]
            )
        )

    def recall_scan(self, scan_id: str) -> ScanRecord | None:
        records = self._scans.retrieve(
            [scan_point_id(scan_id, self.model_id)], with_payload=True, with_vector=True
        )
        if not records:
            return None
        return ScanRecord.from_point(records[0].payload, records[0].vector)

    def forget_scans_before(self, timestamp: float) -> None:
        self._scans.update(
            UpdateOperation.delete_points_by_filter(
                Filter(must=[FieldCondition("created_at", range=RangeFloat(lt=timestamp))])
            )
        )

    # product states ---------------------------------------------------------------------

    def product_state(self, product_id: str) -> ProductState | None:
        records = self._products.retrieve(
            [product_point_id(product_id, self.model_id)], with_payload=True, with_vector=False
        )
        return ProductState.from_payload(records[0].payload) if records else None

    def set_product_state(self, state: ProductState) -> None:
        self.set_product_states([state])

    def set_product_states(self, states: Sequence[ProductState]) -> None:
        if not states:
            return
        points = [
            Point(product_point_id(state.product_id, self.model_id), [1.0], state.payload())
            for state in states
        ]
        self._products.update(UpdateOperation.upsert_points(points))

    def all_product_states(self) -> list[ProductState]:
        return [ProductState.from_payload(r.payload) for r in self._scroll(self._products, None)]

    # ------------------------------------------------------------------------------------

    CLOSE_WAIT_SECONDS = 30.0
    """How long `close` waits for calls in progress on other threads (a refit's reads take
    seconds at the most)."""

    def close(self) -> None:
        """Flush and close the shards once no call on them is in progress (the engine refuses
        to close a shard another thread is using); any call after this raises
        `IndexClosedError`."""
        self._guard.close(self.CLOSE_WAIT_SECONDS)
        for guarded in (self._refs, self._scans, self._products):
            guarded.shard.flush()
            guarded.shard.close()

    def _refresh_count(self) -> None:
        self._count = self._refs.count(CountRequest(exact=True))

    @staticmethod
    def _scroll(
        shard: EdgeShard,
        scroll_filter: Filter | None,
        with_vector: bool = False,
        limit: int | None = None,
    ) -> list:
        return collect_pages(
            lambda offset: shard.scroll(
                ScrollRequest(
                    offset=offset,
                    limit=1024,
                    filter=scroll_filter,
                    with_payload=True,
                    with_vector=with_vector,
                )
            ),
            limit,
        )


def _image_hit(point) -> ImageHit:
    payload = point.payload
    return ImageHit(
        payload["product_id"],
        payload["image_id"],
        payload["sku"],
        float(point.score),
        payload["source"],
        payload.get("category"),
        payload.get("name"),
        payload.get("uri"),
    )

"""The production back end: a Qdrant server through `qdrant-client`.

Collections are named per model (``<prefix>-references-<model>``, ``<prefix>-scans-<model>``),
and an alias ``<prefix>-references`` points at the collection of the model in service, so
that a new model is indexed beside the old one and switched in one step (see `reindex`).
Grouping by product is the server's own `query_points_groups`.

`qdrant-client`'s local mode (``url=":memory:"`` or a folder path) runs this same code
without a server; it is a stand-in for tests, far too slow for a real catalog.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from functools import wraps
from typing import TypeVar

import httpx
import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from worker.errors import TransientError
from worker.index.base import (
    ProductHit,
    ProductState,
    ReferenceImage,
    ReferenceSet,
    ScanRecord,
    StoredImage,
    VectorIndex,
    collect_pages,
    latest_scans,
    point_id,
    product_point_id,
    scan_point_id,
    vectors_in_order,
)
from worker.settings import IndexSettings

T = TypeVar("T")


def _transient_on_outage(method: Callable[..., T]) -> Callable[..., T]:
    """A server that is down, overloaded or slow is a transient failure."""

    @wraps(method)
    def wrapper(*args, **kwargs) -> T:
        try:
            return method(*args, **kwargs)
        except UnexpectedResponse as error:
            if error.status_code is not None and error.status_code < 500:
                raise
            raise TransientError(f"Qdrant error: {error}") from None
        except (
            ResponseHandlingException,
            httpx.TransportError,
            ConnectionError,
            TimeoutError,
        ) as error:
            raise TransientError(f"Qdrant unreachable: {error}") from None

    return wrapper


def _match(key: str, value: str) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def open_client(settings: IndexSettings) -> QdrantClient:
    url = settings.url or ":memory:"
    if url == ":memory:":
        return QdrantClient(location=":memory:")
    if "://" not in url:
        return QdrantClient(path=url)
    options = {"verify": str(settings.ca_file)} if settings.ca_file else {}
    return QdrantClient(
        url=url,
        api_key=settings.api_key.get_secret_value() if settings.api_key else None,
        timeout=10,
        **options,
    )


def references_collection(prefix: str, model_id: str) -> str:
    return f"{prefix}-references-{model_id}"


def references_alias(prefix: str) -> str:
    return f"{prefix}-references"


def writes_held_alias(prefix: str) -> str:
    """The start of the alias a switch sets while it catches up (`hold_writes`): the time it
    was set, in seconds since the epoch, and a random part follow it."""
    return f"{prefix}-writes-held-"


WRITE_HOLD_SECONDS = 600
"""A hold older than this is one that a switch which died left behind: workers ignore it (and
a switch whose catch-up outlasts it gives up rather than switch)."""


class _WriteHolds:
    """The hold a switch sets on every worker's catalog work while it catches up
    (`VectorIndex.hold_writes`): an alias named with the time it was set, seen by every
    index of the server that shares the collection prefix."""

    _client: QdrantClient
    _settings: IndexSettings
    references_collection: str

    @_transient_on_outage
    def hold_writes(self) -> str:
        alias = (
            f"{writes_held_alias(self._settings.collection_prefix)}{int(time.time())}"
            f"-{secrets.token_hex(4)}"  # two switches in one second: two holds
        )
        create = models.CreateAlias(collection_name=self.references_collection, alias_name=alias)
        self._client.update_collection_aliases(
            change_aliases_operations=[models.CreateAliasOperation(create_alias=create)]
        )
        return alias

    @_transient_on_outage
    def release_writes(self, hold: str | None) -> None:
        now = time.time()
        operations = [
            models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=name))
            for name, since in self._holds()
            if name == hold or now - since >= WRITE_HOLD_SECONDS  # its own, or left behind
        ]
        if operations:
            self._client.update_collection_aliases(change_aliases_operations=operations)

    @_transient_on_outage
    def writes_held(self) -> bool:
        now = time.time()
        return any(now - since < WRITE_HOLD_SECONDS for _, since in self._holds())

    def _holds(self) -> list[tuple[str, int]]:
        """The holds set now: each alias and when it was set (`<unix time>[-<random>]`)."""
        start = writes_held_alias(self._settings.collection_prefix)
        holds = []
        for alias in self._client.get_aliases().aliases:
            since = alias.alias_name.removeprefix(start).partition("-")[0]
            if alias.alias_name.startswith(start) and since.isdigit():
                holds.append((alias.alias_name, int(since)))
        return holds


class QdrantServerIndex(_WriteHolds, VectorIndex):
    def __init__(
        self,
        settings: IndexSettings,
        model_id: str,
        dim: int,
        client: QdrantClient | None = None,
        collection: str | None = None,
    ) -> None:
        self.model_id = model_id
        self.dim = dim
        self._client = client or open_client(settings)
        self._settings = settings
        self.references_collection = collection or references_collection(
            settings.collection_prefix, model_id
        )
        self.scans = f"{settings.collection_prefix}-scans-{model_id}"
        self._ensure_collection(
            self.references_collection, ["product_id", "category", "source"], []
        )
        self._ensure_collection(self.scans, ["scan_id"], ["created_at"])
        self.products = f"{settings.collection_prefix}-products-{model_id}"
        self._ensure_collection(self.products, ["product_id"], [], size=1)
        if self.current_collection() is None:  # the first model in service
            self.make_current()

    @_transient_on_outage
    def _ensure_collection(
        self, name: str, keyword_fields: list[str], float_fields: list[str], size: int = 0
    ) -> None:
        if self._client.collection_exists(name):
            return
        self._client.create_collection(
            name,
            vectors_config=models.VectorParams(
                size=size or self.dim, distance=models.Distance.COSINE
            ),
            hnsw_config=models.HnswConfigDiff(
                m=self._settings.hnsw_m, ef_construct=self._settings.hnsw_ef_construct
            ),
        )
        for field in keyword_fields:
            self._client.create_payload_index(name, field, models.PayloadSchemaType.KEYWORD)
        for field in float_fields:
            self._client.create_payload_index(name, field, models.PayloadSchemaType.FLOAT)

    @_transient_on_outage
    def upsert(self, images: Sequence[ReferenceImage]) -> None:
        if not images:
            return
        self._client.upsert(
            self.references_collection,
            points=[
                models.PointStruct(
                    id=point_id(image.product_id, image.image_id, self.model_id),
                    vector=image.vector.astype(np.float32).tolist(),
                    payload=image.payload(self.model_id),
                )
                for image in images
            ],
            wait=True,
        )

    @_transient_on_outage
    def product_images(self, product_id: str) -> list[StoredImage]:
        records = self._scroll(
            self.references_collection, models.Filter(must=[_match("product_id", product_id)])
        )
        return [StoredImage.from_payload(record.payload or {}) for record in records]

    def all_images(self, page_size: int = 256) -> Iterator[list[StoredImage]]:
        offset = None
        while True:
            records, offset = _transient_on_outage(self._client.scroll)(
                self.references_collection, limit=page_size, offset=offset, with_payload=True
            )
            yield [StoredImage.from_payload(record.payload or {}) for record in records]
            if offset is None:
                return

    @_transient_on_outage
    def delete_images(self, product_id: str, image_ids: Sequence[str]) -> None:
        if image_ids:
            self._client.delete(
                self.references_collection,
                points_selector=models.PointIdsList(
                    points=[point_id(product_id, i, self.model_id) for i in image_ids]
                ),
                wait=True,
            )

    @_transient_on_outage
    def delete_product(self, product_id: str) -> None:
        self._client.delete(
            self.references_collection,
            points_selector=models.FilterSelector(
                filter=models.Filter(must=[_match("product_id", product_id)])
            ),
            wait=True,
        )

    @_transient_on_outage
    def set_product_info(
        self, product_id: str, sku: str, name: str | None, category: str | None
    ) -> None:
        self._client.set_payload(
            self.references_collection,
            payload={"sku": sku, "name": name, "category": category},
            points=models.Filter(must=[_match("product_id", product_id)]),
            wait=True,
        )

    @_transient_on_outage
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
        query_filter = models.Filter(must=conditions) if conditions else None
        results = []
        for vector in vectors:
            groups = self._client.query_points_groups(
                self.references_collection,
                group_by="product_id",
                query=vector.tolist(),
                query_filter=query_filter,
                limit=top_k,
                group_size=1,
                with_payload=True,
                search_params=models.SearchParams(hnsw_ef=self._settings.hnsw_ef),
            ).groups
            hits = []
            for group in groups:
                best = group.hits[0]
                payload = best.payload or {}
                hits.append(
                    ProductHit(
                        payload["product_id"],
                        payload["sku"],
                        float(best.score),
                        payload["image_id"],
                        payload["source"],
                        payload.get("category"),
                        payload.get("name"),
                        payload.get("uri"),
                    )
                )
            results.append(hits)
        return results

    @_transient_on_outage
    def count(self) -> int:
        return self._client.count(self.references_collection, exact=True).count

    @_transient_on_outage
    def references(self, product_id: str | None = None) -> ReferenceSet:
        scroll_filter = (
            models.Filter(must=[_match("product_id", product_id)]) if product_id else None
        )
        records = self._scroll(self.references_collection, scroll_filter, with_vectors=True)
        return ReferenceSet.from_points(records, self.dim)

    @_transient_on_outage
    def scan_vectors(self, limit: int) -> np.ndarray:
        ids = latest_scans(self._scroll(self.scans, None), limit)
        records = self._client.retrieve(self.scans, ids, with_payload=False, with_vectors=True)
        return vectors_in_order(ids, records, self.dim)

    def _scroll(
        self, collection: str, scroll_filter, with_vectors: bool = False, limit: int | None = None
    ) -> list:
        return collect_pages(
            lambda offset: self._client.scroll(
                collection,
                scroll_filter=scroll_filter,
                limit=1024,
                offset=offset,
                with_payload=True,
                with_vectors=with_vectors,
            ),
            limit,
        )

    @_transient_on_outage
    def remember_scan(self, record: ScanRecord) -> None:
        self._client.upsert(
            self.scans,
            points=[
                models.PointStruct(
                    id=scan_point_id(record.scan_id, self.model_id),
                    vector=record.vector.astype(np.float32).tolist(),
                    payload=record.payload(),
                )
            ],
            wait=True,
        )

    @_transient_on_outage
    def recall_scan(self, scan_id: str) -> ScanRecord | None:
        records = self._client.retrieve(
            self.scans,
            [scan_point_id(scan_id, self.model_id)],
            with_payload=True,
            with_vectors=True,
        )
        if not records:
            return None
        return ScanRecord.from_point(records[0].payload or {}, records[0].vector)

    @_transient_on_outage
    def forget_scans_before(self, timestamp: float) -> None:
        self._client.delete(
            self.scans,
            points_selector=models.FilterSelector(
                filter=models.Filter(
                    must=[models.FieldCondition(key="created_at", range=models.Range(lt=timestamp))]
                )
            ),
            wait=True,
        )

    @_transient_on_outage
    def product_state(self, product_id: str) -> ProductState | None:
        records = self._client.retrieve(
            self.products, [product_point_id(product_id, self.model_id)], with_payload=True
        )
        return ProductState.from_payload(records[0].payload or {}) if records else None

    def set_product_state(self, state: ProductState) -> None:
        self.set_product_states([state])

    @_transient_on_outage
    def set_product_states(self, states: Sequence[ProductState]) -> None:
        for start in range(0, len(states), 1024):  # a reindex's copy: requests of bounded size
            points = [
                models.PointStruct(
                    id=product_point_id(state.product_id, self.model_id),
                    vector=[1.0],
                    payload=state.payload(),
                )
                for state in states[start : start + 1024]
            ]
            self._client.upsert(self.products, points=points, wait=True)

    @_transient_on_outage
    def all_product_states(self) -> list[ProductState]:
        records = self._scroll(self.products, None)
        return [ProductState.from_payload(record.payload or {}) for record in records]

    @_transient_on_outage
    def make_current(self) -> None:
        """Point the alias `<prefix>-references` at this model's collection, in one atomic
        operation (readers of the alias never see it missing)."""
        alias = references_alias(self._settings.collection_prefix)
        operations: list = []
        if self.current_collection() is not None:
            operations.append(
                models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))
            )
        operations.append(
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(
                    collection_name=self.references_collection, alias_name=alias
                )
            )
        )
        self._client.update_collection_aliases(change_aliases_operations=operations)

    def current_model_id(self) -> str | None:
        collection = self.current_collection()
        prefix = references_collection(self._settings.collection_prefix, "")
        return collection.removeprefix(prefix) if collection else None

    @_transient_on_outage
    def current_collection(self) -> str | None:
        """The collection the alias `<prefix>-references` points at, if any."""
        alias = references_alias(self._settings.collection_prefix)
        for description in self._client.get_aliases().aliases:
            if description.alias_name == alias:
                return description.collection_name
        return None

    def close(self) -> None:

        self._client.close()

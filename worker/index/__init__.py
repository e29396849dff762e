"""Vector index back ends behind one interface (see `base.VectorIndex`)."""

from __future__ import annotations

from worker.index.base import (
    SOURCE_CATALOG,
    SOURCE_CONFIRMED_SCAN,
    ImageHit,
    ProductHit,
    ReferenceImage,
    ReferenceSet,
    ScanRecord,
    StoredImage,
    VectorIndex,
    group_by_product,
    point_id,
)
from worker.settings import IndexBackend, IndexSettings


def open_index(settings: IndexSettings, model_id: str, dim: int) -> VectorIndex:
    """Open (creating if needed) the index of `model_id` on the configured back end."""
    if settings.backend is IndexBackend.qdrant:
        from worker.index.server import QdrantServerIndex

        return QdrantServerIndex(settings, model_id, dim)
    from worker.index.edge import EdgeIndex

    return EdgeIndex(settings, model_id, dim)


__all__ = [
    "SOURCE_CATALOG",
    "SOURCE_CONFIRMED_SCAN",
    "ImageHit",
    "ProductHit",
    "ReferenceImage",
    "ReferenceSet",
    "ScanRecord",
    "StoredImage",
    "VectorIndex",
    "group_by_product",
    "open_index",
    "point_id",
]

"""Vector index back ends behind one interface (see `base.VectorIndex`)."""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path

from worker.index.base import (
    SOURCE_CATALOG,
    SOURCE_CONFIRMED_SCAN,
    ImageHit,
    ProductHit,
    ProductState,
    ReferenceImage,
    ReferenceSet,
    ScanRecord,
    StoredImage,
    VectorIndex,
    group_by_product,
    point_id,
)
from worker.settings import IndexBackend, IndexSettings


def stored_dimension(settings: IndexSettings, model_id: str) -> int | None:
    """The vector size of an existing index of `model_id`, or None if there is none."""
    if settings.backend is IndexBackend.qdrant:
        from worker.index.server import open_client, references_collection

        name = references_collection(settings.collection_prefix, model_id)
        with closing(open_client(settings)) as client:
            if not client.collection_exists(name):
                return None
            return client.get_collection(name).config.params.vectors.size
    config = Path(settings.path) / model_id / "references" / "edge_config.json"
    if not config.is_file():
        return None
    return int(json.loads(config.read_text())["vectors"][""]["size"])


def current_index_model(settings: IndexSettings) -> str | None:
    """The model whose index is in service (the `current` link, or the alias), if any."""
    if settings.backend is IndexBackend.qdrant:
        from worker.index.server import open_client, references_alias, references_collection

        alias = references_alias(settings.collection_prefix)
        prefix = references_collection(settings.collection_prefix, "")
        with closing(open_client(settings)) as client:
            aliases = client.get_aliases().aliases
        for description in aliases:
            if description.alias_name == alias:
                return description.collection_name.removeprefix(prefix)
        return None
    from worker.index.edge import current_model

    return current_model(Path(settings.path))


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
    "ProductState",
    "ReferenceImage",
    "ReferenceSet",
    "ScanRecord",
    "StoredImage",
    "VectorIndex",
    "group_by_product",
    "open_index",
    "point_id",
]

"""What the handlers need of the embedder (`worker.vision.embedder.Embedder`), so that they
can be tested with any object that embeds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from PIL import Image

from worker.vectors import ImageKind, VectorLayout


class Embeds(Protocol):
    model_id: str
    dim: int

    @property
    def layout(self) -> VectorLayout: ...

    def embed(
        self, images: Sequence[Image.Image], kind: ImageKind = ImageKind.catalog
    ) -> np.ndarray:
        """Unit vectors, one per picture, as views of their kind."""
        ...


def embed_parts(embedder: Embeds, images: Sequence[Image.Image]) -> list[np.ndarray]:
    """Per catalog image, the vectors of its separate pieces (`Embedder.embed_parts`); none
    from an embedder that does not cut sets into pieces."""
    split = getattr(embedder, "embed_parts", None)
    if split is None:
        return [np.zeros((0, embedder.dim), dtype=np.float32) for _ in images]
    return split(images)

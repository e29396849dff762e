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

    def embed_parts(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        """Per catalog image, the vectors of its separate pieces (none unless it shows a set
        and the model cuts sets: `MODEL__CATALOG_PARTS`)."""
        ...

"""Models loaded once for several benchmark runs of one job, each remembering the vectors of
the pictures it embedded: `jewelmatch train` judges each version twice (the outside and
brand-new products' roles swapped), on the same pictures."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from worker.settings import ModelSettings
from worker.vectors import ImageKind
from worker.vision.embedder import Embedder


class RememberingEmbedder:
    """An embedder that embeds a picture once per kind (the same pixels: the same vector);
    everything else is the wrapped embedder's."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self._vectors: dict[tuple, np.ndarray] = {}

    def embed(
        self, images: Sequence[Image.Image], kind: ImageKind = ImageKind.catalog
    ) -> np.ndarray:
        if not images:
            return self.embedder.embed([], kind)
        keys = [_key(image, kind) for image in images]
        missing = {
            key: image for key, image in zip(keys, images, strict=True) if key not in self._vectors
        }  # (a picture given twice is embedded once)
        if missing:
            vectors = self.embedder.embed(list(missing.values()), kind)
            self._vectors.update(zip(missing, vectors, strict=True))
        return np.stack([self._vectors[key] for key in keys])

    def __getattr__(self, name: str) -> object:
        return getattr(self.embedder, name)


def _key(image: Image.Image, kind: ImageKind) -> tuple:
    pixels = hashlib.blake2b(image.tobytes(), digest_size=16).digest()
    return kind, image.mode, image.size, pixels


class LoadedModels:
    def __init__(self) -> None:
        self._loaded: dict[str, RememberingEmbedder] = {}

    def embedder(self, model: ModelSettings) -> RememberingEmbedder:
        """The model of these settings, loaded the first time it is asked for."""
        key = model.model_dump_json()
        if key not in self._loaded:
            self._loaded[key] = RememberingEmbedder(Embedder(model))
        return self._loaded[key]

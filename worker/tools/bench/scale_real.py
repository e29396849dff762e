"""Real embeddings for the scale benchmark: the model's vectors of a data set's photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.progress import Progress

from worker.settings import Settings
from worker.tools.folders import read_folder_dataset
from worker.vision.embedder import Embedder, ImageKind
from worker.vision.images import decode_image


def real_vectors(
    settings: Settings, data: Path | None, photos: int, progress: Progress
) -> tuple[np.ndarray | None, int]:
    """Scan-view vectors of `data`'s catalog images and of every n-th of its photos, n the
    number of photos over `photos` (so `photos` or a few more: 420 of grocery's 2 936 for
    400), or None without data; and the model's dimension."""
    embedder = Embedder(settings.model)
    if data is None:
        return None, embedder.dim
    dataset = read_folder_dataset(data)
    paths = [p for product in dataset.products for p in product.catalog]
    paths += [q.path for q in dataset.queries][:: max(1, len(dataset.queries) // photos)]
    task = progress.add_task("embedding real photos", total=len(paths))
    vectors = []
    for start in range(0, len(paths), 16):
        chunk = [decode_image(p.read_bytes(), settings.images) for p in paths[start : start + 16]]
        vectors.append(embedder.embed(chunk, ImageKind.scan))
        progress.advance(task, len(chunk))
    return np.concatenate(vectors), embedder.dim

"""Speed of a model as the worker uses it: one scan view (batch of one), catalog views in
batches."""

from __future__ import annotations

import time
from pathlib import Path

from rich.progress import Progress

from worker.settings import Settings
from worker.tools.bench.recall import percentiles
from worker.tools.folders import read_folder_dataset
from worker.vision.embedder import Embedder, ImageKind
from worker.vision.images import decode_image


def embedding_speed(settings: Settings, data: Path, progress: Progress, scans: int = 40) -> dict:
    embedder = Embedder(settings.model)
    dataset = read_folder_dataset(data)
    photos = [
        decode_image(q.path.read_bytes(), settings.images)
        for q in dataset.queries[:: max(1, len(dataset.queries) // scans)][:scans]
    ]
    catalog = [
        decode_image(p.read_bytes(), settings.images)
        for product in dataset.products
        for p in product.catalog
    ]
    task = progress.add_task(f"timing {embedder.model_id}", total=len(photos) + len(catalog))
    embedder.embed(photos[:2], ImageKind.scan)  # warm-up
    timings = []
    for photo in photos:
        started = time.perf_counter()
        embedder.embed([photo], ImageKind.scan)
        timings.append((time.perf_counter() - started) * 1000)
        progress.advance(task)
    started = time.perf_counter()
    embedder.embed(catalog, ImageKind.catalog)
    progress.advance(task, len(catalog))
    return {
        "image_size": embedder.image_size[0],
        "runtime": embedder.runtime.value,
        "dim": embedder.dim,
        "scan_embed_ms": percentiles(timings, (50, 95)),
        "catalog_images_per_second": len(catalog) / (time.perf_counter() - started),
    }

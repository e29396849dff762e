"""Commands for a person at a terminal: ingest a folder, scan one photo (no broker, no S3).

The folder helpers here are shared with the accuracy benchmark.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import Progress

from shared.contract import S3Object
from worker.errors import PermanentError
from worker.matching.catalog import Catalog, EmbeddedImage
from worker.matching.matcher import Matcher, Ranking
from worker.pipeline.embedding import Embeds
from worker.service.app import opened
from worker.settings import Settings
from worker.tools.folders import FolderProduct, read_folder_dataset
from worker.vectors import ImageKind
from worker.vision.images import decode_image
from worker.vision.local_features import LocalFeatures

FOLDER_BUCKET = "folder"


def _load(path: Path, settings: Settings) -> Image.Image:
    return decode_image(path.read_bytes(), settings.images)


def embed_paths(
    embedder: Embeds,
    paths: Sequence[Path],
    kind: ImageKind,
    settings: Settings,
    progress: Progress,
    label: str,
    on_batch: Callable[[list[Image.Image]], None] = lambda batch: None,
    unreadable: dict[Path, str] | None = None,
) -> np.ndarray:
    """Decode and embed files in batches, with a progress bar; `on_batch` is handed each
    decoded batch too. A file that does not decode raises, or with `unreadable` is left out
    (no row) and its reason kept there."""
    task = progress.add_task(label, total=len(paths))
    chunks = []
    step = max(1, settings.model.batch_size)
    for start in range(0, len(paths), step):
        batch = []
        for path in paths[start : start + step]:
            try:
                batch.append(_load(path, settings))
            except PermanentError as error:
                if unreadable is None:
                    raise
                unreadable[path] = error.detail
        if batch:
            chunks.append(embedder.embed(batch, kind))
            on_batch(batch)
        progress.advance(task, len(paths[start : start + step]))
    if not chunks:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    return np.concatenate(chunks)


def folder_reader(root: Path, settings: Settings) -> Callable[[str], Image.Image]:
    """Reads a reference image of a folder data set by its URI (`s3://<any bucket>/<product>/
    <file>`, as ingested here), for the detail stage."""

    def read(uri: str) -> Image.Image:
        return _load(root / S3Object.model_validate(uri).key, settings)

    return read


def detail_of_paths(
    matcher: Matcher, paths: Sequence[Path], settings: Settings, progress: Progress, label: str
) -> list[LocalFeatures] | None:
    """The detail stage's features of files (None where the stage does not act)."""
    if not matcher.compares_detail:
        return None
    task = progress.add_task(label, total=len(paths))
    features = []
    for path in paths:
        features += matcher.scan_details([_load(path, settings)]) or []
        progress.advance(task)
    return features


def ingest_products(
    embedder: Embeds,
    catalog: Catalog,
    products: Sequence[FolderProduct],
    settings: Settings,
    progress: Progress,
    unreadable: dict[Path, str] | None = None,
) -> int:
    """Ingest each product's `catalog_*` images as a `product.created` event would: with
    `unreadable`, an image that does not decode is left out (and out of the index) and its
    reason kept there, the product stored with its other images. Returns the images stored."""
    paths = [path for product in products for path in product.catalog]
    pieces: list[np.ndarray] = []  # each picture's, decoded once with its embedding
    vectors = iter(
        embed_paths(
            embedder,
            paths,
            ImageKind.catalog,
            settings,
            progress,
            "catalog images",
            on_batch=lambda batch: pieces.extend(embedder.embed_parts(batch)),
            unreadable=unreadable,
        )
    )
    parts = iter(pieces)
    skipped = unreadable or {}
    for product in products:
        event = product.catalog_event(FOLDER_BUCKET)
        plan = catalog.plan(event)
        by_id = {image.image_id: image for image in event.images}
        embedded = [
            EmbeddedImage(by_id[path.name], next(vectors), parts=next(parts))
            for path in product.catalog
            if path not in skipped
        ]
        unusable = [path.name for path in product.catalog if path in skipped]
        to_store = [item for item in embedded if item.image in plan.to_embed]
        catalog.apply(event, plan, to_store, unusable)
    return len(paths) - len(skipped)


def ingest_folder(
    settings: Settings, folder: Path, console: Console
) -> tuple[int, dict[Path, str]]:
    """The images stored, and each image left out because it does not decode, with why."""
    dataset = read_folder_dataset(folder)
    products = [p for p in dataset.products if p.catalog]
    unreadable: dict[Path, str] = {}
    with opened(settings) as components, Progress(console=console) as progress:
        catalog = components.matcher.catalog()
        stored = ingest_products(
            components.embedder, catalog, products, settings, progress, unreadable
        )
    return stored, unreadable


def scan_image(
    settings: Settings, image: Path, top_k: int, category: str | None, folder: Path | None = None
) -> tuple[Ranking, str]:
    """Rank one photo; with the `folder` its catalog was ingested from, the detail stage
    compares the photo with its candidates' images there."""
    picture = decode_image(image.read_bytes(), settings.images)
    with opened(settings) as components:
        matcher = components.matcher
        if folder is not None:
            matcher.read_references_with(folder_reader(folder, settings))
        vectors = components.embedder.embed([picture], ImageKind.scan)
        details = matcher.scan_details([picture])
        return matcher.rank(vectors, top_k, category, details)[0], matcher.model_id

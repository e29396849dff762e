"""Commands for a person at a terminal: ingest a folder, scan one photo (no broker, no S3)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from worker.app import opened
from worker.catalog import Catalog
from worker.dataset import read_folder_dataset
from worker.images import decode_image
from worker.index import SOURCE_CATALOG, ReferenceImage
from worker.matching import Ranking
from worker.settings import Settings


def ingest_folder(settings: Settings, folder: Path, console: Console) -> int:
    dataset = read_folder_dataset(folder)
    products = [p for p in dataset.products if p.catalog]
    total = sum(len(p.catalog) for p in products)
    stored = 0
    with opened(settings) as components, Progress(console=console) as progress:
        task = progress.add_task("ingesting", total=total)
        catalog = Catalog(components.index)
        for product in products:
            pictures = [
                decode_image(path.read_bytes(), settings.images) for path in product.catalog
            ]
            vectors = components.embedder.embed(pictures)
            catalog.index.upsert(
                [
                    ReferenceImage(
                        product_id=product.product_id,
                        image_id=path.name,
                        sku=product.product_id,
                        vector=vector,
                        source=SOURCE_CATALOG,
                        category=product.category,
                        uri=path.resolve().as_uri(),
                    )
                    for path, vector in zip(product.catalog, vectors, strict=True)
                ]
            )
            stored += len(product.catalog)
            progress.update(task, advance=len(product.catalog))
    return stored


def scan_image(
    settings: Settings, image: Path, top_k: int, category: str | None
) -> tuple[Ranking, str]:
    picture = decode_image(image.read_bytes(), settings.images)
    with opened(settings) as components:
        return components.matcher.match([picture], top_k, category)[0], components.matcher.model_id

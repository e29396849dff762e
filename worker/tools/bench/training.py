"""`jewelmatch bench train`: the whole `jewelmatch train` job, timed, on a folder data set.

A deployment is set up as production would have it after weeks of scanning: each product's
catalog images and its first `photos` photos of a split in moto's S3 server, the catalog in a
fresh embedded index, and every photo a scan the worker remembered and a person confirmed
(the later the photo's number, the more recent). Then the job runs as `jewelmatch train` does:
export, judge the model in service, fine-tune, judge the candidate, keep the version. The
model cache is a temporary folder, so no version is left behind.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import Progress

from worker.service.app import opened
from worker.settings import Settings
from worker.tools.bench.accuracy import first_photos, remember_scans
from worker.tools.bench.pipeline import bench_s3, s3_client
from worker.tools.bench.servers import start_moto_server
from worker.tools.folders import FolderProduct, read_folder_dataset
from worker.tools.terminal import FOLDER_BUCKET, ingest_products
from worker.tools.training.job import TrainOptions, train_version


@dataclass(frozen=True)
class TrainBenchOptions:
    data: Path
    split: str = "train"
    photos: int = 10
    job: TrainOptions = field(default_factory=TrainOptions)


def _deployment(settings: Settings, endpoint: str, workdir: Path) -> Settings:
    return settings.model_copy(
        update={
            "s3": bench_s3(settings.s3, endpoint, [FOLDER_BUCKET]),
            "index": settings.index.model_copy(update={"path": workdir / "index"}),
            "model": settings.model.model_copy(update={"cache_dir": workdir / "models"}),
        }
    )


def _confirmed_deployment(
    settings: Settings, products: list[FolderProduct], split: str, photos: int, progress: Progress
) -> int:
    """Upload, ingest, remember and confirm; returns the number of confirmed photos."""
    s3 = s3_client(settings.s3)
    s3.create_bucket(Bucket=FOLDER_BUCKET)
    # confirmed in rounds, as a warehouse's scans interleave products: every product's first
    # photo, then every product's second... (the latest confirmations are then of every product)
    per_product = [first_photos(product, split, photos) for product in products]
    scans = [shots[n] for n in range(photos) for shots in per_product if n < len(shots)]
    task = progress.add_task("uploading photos", total=len(scans))
    for product in products:
        for path in product.catalog:
            s3.put_object(
                Bucket=FOLDER_BUCKET, Key=product.object_key(path), Body=path.read_bytes()
            )
    for photo in scans:
        s3.put_object(Bucket=FOLDER_BUCKET, Key=photo.object_key(), Body=photo.path.read_bytes())
        progress.advance(task)
    with opened(settings) as components:
        matcher = components.matcher
        ingest_products(components.embedder, matcher.catalog(), products, settings, progress)
        for record, photo in zip(
            remember_scans(components, scans, settings, progress, FOLDER_BUCKET), scans, strict=True
        ):
            if not matcher.scans.confirm(record, photo.product_id):
                raise RuntimeError(f"could not confirm {record.scan_id}")
    return len(scans)


def run_train_bench(settings: Settings, options: TrainBenchOptions, progress: Progress) -> dict:
    """Figures of one `jewelmatch train` run: its seconds, the card's counts and the gate."""
    from worker.index import current_index_model, open_index, stored_dimension
    from worker.pipeline.storage import open_image_store

    dataset = read_folder_dataset(options.data)
    products = [
        p
        for p in dataset.products
        if p.catalog and sum(q.split == options.split for q in p.queries) >= options.photos
    ]
    moto, endpoint = start_moto_server()
    try:
        with tempfile.TemporaryDirectory(prefix="jewelmatch-bench-train-") as tmp:
            deployment = _deployment(settings, endpoint, Path(tmp))
            confirmed = _confirmed_deployment(
                deployment, products, options.split, options.photos, progress
            )
            store = open_image_store(deployment.s3, deployment.images.max_bytes)
            model_id = current_index_model(deployment.index)
            index = open_index(
                deployment.index, model_id, stored_dimension(deployment.index, model_id)
            )
            started = time.perf_counter()
            try:
                version, _ = train_version(deployment, index, store, options.job, progress)
            finally:
                index.close()
            seconds = time.perf_counter() - started
            card = version.card
    finally:
        moto.stop()
    return {
        "products": len(products),
        "confirmed_photos": confirmed,
        "model": model_id,
        "seconds": round(seconds, 1),
        "training_seconds": card["training"]["seconds"],
        "data": card["data"],
        "towers": card["training"]["towers"],
        "gate": card["gate"],
    }

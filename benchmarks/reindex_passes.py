"""What a `reindex` pass costs, the first and the catch-up that `reindex` (or `model promote`)
runs while every worker holds its catalog work: a folder data set's catalog ingested into an
embedded index with one model, then re-embedded for another, pass after pass, in-process
(the command's start and the models' loading left out).

    .venv/bin/python benchmarks/reindex_passes.py --data ../shared/data/jewelry-dev
        [--from-model efficientnet-lite1+efficientnet-lite2] [--to-model efficientnet-lite0]
        [--deleted 5] [--fetch-latency-ms 0] [--out FILE]

Prints one JSON object (with `--out`, also written as a result file): per pass its seconds
and what it re-embedded, kept and removed: the first pass (an empty new index), the catch-up
with nothing changed, and the catch-up after `--deleted` products were deleted from the old
index. `--fetch-latency-ms` adds that wait to every image read, as a remote S3 store would
(the folder is read from the local disk). Figures: docs/operations.md, "Changing the model
safely".
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.progress import Progress

from worker.index import open_index
from worker.pipeline.storage import open_image_store
from worker.service.app import opened
from worker.service.reindex import reindex
from worker.settings import Settings
from worker.tools.bench.report import write_result
from worker.tools.folders import read_folder_dataset
from worker.tools.terminal import FOLDER_BUCKET, ingest_products
from worker.vision.embedder import Embedder


class SlowStore:
    """An image store whose every read first waits `seconds`, as a request to S3 does."""

    def __init__(self, store, seconds: float) -> None:
        self._store, self._seconds = store, seconds

    def fetch(self, ref):
        time.sleep(self._seconds)
        return self._store.fetch(ref)

    def etag(self, ref):
        time.sleep(self._seconds)
        return self._store.etag(ref)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--from-model", default="efficientnet-lite1+efficientnet-lite2")
    parser.add_argument("--to-model", default="efficientnet-lite0")
    parser.add_argument("--deleted", type=int, default=5)
    parser.add_argument("--fetch-latency-ms", type=float, default=0.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="reindex-passes-") as tmp:
        buckets = Path(tmp) / "buckets"
        buckets.mkdir()
        (buckets / FOLDER_BUCKET).symlink_to(args.data.resolve(), target_is_directory=True)
        settings = Settings(
            index={"path": str(Path(tmp) / "index")},
            s3={"backend": "local", "local_root": str(buckets), "allowed_buckets": [FOLDER_BUCKET]},
            model={"name": args.from_model},
        )
        products = [p for p in read_folder_dataset(args.data).products if p.catalog]
        with opened(settings) as components, Progress() as progress:
            catalog = components.matcher.catalog()
            ingest_products(components.embedder, catalog, products, settings, progress)
            source = components.index
            embedder = Embedder(settings.model.model_copy(update={"name": args.to_model}))
            target = open_index(settings.index, embedder.model_id, embedder.dim)
            store = open_image_store(settings.s3, settings.images.max_bytes)
            if args.fetch_latency_ms:
                store = SlowStore(store, args.fetch_latency_ms / 1000)
            passes = []
            for name in ("first", "catch-up, nothing changed", "catch-up, products deleted"):
                if name.endswith("deleted"):
                    for product in products[: args.deleted]:
                        source.delete_product(product.product_id)
                started = time.perf_counter()
                report = reindex(
                    source,
                    target,
                    store,
                    embedder,
                    settings.images,
                    fetch_threads=settings.s3.fetch_threads,
                )
                seconds = round(time.perf_counter() - started, 2)
                passes.append({"pass": name, "seconds": seconds, **vars(report)})
            target.close()
    figures = {
        "data": str(args.data),
        "from_model": args.from_model,
        "to_model": args.to_model,
        "fetch_latency_ms": args.fetch_latency_ms,
        "passes": passes,
    }
    print(json.dumps(figures, indent=2))
    if args.out:
        write_result(args.out, "reindex_passes", " ".join(sys.argv), figures)


if __name__ == "__main__":
    main()

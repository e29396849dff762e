"""Photos of a confirmation split that are least like the rest of their product's, moved to a
split of their own (`far`) to judge choices on.

Grocery's `train` photos after each product's first 10 are near-copies of them (photos taken
in one go): ranked against those 10 they are found first about nine times in ten, where the
`val` photos, taken another day, are found six times in ten. Choices judged on them barely
move. Each product's `train` photos are split in two by their frozen EfficientNet-Lite0
vectors (centred per product, 2-means on the cosine, the best of 10 starts, seed 0); the
smaller group becomes `far`: never scanned, confirmed or trained on, and judged with
`--split far`. The rest stays `train`, where the protocol takes its scans and
confirmations. Lite0 is not a tower of the
default ensemble, so the split is not drawn by the towers it judges.

    .venv/bin/python benchmarks/far_photos.py ../shared/data/grocery-store \
        benchmarks/grocery-far-photos.csv
    jewelmatch bench accuracy --data ../shared/data/grocery-store \
        --splits benchmarks/grocery-far-photos.csv --split far

Figures and the decision: docs/benchmarks.md, "A harder split to choose on".
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from worker.observability.logs import load_settings
from worker.tools.folders import read_folder_dataset
from worker.vectors import ImageKind, unit_rows
from worker.vision.embedder import Embedder

SPLIT = "train"
FAR = "far"
STARTS = 10
MIN_KEPT = 10
"""Photos a product keeps in `SPLIT` at least (the protocol confirms up to 10)."""


def two_groups(vectors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Group labels (0/1) of unit rows by spherical 2-means, the best of `STARTS` starts."""
    best_fit, best_labels = -np.inf, np.zeros(len(vectors), dtype=int)
    for _ in range(STARTS):
        centres = vectors[rng.choice(len(vectors), 2, replace=False)]
        for _ in range(20):
            labels = np.argmax(vectors @ centres.T, axis=1)
            centres = unit_rows(
                np.stack(
                    [
                        vectors[labels == k].sum(0) if (labels == k).any() else centres[k]
                        for k in range(2)
                    ]
                )
            )
        fit = (vectors @ centres.T).max(axis=1).sum()
        if fit > best_fit:
            best_fit, best_labels = fit, labels
    return best_labels


def main(data: Path, out: Path) -> None:
    settings = load_settings(quiet=True)
    model = settings.model.model_copy(update={"name": "efficientnet-lite0", "colour_weight": 0.0})
    embedder = Embedder(model)
    rng = np.random.default_rng(0)
    rows = []
    for product in tqdm(read_folder_dataset(data).products, desc="products"):
        photos = sorted((q for q in product.queries if q.split == SPLIT), key=lambda q: q.path.name)
        if len(photos) <= MIN_KEPT:
            continue
        images = [Image.open(q.path).convert("RGB") for q in photos]
        vectors = embedder.embed(images, ImageKind.scan)
        labels = two_groups(unit_rows(vectors - vectors.mean(axis=0)), rng)
        far = int(np.argmin(np.bincount(labels, minlength=2)))
        if (labels != far).sum() < MIN_KEPT:
            continue
        rows += [
            (q.object_key(), FAR) for q, label in zip(photos, labels, strict=True) if label == far
        ]
    with out.open("w", newline="") as handle:
        handle.write("# photo,split: written by benchmarks/far_photos.py; see its docstring\n")
        csv.writer(handle, lineterminator="\n").writerows([("photo", "split"), *rows])
    print(f"{len(rows)} photos moved to {FAR!r}: {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

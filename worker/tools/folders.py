"""Folder data sets: one folder per product holding `catalog_*` reference images and `query_*`
photos to match (the layout of `../shared/data/grocery-store`). A photo's split is in its
name (`query_<split>_<anything>.jpg`; `query_<n>.jpg` has none). An optional `manifest.csv`
(columns `product_id, coarse_class, ...`) adds each product's category from `coarse_class`;
its `split` column is not read (in `grocery-store` it agrees with every photo's name).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from shared.contract import BagPhotographed, ProductUpserted
from worker.errors import StartupError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass(frozen=True)
class QueryPhoto:
    product_id: str
    path: Path
    split: str = ""

    def object_key(self, prefix: str = "") -> str:
        """Where this photo lies in a bucket (beside its product's catalog images)."""
        return f"{prefix}{self.product_id}/{self.path.name}"

    def scan_event(
        self, scan_id: str, bucket: str, prefix: str = "", top_k: int = 5
    ) -> BagPhotographed:
        """The `bag.photographed` event a scan station would send for this photo."""
        return BagPhotographed(
            scan_id=scan_id, top_k=top_k, image={"bucket": bucket, "key": self.object_key(prefix)}
        )


@dataclass
class FolderProduct:
    product_id: str
    catalog: list[Path] = field(default_factory=list)
    queries: list[QueryPhoto] = field(default_factory=list)
    category: str | None = None

    def object_key(self, path: Path, prefix: str = "") -> str:
        """Where one of this product's files lies in a bucket."""
        return f"{prefix}{self.product_id}/{path.name}"

    def catalog_event(
        self, bucket: str, prefix: str = "", product_id: str | None = None
    ) -> ProductUpserted:
        """The `product.created` event of this product, its catalog images at `object_key`
        in `bucket` (`product_id` names a copy of the product)."""
        return ProductUpserted(
            product_id=product_id or self.product_id,
            sku=product_id or self.product_id,
            category=self.category,
            images=[
                {"image_id": path.name, "bucket": bucket, "key": self.object_key(path, prefix)}
                for path in self.catalog
            ],
        )


@dataclass
class FolderDataset:
    root: Path
    products: list[FolderProduct]

    @property
    def queries(self) -> list[QueryPhoto]:
        return [query for product in self.products for query in product.queries]


def _split_of(name: str) -> str:
    # query_<split>_<n>.jpg → split; query_<n>.jpg → ""
    parts = Path(name).stem.split("_")
    return parts[1] if len(parts) >= 3 else ""


def read_folder_dataset(root: Path) -> FolderDataset:
    """Raises StartupError (one line, no traceback) where `root` is not a folder data set."""
    root = Path(root)
    if not root.is_dir():
        raise StartupError(f"{root} is not a folder")
    categories: dict[str, str] = {}
    manifest = root / "manifest.csv"
    if manifest.is_file():
        with manifest.open(newline="") as handle:
            for row in csv.DictReader(handle):
                if row.get("coarse_class"):
                    categories[row["product_id"]] = row["coarse_class"]
    products = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        catalog = [p for p in files if p.name.startswith("catalog_")]
        queries = [
            QueryPhoto(folder.name, p, _split_of(p.name))
            for p in files
            if p.name.startswith("query_")
        ]
        if catalog or queries:
            products.append(
                FolderProduct(folder.name, catalog, queries, categories.get(folder.name))
            )
    if not products:
        raise StartupError(
            f"{root} holds no product folders with catalog_* or query_* images "
            "(a folder data set: <product_id>/catalog_*.jpg and query_*.jpg)"
        )
    return FolderDataset(root, products)


def with_splits(dataset: FolderDataset, splits: Mapping[str, str]) -> FolderDataset:
    """`dataset` with the photos named in `splits` (`<product>/<file>` → split) moved to those
    splits (a harder split to judge on: benchmarks/far_photos.py)."""
    unknown = set(splits) - {query.object_key() for query in dataset.queries}
    if unknown:
        raise ValueError(
            f"{len(unknown)} photos to move are not in {dataset.root}, e.g. {min(unknown)}"
        )
    products = [
        replace(
            product,
            queries=[
                replace(query, split=splits.get(query.object_key(), query.split))
                for query in product.queries
            ],
        )
        for product in dataset.products
    ]
    return FolderDataset(dataset.root, products)

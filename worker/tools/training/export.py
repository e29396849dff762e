"""The confirmed matches of the index in service, written as a folder data set (the layout of
`jewelmatch bench accuracy`), split so that what trains never sees what it is judged on:

- a share of the confirmed products (chosen by a hash of the product id and the seed) never
  trains, and is judged in three roles (`held_out_roles`): a few are left out of the catalog,
  jewels the shop does not sell (all their photos `val`); of the rest, half are brand-new
  products (all their photos `val`: their catalog image is all the model has of them), and
  half are judged as production keeps them after the run: the latest share of each one's
  photos is `val`, the rest `train` (confirmed in the judging run, never trained on: labels
  for the confidence and references, as the index keeps them after the run);
- of the other products' confirmations, the latest share (by the time the photo was taken) is
  `val`; the rest is `train`, oldest first.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from shared.contract import S3Object
from worker.errors import PermanentError
from worker.index import SOURCE_CATALOG, SOURCE_CONFIRMED_SCAN, StoredImage, VectorIndex
from worker.observability.logs import get_logger
from worker.pipeline.storage import ImageStore
from worker.service.reindex import fetch_stored
from worker.settings import ImageSettings
from worker.tools.folders import IMAGE_SUFFIXES
from worker.vectors import is_part
from worker.vision.images import decode_image

log = get_logger(__name__)


@dataclass
class ExportReport:
    products: int = 0
    catalog_images: int = 0
    train_photos: int = 0
    recent_photos: int = 0
    held_out_products: list[str] = field(default_factory=list)
    outside_products: list[str] = field(default_factory=list)
    """Of `held_out_products`, those left out of the judging run's catalog."""
    new_products: list[str] = field(default_factory=list)
    """Of `held_out_products`, those judged as brand-new (catalog image only); the others'
    earlier photos are confirmed in the judging run, never trained on."""
    held_out_photos: int = 0
    held_out_references: int = 0
    """Of `held_out_photos`, those confirmed (`train` in the data set) but never trained on."""
    skipped: int = 0
    uris: dict[str, str] = field(default_factory=dict)
    """Where each exported photo came from: `<product folder>/<file>` → its URI."""

    @property
    def kept_products(self) -> frozenset[str]:
        """The held-out products judged as the index keeps them after the run: neither outside
        the catalog nor brand-new (their earlier photos confirmed, never trained on)."""
        return frozenset(self.held_out_products) - {*self.new_products, *self.outside_products}

    def to_json(self) -> dict:
        return {
            "products": self.products,
            "catalog_images": self.catalog_images,
            "train_photos": self.train_photos,
            "recent_photos_held_out": self.recent_photos,
            "products_held_out": len(self.held_out_products),
            "held_out_products_outside_the_catalog": len(self.outside_products),
            "held_out_products_judged_as_new": len(self.new_products),
            "photos_of_held_out_products": self.held_out_photos,
            "references_of_held_out_products": self.held_out_references,
            "images_skipped": self.skipped,
        }


def held_out_product(product_id: str, share: float, seed: int) -> bool:
    """Whether a product is in the product-disjoint share (stable across runs and machines)."""
    return _draw(product_id, seed) < share


def held_out_roles(held_out: list[str], outside: int, seed: int) -> tuple[list[str], list[str]]:
    """The held-out products left out of the judging run's catalog (`outside` of them, one
    always left), and those judged as brand-new (the larger half of the rest), by the seed:
    with the same seed and share, no earlier version trained on any of them either."""
    drawn = sorted(held_out, key=lambda product_id: _draw(f"role\x1f{product_id}", seed))
    out = min(outside, max(len(drawn) - 1, 0))
    rest = drawn[out:]
    return sorted(drawn[:out]), sorted(rest[: math.ceil(len(rest) / 2)])


def _draw(key: str, seed: int) -> float:
    """A number in [0, 1) fixed by the key and the seed."""
    digest = hashlib.sha256(f"{seed}\x1f{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def export_confirmations(
    index: VectorIndex,
    store: ImageStore,
    limits: ImageSettings,
    out: Path,
    recent_share: float,
    product_share: float,
    seed: int,
    on_progress: Callable[[int], None] = lambda done: None,
    outside: int = 0,
    fetch_threads: int = 4,
) -> ExportReport:
    images: dict[str, list[StoredImage]] = {}
    for page in index.all_images():
        for stored in page:
            images.setdefault(stored.product_id, []).append(stored)
        on_progress(len(page))
    catalogs = {
        product_id: [s for s in stored if s.source == SOURCE_CATALOG and not is_part(s.image_id)]
        for product_id, stored in images.items()
    }
    # A product with no catalog image left is neither trained nor judged: it takes no part
    # in the draws (else it could fill a held-out role, or a recent photo's place, for nothing).
    confirmed = {
        product_id: [s for s in stored if s.source == SOURCE_CONFIRMED_SCAN]
        for product_id, stored in images.items()
        if catalogs[product_id]
    }
    held_out = {
        p for p, photos in confirmed.items() if photos and held_out_product(p, product_share, seed)
    }
    trainable = sorted(
        (s.taken_at or 0.0, s.image_id, s)
        for p, photos in confirmed.items()
        if p not in held_out
        for s in photos
    )
    recent_count = round(recent_share * len(trainable))
    recent = {s.image_id for _, _, s in trainable[len(trainable) - recent_count :]}
    report = ExportReport(held_out_products=sorted(held_out))
    report.outside_products, report.new_products = held_out_roles(
        report.held_out_products, outside, seed
    )
    copies: list[_Copy] = []
    for product_id in sorted(confirmed):
        folder = out / quote(product_id, safe="-_.")
        photos = sorted(confirmed[product_id], key=lambda s: (s.taken_at or 0.0, s.image_id))
        report.products += 1
        for n, image in enumerate(catalogs[product_id]):
            copies.append(_Copy(image, folder / f"catalog_{n:04d}", ("catalog_images",)))
        judging = recent
        if product_id in report.new_products or product_id in report.outside_products:
            judging = {p.image_id for p in photos}
        elif product_id in held_out:  # the latest share of its own photos, one at least
            judging = {p.image_id for p in photos[-max(1, round(recent_share * len(photos))) :]}
        for n, photo in enumerate(photos):
            split = "val" if photo.image_id in judging else "train"
            if product_id in held_out:
                counts = ("held_out_photos",) + (("held_out_references",) * (split == "train"))
            else:
                counts = ("recent_photos",) if split == "val" else ("train_photos",)
            copies.append(_Copy(photo, folder / f"query_{split}_{n:04d}", counts))
    _copy_all(store, limits, copies, report, fetch_threads)
    return report


@dataclass(frozen=True)
class _Copy:
    image: StoredImage
    stem: Path
    counts: tuple[str, ...]
    """The report's counters that this image adds one to once written."""


COPY_CHUNK = 64
"""Images read at once at most: their bytes wait in memory until written in order."""


def _copy_all(
    store: ImageStore,
    limits: ImageSettings,
    copies: list[_Copy],
    report: ExportReport,
    fetch_threads: int,
) -> None:
    """Read the images from S3 `fetch_threads` at a time (a request's wait overlaps the
    others'), and write each that decodes where the data set expects it, in order."""

    def read(copy: _Copy) -> bytes | PermanentError:
        try:
            data = fetch_stored(store, copy.image)
            decode_image(data, limits)
            return data
        except PermanentError as error:
            return error

    with ThreadPoolExecutor(fetch_threads, thread_name_prefix="export-fetch") as pool:
        for start in range(0, len(copies), COPY_CHUNK):
            chunk = copies[start : start + COPY_CHUNK]
            for copy, data in zip(chunk, pool.map(read, chunk), strict=True):
                if isinstance(data, PermanentError):
                    report.skipped += 1
                    log.warning("training.image_skipped", uri=copy.image.uri, reason=str(data))
                    continue
                _write(data, copy, report)
                for name in copy.counts:
                    setattr(report, name, getattr(report, name) + 1)


def _write(data: bytes, copy: _Copy, report: ExportReport) -> None:
    """Write an image's bytes where the data set expects it."""
    suffix = Path(S3Object.model_validate(copy.image.uri).key).suffix.lower()
    suffix = suffix if suffix in IMAGE_SUFFIXES else ".jpg"  # (decoded by content anyway)
    copy.stem.parent.mkdir(parents=True, exist_ok=True)
    path = copy.stem.with_suffix(suffix)
    path.write_bytes(data)
    report.uris[f"{path.parent.name}/{path.name}"] = copy.image.uri

"""Re-embedding the whole catalog with another model, beside the index in service.

Changing the model changes every vector, so a new model gets a new index (a directory per
model on the embedded engine, a collection per model on a Qdrant server) built from the
images in S3 while the old one keeps answering; then one atomic switch makes the new one
current: the alias `<prefix>-references` on a server, the `current` link of the embedded
engine's data directory. Confirmed scans are re-embedded too (as scans), so what the system
learned survives the change of model, and so does each product's last applied event (its
version, or a deletion's tombstone), so that an older event delivered late stays stale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from worker.errors import PermanentError
from worker.index import SOURCE_CATALOG, ProductState, ReferenceImage, StoredImage, VectorIndex
from worker.observability.logs import get_logger
from worker.pipeline.storage import ImageStore, object_at
from worker.settings import ImageSettings
from worker.vectors import is_part, whole_image_id, with_pieces
from worker.vision.embedder import Embedder, ImageKind
from worker.vision.images import decode_image

log = get_logger(__name__)


@dataclass
class ReindexReport:
    images: int = 0
    reindexed: int = 0
    unchanged: int = 0
    """Images the new index already held as the old one has them: kept, not embedded again."""
    skipped: int = 0
    removed: int = 0
    product_states: int = 0
    """Products whose last applied event (version, deletion) was carried over."""


class ImageSource(Protocol):
    """What a reindex reads: another model's index, or a backup (`worker.service.backup`)."""

    def all_images(self, page_size: int = 256) -> Iterator[list[StoredImage]]: ...

    def all_product_states(self) -> list[ProductState]: ...


def fetch_stored(store: ImageStore, stored: StoredImage) -> bytes:
    """The bytes of a stored reference image, from the S3 location it was stored with."""
    return store.fetch(object_at(stored.uri)).data


def reindex(
    source: ImageSource,
    target: VectorIndex,
    store: ImageStore,
    embedder: Embedder,
    limits: ImageSettings,
    batch_size: int = 32,
    on_progress: Callable[[int], None] = lambda done: None,
    remove_missing: bool = True,
    fetch_threads: int = 4,
) -> ReindexReport:
    """Re-embed every reference image of `source` into `target`, and (`remove_missing`)
    remove from `target` what `source` no longer has. Incremental: an image `target` already
    holds as `source` has it (same URI, ETag and payload) keeps its vector, so a second run
    only embeds what the product events changed meanwhile and takes seconds where the first
    took the whole catalog. A page's images are read from S3 and decoded `fetch_threads` at a
    time (a request's wait overlaps the others'), then embedded together. `on_progress` is
    told how many images each page held (the terminal shows a progress bar with it)."""
    report = ReindexReport()
    held, pieces = _held(target)
    in_source: set[tuple[str, str]] = set()

    def load(stored: StoredImage) -> Image.Image | PermanentError:
        try:
            return decode_image(fetch_stored(store, stored), limits)
        except PermanentError as error:
            return error

    with ThreadPoolExecutor(fetch_threads, thread_name_prefix="reindex-fetch") as pool:
        for page in source.all_images(batch_size):
            wanted: list[StoredImage] = []
            for stored in page:
                if is_part(stored.image_id):
                    continue  # cut again from its image below, if this model cuts sets
                report.images += 1
                key = (stored.product_id, stored.image_id)
                in_source.add(key)
                if held.get(key) == hash(stored):
                    report.unchanged += 1
                    in_source.update(pieces.get(key, ()))
                else:
                    wanted.append(stored)
            loaded: list[tuple[StoredImage, Image.Image]] = []
            for stored, picture in zip(wanted, pool.map(load, wanted), strict=True):
                if isinstance(picture, PermanentError):
                    report.skipped += 1
                    log.warning(
                        "reindex.skipped",
                        product_id=stored.product_id,
                        image_id=stored.image_id,
                        reason=str(picture),
                    )
                else:
                    loaded.append((stored, picture))
            _embed_page(target, embedder, loaded, report, in_source)
            on_progress(len(page))
    if remove_missing:
        report.removed = _remove_missing(target, in_source)
    states = source.all_product_states()
    target.set_product_states(states)
    report.product_states = len(states)
    return report


def _embed_page(
    target: VectorIndex,
    embedder: Embedder,
    loaded: list[tuple[StoredImage, Image.Image]],
    report: ReindexReport,
    in_source: set[tuple[str, str]],
) -> None:
    """Embed a page's pictures, catalog images and confirmed photos each as what they are,
    and store them (with their pieces)."""
    for kind in (ImageKind.catalog, ImageKind.scan):
        chosen = [
            (s, p) for s, p in loaded if (s.source == SOURCE_CATALOG) == (kind is ImageKind.catalog)
        ]
        if not chosen:
            continue
        references = _embedded(embedder, chosen, kind)
        target.upsert(references)
        in_source.update((r.product_id, r.image_id) for r in references)
        report.reindexed += len(chosen)


def _held(target: VectorIndex) -> tuple[dict, dict]:
    """A hash of each whole image `target` holds (what it stores of it, vector aside), by
    (product, image id), and the keys of each one's pieces: a few dozen bytes an image,
    where the images themselves would take far more for a large catalog."""
    held: dict[tuple[str, str], int] = {}
    pieces: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for page in target.all_images():
        for stored in page:
            key = (stored.product_id, stored.image_id)
            if is_part(stored.image_id):
                whole = (stored.product_id, whole_image_id(stored.image_id))
                pieces.setdefault(whole, []).append(key)
            else:
                held[key] = hash(stored)
    return held, pieces


def _embedded(
    embedder: Embedder, chosen: list[tuple[StoredImage, Image.Image]], kind: ImageKind
) -> list[ReferenceImage]:
    """The references of stored images re-embedded as `kind`: each image, and for a catalog
    image that shows a set, each of its pieces (`MODEL__CATALOG_PARTS`)."""
    pictures = [picture for _, picture in chosen]
    vectors = embedder.embed(pictures, kind)
    parts = embedder.embed_parts(pictures) if kind is ImageKind.catalog else [None] * len(chosen)
    return [
        ReferenceImage(
            product_id=s.product_id,
            image_id=image_id,
            sku=s.sku,
            vector=vector,
            source=s.source,
            category=s.category,
            name=s.name,
            uri=s.uri,
            etag=s.etag,
            taken_at=s.taken_at,
        )
        for (s, _), whole, pieces in zip(chosen, vectors, parts, strict=True)
        for image_id, vector in with_pieces(s.image_id, whole, pieces)
    ]


def _remove_missing(target: VectorIndex, in_source: set[tuple[str, str]]) -> int:
    """Delete the images of `target` that the source index no longer holds."""
    stale: dict[str, list[str]] = {}
    for page in target.all_images():
        for stored in page:
            if (stored.product_id, stored.image_id) not in in_source:
                stale.setdefault(stored.product_id, []).append(stored.image_id)
    for product_id, image_ids in stale.items():
        target.delete_images(product_id, image_ids)
    return sum(len(ids) for ids in stale.values())

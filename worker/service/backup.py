"""A backup of the index that an index of any model can be rebuilt from.

The vectors are not kept: they belong to one model and can be made again. What cannot is what
the index has learned and been told: which S3 object each reference image is (catalog images,
and the bag photos people confirmed, with when they were taken), which product it belongs to,
and each product's last applied event (its version, or a deletion's tombstone). That is a few
dozen bytes an image, gzipped; `restore` re-embeds the images from S3 with the configured
model, as `reindex` does from another model's index.

The file is gzip-compressed JSON Lines: a header, one line per image or product state, and a
closing line with the counts, so that a file cut short is refused rather than half restored.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from worker.errors import PermanentError, StartupError
from worker.files import written_whole
from worker.index import (
    SOURCE_CATALOG,
    SOURCE_CONFIRMED_SCAN,
    ProductState,
    StoredImage,
    VectorIndex,
)
from worker.index.server import WRITE_HOLD_SECONDS
from worker.observability.logs import get_logger
from worker.observability.prometheus import INDEX_BACKUP_TIME
from worker.pipeline.storage import ImageStore, object_at
from worker.vectors import is_part

if TYPE_CHECKING:  # a backup loads no model: the nightly job stays small
    from worker.service.reindex import ReindexReport
    from worker.settings import ImageSettings
    from worker.vision.embedder import Embedder

log = get_logger(__name__)

FORMAT = "jewelmatch-index-backup"
FORMAT_VERSION = 1
MAX_LINE_CHARACTERS = 64 * 1024
"""Far above any line a backup writes (an image's fields are bounded by the contract): a
longer one is not a backup's, and is refused before it fills the memory."""


class BackupError(ValueError):
    """A file that is not a whole backup of this format."""


@dataclass(frozen=True)
class BackupSummary:
    model: str
    """The model of the index it was taken from (any model can restore it)."""
    created_at: float
    images: int
    products: int
    """Product states: each product's last applied event, deletions included."""


def write_backup(
    index: VectorIndex, stream: BinaryIO, on_progress: Callable[[int], None] = lambda n: None
) -> BackupSummary:
    """Write every whole image of `index` (a set's pieces are cut again from their image) and
    every product state to `stream`. `on_progress` is told how many images each page held."""
    images = 0
    created_at = time.time()
    with gzip.open(stream, "wt", encoding="utf-8") as out:
        _write(
            out,
            {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "model": index.model_id,
                "created_at": created_at,
            },
        )
        for page in index.all_images():
            for stored in page:
                if not is_part(stored.image_id):
                    _write(out, {"image": dataclasses.asdict(stored)})
                    images += 1
            on_progress(len(page))
        states = index.all_product_states()
        for state in states:
            _write(out, {"state": state.payload()})
        _write(out, {"end": {"images": images, "products": len(states)}})
    return BackupSummary(index.model_id, created_at, images, len(states))


def write_backup_file(
    index: VectorIndex, path: Path, on_progress: Callable[[int], None] = lambda n: None
) -> BackupSummary:
    """`write_backup` into `path`, which appears only once whole: the file is written beside
    it under a name of its own (two writers never share one) and renamed into place."""
    with written_whole(path) as partial, partial.open("wb") as stream:
        return write_backup(index, stream, on_progress)


def backup_if_due(index: VectorIndex, path: Path, hours: float) -> BackupSummary | None:
    """Write the backup at `path` again if it is missing or at least `hours` old (by its
    modification time, so that a restarted worker does not write it again at once)."""
    if path.is_file() and time.time() - path.stat().st_mtime < hours * 3600:
        return None
    return write_backup_file(index, path)


def scheduled_backup(index: VectorIndex, path: Path, hours: float) -> Callable[[], None]:
    """The worker's own backup of its index (`INDEX__BACKUP_FILE`): a callable that writes it
    when due and logs it, for the maintenance's hourly round. A missing folder is a setting
    to fix before the worker starts, not a warning an hour later."""
    if not path.parent.is_dir():
        raise StartupError(f"JEWELMATCH_INDEX__BACKUP_FILE: no such folder: {path.parent}")
    if path.is_file():
        INDEX_BACKUP_TIME.set(path.stat().st_mtime)

    def back_up() -> None:
        started = time.monotonic()
        summary = backup_if_due(index, path, hours)
        if summary is not None:
            INDEX_BACKUP_TIME.set(path.stat().st_mtime)
            log.info(
                "index.backed_up",
                path=str(path),
                images=summary.images,
                products=summary.products,
                seconds=round(time.monotonic() - started, 2),
            )

    return back_up


def _write(out, record: dict) -> None:
    out.write(json.dumps(record, separators=(",", ":")) + "\n")


class BackupFile:
    """A backup on disk, checked whole when opened and then read page by page, never all in
    memory. It offers what `reindex` reads of a source index."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.summary = self._checked()

    def _records(self) -> Iterator[dict]:
        try:
            with gzip.open(self.path, "rt", encoding="utf-8") as lines:
                number = 0
                while line := lines.readline(MAX_LINE_CHARACTERS + 1):
                    number += 1
                    if len(line) > MAX_LINE_CHARACTERS:
                        raise BackupError(
                            f"{self.path}: line {number} is longer than {MAX_LINE_CHARACTERS} "
                            "characters"
                        )
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as error:
                        raise BackupError(f"{self.path}: line {number} is not JSON") from error
        except (OSError, EOFError, zlib.error, UnicodeDecodeError) as error:
            raise BackupError(f"{self.path}: not a whole gzip file ({error})") from error

    def _checked(self) -> BackupSummary:
        records = self._records()
        header = next(records, None)
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise BackupError(f"{self.path}: not a jewelmatch index backup")
        if header.get("version") != FORMAT_VERSION:
            raise BackupError(
                f"{self.path}: backup format {header.get('version')}, this version reads "
                f"{FORMAT_VERSION}"
            )
        counted = {"images": 0, "products": 0}
        end = None
        for record in records:
            if end is not None:
                raise BackupError(f"{self.path}: lines after the end")
            if not isinstance(record, dict):
                raise BackupError(f"{self.path}: a line that is no JSON object")
            if "image" in record:
                _stored_image(record["image"], self.path)
                counted["images"] += 1
            elif "state" in record:
                _product_state(record["state"], self.path)
                counted["products"] += 1
            elif "end" in record:
                end = record["end"]
            else:
                raise BackupError(f"{self.path}: a line that is no image, state or end")
        if end != counted:
            raise BackupError(
                f"{self.path}: cut short or altered (it ends with {end}, holds {counted})"
            )
        return BackupSummary(header.get("model", ""), header.get("created_at", 0.0), **counted)

    def all_images(self, page_size: int = 256) -> Iterator[list[StoredImage]]:
        page: list[StoredImage] = []
        for record in self._records():
            if "image" in record:
                page.append(_stored_image(record["image"], self.path))
                if len(page) == page_size:
                    yield page
                    page = []
        if page:
            yield page

    def all_product_states(self) -> list[ProductState]:
        return [
            _product_state(record["state"], self.path)
            for record in self._records()
            if "state" in record
        ]


def _stored_image(fields: dict, path: Path) -> StoredImage:
    try:
        image = StoredImage(**fields)
    except TypeError as error:
        raise BackupError(f"{path}: an image line with other fields ({error})") from error
    texts = (image.image_id, image.sku, image.product_id)
    optional = (image.uri, image.name, image.category, image.etag)
    if (
        not all(isinstance(value, str) for value in texts)
        or not all(value is None or isinstance(value, str) for value in optional)
        or image.source not in (SOURCE_CATALOG, SOURCE_CONFIRMED_SCAN)
        or not (image.taken_at is None or isinstance(image.taken_at, int | float))
    ):
        raise BackupError(f"{path}: an image line with a value of the wrong kind: {fields}")
    return image


def _product_state(payload: dict, path: Path) -> ProductState:
    try:
        return ProductState.from_payload(payload)
    except (KeyError, TypeError) as error:
        raise BackupError(f"{path}: a product state without {error}") from error


class _Restorable:
    """The backup as a source for `reindex`, less what `target` was told since the backup: a
    product with a state there (a versioned event or a deletion applied since) or with a
    catalog image the backup does not hold (an unversioned event since) keeps its own
    catalog images and state, and a deleted one stays deleted; the confirmed photos of a
    product it still holds are restored beside its images. What a restore cut short wrote
    itself (images as the backup has them, no states yet) is not mistaken for news."""

    def __init__(self, backup: BackupFile, target: VectorIndex) -> None:
        self._backup = backup
        self._states = {state.product_id: state for state in target.all_product_states()}
        in_target: dict[str, set[StoredImage]] = {}
        for page in target.all_images():
            for stored in page:
                if stored.source == SOURCE_CATALOG and not is_part(stored.image_id):
                    in_target.setdefault(stored.product_id, set()).add(stored)
        in_backup: dict[str, set[StoredImage]] = {product_id: set() for product_id in in_target}
        for page in backup.all_images():
            for stored in page:
                if stored.product_id in in_backup:
                    in_backup[stored.product_id].add(stored)
        self._newer = set(self._states) | {
            product_id
            for product_id, images in in_target.items()
            if not images <= in_backup[product_id]
        }

    def _restored(self, stored: StoredImage) -> bool:
        if stored.product_id not in self._newer:
            return True
        state = self._states.get(stored.product_id)
        return stored.source != SOURCE_CATALOG and not (state and state.deleted)

    def all_images(self, page_size: int = 256) -> Iterator[list[StoredImage]]:
        for page in self._backup.all_images(page_size):
            if kept := [stored for stored in page if self._restored(stored)]:
                yield kept

    def all_product_states(self) -> list[ProductState]:
        return [s for s in self._backup.all_product_states() if s.product_id not in self._newer]

    def count(self) -> int:
        return sum(len(page) for page in self.all_images())


class RenewedHold:
    """Every worker's catalog work held (`VectorIndex.hold_writes`) for as long as a restore
    takes: a hold lapses after `WRITE_HOLD_SECONDS`, so a fresh one is set before that and the
    old one lifted. Catalog events wait in the broker meanwhile; scans are still answered."""

    RENEW_AFTER_SECONDS = WRITE_HOLD_SECONDS / 2

    def __init__(self, index: VectorIndex, clock: Callable[[], float] = time.monotonic) -> None:
        self._index = index
        self._clock = clock
        self._hold = index.hold_writes()
        self._since = clock()

    def renew_if_due(self) -> None:
        if self._clock() - self._since >= self.RENEW_AFTER_SECONDS:
            fresh = self._index.hold_writes()
            self._index.release_writes(self._hold)
            self._hold, self._since = fresh, self._clock()

    def release(self) -> None:
        self._index.release_writes(self._hold)


def restore(
    backup: BackupFile,
    target: VectorIndex,
    store: ImageStore,
    embedder: Embedder,
    limits: ImageSettings,
    batch_size: int = 32,
    on_progress: Callable[[int], None] = lambda done: None,
    on_total: Callable[[int], None] = lambda total: None,
    fetch_threads: int = 4,
) -> ReindexReport:
    """Re-embed the backup's images from S3 into `target` with `embedder`, under a hold on
    every worker's catalog work. Nothing `target` holds is removed, and what it was told
    since the backup wins (`_Restorable`): made for an index that was lost, empty or holding
    only the events since. Incremental like `reindex`: run again after an interruption, it
    embeds only what is still missing. Images whose object is gone are skipped and counted.
    `on_total` is told how many images are to be restored, `on_progress` how many each page
    held; `fetch_threads` images are read from S3 at a time."""
    from worker.service.reindex import reindex

    hold = RenewedHold(target)
    try:
        source = _Restorable(backup, target)
        on_total(source.count())

        def progressed(done: int) -> None:
            hold.renew_if_due()
            on_progress(done)

        return reindex(
            source,
            target,
            store,
            embedder,
            limits,
            batch_size,
            on_progress=progressed,
            remove_missing=False,
            fetch_threads=fetch_threads,
        )
    finally:
        hold.release()


@dataclass
class ObjectsCheck:
    images: int = 0
    unreadable: dict[str, str] = field(default_factory=dict)
    """Each image that cannot be read, by URI: why."""
    replaced: int = 0
    """Objects whose ETag is not the one stored: replaced at the same key since (a restore
    embeds them as they are now)."""


def check_objects(
    backup: BackupFile,
    store: ImageStore,
    threads: int = 8,
    on_progress: Callable[[int], None] = lambda done: None,
) -> ObjectsCheck:
    """Whether a restore could read every image of `backup` from S3, without reading one:
    each object's ETag is asked (a HEAD request), `threads` at a time. An object gone or
    denied is unreadable; S3 itself unreachable is an error (`TransientError`), not a
    verdict on the backup."""

    def etag(stored: StoredImage) -> str | PermanentError | None:
        try:
            return store.etag(object_at(stored.uri))
        except PermanentError as error:
            return error

    check = ObjectsCheck()
    with ThreadPoolExecutor(threads, thread_name_prefix="check") as pool:
        for page in backup.all_images():
            for stored, now in zip(page, pool.map(etag, page), strict=True):
                if isinstance(now, PermanentError):
                    check.unreadable[stored.uri or stored.image_id] = str(now)
                elif stored.etag is not None and now != stored.etag:
                    check.replaced += 1
            check.images += len(page)
            on_progress(len(page))
    return check

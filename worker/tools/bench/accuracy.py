"""Accuracy on a folder data set, through the worker's own ingest and query code.

Protocol (fixed, so that runs compare):
1. A few products are left out of the catalog (open set): their photos must not be matched.
2. Every other product's `catalog_*` images are ingested as a `product.created` event would be
   (`Catalog.plan` / `Catalog.apply`).
3. The first photos of every product in the confirmation split (`train`) are scanned, as a
   running system would have seen them: remembered, unlabeled (they teach the scan mean).
4. For each count N of confirmed photos (0, 1, 3, 10...), the first N of those scans per
   product are confirmed the way `match.confirmed` does (`Catalog.confirm`), the metric is
   refitted (as the worker does in the background), and every photo of the evaluation split
   (`val`) that was not scanned before is matched with `Matcher.rank`: the embedder, the
   index's grouped search, the learned metric and the `no_confident_match` policy.

The day-to-day mix (`new_share` > 0): that share of the catalog's products is brand new, never
confirmed (catalog image only), while the others get their N confirmations; recall@1 is then
also reported for each part, so that a new product's figure can be compared with the
catalog-only one.
"""

from __future__ import annotations

import csv
import math
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image
from rich.progress import Progress

from shared.contract import MatchStatus
from worker.index import ScanRecord
from worker.matching.matcher import Matcher, Ranking
from worker.matching.stages.confidence import expected_calibration_error
from worker.service.app import Components, opened
from worker.settings import Settings
from worker.tools.bench.judged_labels import decided_with_judged_labels
from worker.tools.bench.loaded_models import LoadedModels
from worker.tools.bench.recall import (
    confusion_pairs,
    coverage_accuracy_curve,
    mean_reciprocal_rank,
    rank_of,
    recall_at_k,
    share,
)
from worker.tools.folders import (
    FolderDataset,
    FolderProduct,
    QueryPhoto,
    read_folder_dataset,
    with_splits,
)
from worker.tools.terminal import detail_of_paths, embed_paths, folder_reader, ingest_products
from worker.training.fine_tune import LabelledPicture
from worker.training.model import TrainedModel, fine_tune_model, run_version
from worker.vectors import ImageKind
from worker.vision.images import decode_image
from worker.vision.local_features import LocalFeatures
from worker.vision.versions import write_trained_on

TOP_K = 5
BENCH_BUCKET = "bench"


@dataclass
class AccuracyOptions:
    data: Path
    split: str = "val"
    confirmed: Sequence[int] = (0,)
    confirmed_split: str = "train"
    open_set: int = 8
    seed: int = 0
    max_queries: int | None = None
    contact_sheet: Path | None = None
    unlabeled_scans_per_product: int = 10
    category_hint: bool = False
    new_share: float = 0.0
    kinds: Path | None = None
    """CSV `photo,kind` (`photo`: `<product>/<file>`): recall is also reported per kind."""
    splits: Path | None = None
    """CSV `photo,split`: the listed photos move to that split (benchmarks/far_photos.py)."""
    fine_tune: bool = False
    """Fine-tune the image towers first (`jewelmatch train`'s code) on the confirmation photos
    of the largest count and the catalog images of their products; brand-new products
    (`new_share`) and left-out ones never train."""
    fine_tune_dir: Path | None = None
    """Where the fine-tuned towers are kept (default: a temporary folder)."""
    photo_uris: dict[str, str] | None = None
    """Where the data set's photos came from (`<product>/<file>` → URI in an index), when it
    was exported from one: the photos a model version trained on are known by those URIs."""
    calibration_share: float = 0.2
    """With `fine_tune`: the latest share of each product's confirmation photos never trains,
    so that the confidence has labels the towers did not learn (as in production, where
    `jewelmatch train` holds out the latest confirmations and new ones keep coming)."""
    new_products: frozenset[str] | None = None
    """The brand-new products, by name (instead of a `new_share` drawn by the seed)."""
    left_out: frozenset[str] | None = None
    """The products left out of the catalog, by name (instead of `open_set` drawn by the
    seed)."""
    never_train: frozenset[str] = frozenset()
    """Products confirmed like the others but never trained on (`jewelmatch train`'s held-out
    products that are not judged as new: export.py)."""
    judged_as_labels: bool = False
    """Decide the matched photos of confirmed products with a confidence that also learned
    from the other matched photos, in folds, as a version would on its first day in service,
    when they are confirmations (`jewelmatch train`'s gate: judged_labels.py)."""


@dataclass
class QueryOutcome:
    query: QueryPhoto
    ranking: Ranking

    @property
    def ranked(self) -> list[str]:
        return [hit.product_id for hit in self.ranking.hits]

    @property
    def rank(self) -> int | None:
        return rank_of(self.query.product_id, self.ranked)

    @property
    def margin(self) -> float:
        scores = [hit.score for hit in self.ranking.hits]
        if not scores:
            return -1.0
        return scores[0] - (scores[1] if len(scores) > 1 else -1.0)


@dataclass
class AccuracyRun:
    confirmed_per_product: int
    known: list[QueryOutcome]
    unknown: list[QueryOutcome]
    seconds: float
    metric: dict = field(default_factory=dict)
    new_products: frozenset[str] = frozenset()
    kinds: dict[str, str] = field(default_factory=dict)
    """Kind of photo by `<product>/<file>` (studio, worn, surface...), where labelled."""

    def summary(self) -> dict:
        ranks = [o.rank for o in self.known]
        answered = [o for o in self.known if o.ranking.status is MatchStatus.matched]
        mix = {}
        if self.new_products:
            new = [o.rank for o in self.known if o.query.product_id in self.new_products]
            old = [o.rank for o in self.known if o.query.product_id not in self.new_products]
            mix = {
                "new_products": len(self.new_products),
                "new_queries": len(new),
                "recall@1_new": recall_at_k(new, 1),
                "confirmed_queries": len(old),
                "recall@1_confirmed_products": recall_at_k(old, 1),
            }
        by_kind = {}
        for kind in sorted(set(self.kinds.values())):
            ranks_of_kind = [o.rank for o in self.known if self._kind(o) == kind]
            by_kind[kind] = {
                "queries": len(ranks_of_kind),
                "recall@1": recall_at_k(ranks_of_kind, 1),
                "recall@5": recall_at_k(ranks_of_kind, 5),
            }
        return {
            "confirmed_per_product": self.confirmed_per_product,
            "queries": len(self.known),
            "recall@1": recall_at_k(ranks, 1),
            "recall@5": recall_at_k(ranks, 5),
            "mrr": mean_reciprocal_rank(ranks),
            "no_confident_match_in_catalog": share(
                [o.ranking.status is MatchStatus.no_confident_match for o in self.known]
            ),
            "answered_accuracy": share([o.rank == 1 for o in answered]),
            "confidence_origin": self.known[0].ranking.confidence_origin if self.known else None,
            "calibration_error": expected_calibration_error(
                np.array([o.ranking.confidence for o in self.known]),
                np.array([o.rank == 1 for o in self.known]),
            ),
            "open_set_queries": len(self.unknown),
            "no_confident_match_open_set": share(
                [o.ranking.status is MatchStatus.no_confident_match for o in self.unknown]
            ),
            "seconds": round(self.seconds, 2),
            "metric": self.metric,
            **mix,
            **({"by_kind": by_kind} if by_kind else {}),
        }

    def _kind(self, outcome: QueryOutcome) -> str | None:
        return self.kinds.get(outcome.query.object_key())

    def confusions(self, top: int = 10) -> list[tuple[str, str, int]]:
        return confusion_pairs(
            [(o.query.product_id, o.ranked[0]) for o in self.known if o.ranked], top
        )

    def confidence_curve(self, thresholds: Sequence[float]) -> list[dict]:
        """Per confidence threshold: the share of catalog products' photos answered, how many
        of those answers are right, and the share of left-out products' photos refused."""
        return self._curve(lambda o: o.ranking.confidence, thresholds)

    def margin_curve(self, thresholds: Sequence[float]) -> list[dict]:
        """The same per margin threshold."""
        return self._curve(lambda o: o.margin, thresholds)

    def _curve(
        self, value: Callable[[QueryOutcome], float], thresholds: Sequence[float]
    ) -> list[dict]:
        curve = coverage_accuracy_curve(
            [value(o) for o in self.known], [o.rank == 1 for o in self.known], thresholds
        )
        unknown = np.array([value(o) for o in self.unknown], dtype=float)
        for point in curve:
            refused = unknown < point["threshold"]
            point["open_set_refused"] = float(refused.mean()) if len(unknown) else float("nan")
        return curve


@dataclass
class AccuracyReport:
    model: str
    dataset: str
    products_in_catalog: int
    products_left_out: list[str]
    runs: list[AccuracyRun] = field(default_factory=list)
    fine_tune: dict | None = None

    def to_json(self) -> dict:
        margins = [round(x, 3) for x in np.arange(0.0, 0.3001, 0.01)]
        confidences = [round(x, 3) for x in np.arange(0.5, 1.0001, 0.02)]

        return {
            "model": self.model,
            "dataset": self.dataset,
            "products_in_catalog": self.products_in_catalog,
            "products_left_out": self.products_left_out,
            **({"fine_tune": self.fine_tune} if self.fine_tune else {}),
            "runs": [
                {
                    **run.summary(),
                    "margin_curve": run.margin_curve(margins),
                    "confidence_curve": run.confidence_curve(confidences),
                }
                for run in self.runs
            ],
            "confusions": [
                {"true": t, "predicted": p, "count": n}
                for t, p, n in (self.runs[0].confusions() if self.runs else [])
            ],
        }


def read_photo_table(path: Path, column: str) -> dict[str, str]:
    """`photo,<column>` rows (comment lines start with #) as {photo: value}."""
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {row["photo"]: row[column] for row in csv.DictReader(lines)}


def _scan_id(photo: QueryPhoto) -> str:
    return f"bench-{photo.product_id}-{photo.path.name}"


def remember_scans(
    components: Components,
    photos: Sequence[QueryPhoto],
    settings: Settings,
    progress: Progress,
    bucket: str = BENCH_BUCKET,
) -> list[ScanRecord]:
    """Photos the running system has scanned (unlabeled), as the worker remembers them: one
    second apart, in order, the last a second ago; their photos in `bucket`."""
    vectors = embed_paths(
        components.embedder,
        [p.path for p in photos],
        ImageKind.scan,
        settings,
        progress,
        "scanned photos",
    )
    began = time.time() - len(photos)
    records = [
        ScanRecord(
            scan_id=_scan_id(photo),
            vector=vector,
            created_at=began + number,
            image_uri=_photo_uri(photo, bucket),
        )
        for number, (photo, vector) in enumerate(zip(photos, vectors, strict=True))
    ]
    components.matcher.scans.remember(*records)
    return records


def _as_bench_photos(trained_on: frozenset[str], photo_uris: dict[str, str] | None) -> frozenset:
    """The photos a model trained on, as the benchmark's scans of them are known."""
    if not trained_on or not photo_uris:
        return frozenset()
    return frozenset(
        f"s3://{BENCH_BUCKET}/{key}" for key, uri in photo_uris.items() if uri in trained_on
    )


def _photo_uri(photo: QueryPhoto, bucket: str = BENCH_BUCKET) -> str:
    """Where a bench photo lies, as the scans that the benchmark remembers say."""
    return f"s3://{bucket}/{photo.object_key()}"


def _confirm(matcher: Matcher, photos: Sequence[QueryPhoto]) -> None:
    """Confirm remembered scans the way `match.confirmed` does."""
    for photo in photos:
        assert matcher.scans.confirm(_scan_id(photo), photo.product_id)


def _rank_all(
    matcher: Matcher,
    vectors: np.ndarray,
    queries: Sequence[QueryPhoto],
    categories: dict[str, str | None] | None = None,
    details: Sequence[LocalFeatures] | None = None,
) -> list[QueryOutcome]:
    """Rank every query; with `categories`, each scan carries its product's category hint
    (as a station that knows the tray's category would send it); with `details`, the detail
    stage compares each query's photo."""
    if not len(vectors):
        return []
    if categories is None:
        rankings = matcher.rank(vectors, TOP_K, scan_details=details)
    else:
        rankings = [
            matcher.rank(
                vectors[i : i + 1],
                TOP_K,
                categories.get(q.product_id),
                [details[i]] if details is not None else None,
            )[0]
            for i, q in enumerate(queries)
        ]
    return [QueryOutcome(q, r) for q, r in zip(queries, rankings, strict=True)]


def first_photos(product: FolderProduct, split: str, count: int) -> list[QueryPhoto]:
    photos = sorted((q for q in product.queries if q.split == split), key=lambda q: q.path.name)
    return photos[:count]


@dataclass(frozen=True)
class _Plan:
    """What the protocol does with the data set (fixed by its seed)."""

    in_catalog: list[FolderProduct]
    left_out: list[str]
    new_ids: frozenset[str]
    scanned: list[QueryPhoto]
    queries: list[QueryPhoto]


def _plan(dataset: FolderDataset, options: AccuracyOptions) -> _Plan:
    rng = random.Random(options.seed)
    with_queries = [
        p.product_id
        for p in dataset.products
        if any(q.split in (options.split, "") for q in p.queries)
    ]
    if options.left_out is None:
        left_out = sorted(rng.sample(with_queries, min(options.open_set, len(with_queries) - 1)))
    else:
        left_out = sorted(options.left_out)
    in_catalog = [p for p in dataset.products if p.catalog and p.product_id not in left_out]
    known_ids = {p.product_id for p in in_catalog}
    new_ids = frozenset(
        rng.sample(sorted(known_ids), round(options.new_share * len(known_ids)))
        if options.new_share
        else []
    )
    if options.new_products is not None:
        new_ids = frozenset(options.new_products) & known_ids
    # The system has already scanned (unlabeled) the first photos of every product in the
    # confirmation split; confirmations are later taken from those. None of them is matched.
    per_product = max([options.unlabeled_scans_per_product, *options.confirmed])
    scanned = [
        q for p in dataset.products for q in first_photos(p, options.confirmed_split, per_product)
    ]
    seen = {q.path for q in scanned}
    queries = [q for q in dataset.queries if q.split in (options.split, "") and q.path not in seen]
    if options.max_queries:
        queries = random.Random(options.seed).sample(
            queries, min(options.max_queries, len(queries))
        )
    return _Plan(in_catalog, left_out, new_ids, scanned, queries)


def _fine_tune(
    settings: Settings, options: AccuracyOptions, plan: _Plan, out_dir: Path, progress: Progress
) -> TrainedModel:
    """Train the towers on what the protocol confirms at its largest count, less the latest
    `calibration_share` of each product's photos (never a photo that is matched, never a new,
    left-out or `never_train` product), and those products' catalog images (alone, each its
    own class, when nothing is confirmed); each trained folder lists the photos it trained on."""
    most = max(options.confirmed)
    trains = most - math.floor(options.calibration_share * most)
    untrained = plan.new_ids | options.never_train
    trained_products = [p for p in plan.in_catalog if p.product_id not in untrained]
    photos = [q for p in trained_products for q in first_photos(p, options.confirmed_split, trains)]
    pictures = [
        LabelledPicture(p.product_id, f"{p.product_id}/{path.name}", _loader(path, settings), True)
        for p in trained_products
        for path in p.catalog
    ] + [LabelledPicture(q.product_id, q.object_key(), _loader(q.path, settings)) for q in photos]
    tasks: dict[tuple[str, str], object] = {}

    def advance(tower: str, stage: str, done: int, total: int) -> None:
        if (tower, stage) not in tasks:
            tasks[tower, stage] = progress.add_task(f"training {tower}: {stage}", total=total)
        progress.update(tasks[tower, stage], completed=done)

    version = run_version(settings.model, pictures, settings.training)
    trained = fine_tune_model(
        settings.model, pictures, settings.training, out_dir, version, advance
    )
    for folder in trained.folders:
        write_trained_on(folder, [_photo_uri(q) for q in photos])
    return trained


def _loader(path: Path, settings: Settings) -> Callable[[], Image.Image]:
    return lambda: decode_image(path.read_bytes(), settings.images)


def run_accuracy(
    settings: Settings,
    options: AccuracyOptions,
    progress: Progress,
    models: LoadedModels | None = None,
) -> AccuracyReport:
    """With `models`, the model is taken from (or loaded into) them, and the pictures it
    embedded in an earlier run are not embedded again."""
    dataset: FolderDataset = read_folder_dataset(options.data)
    if options.splits:
        dataset = with_splits(dataset, read_photo_table(options.splits, "split"))
    plan = _plan(dataset, options)
    with tempfile.TemporaryDirectory(prefix="jewelmatch-bench-") as tmp:
        bench_settings = settings.model_copy(
            update={"index": settings.index.model_copy(update={"path": Path(tmp) / "index"})}
        )
        trained = None
        if options.fine_tune:
            trained = _fine_tune(
                settings, options, plan, options.fine_tune_dir or Path(tmp) / "model", progress
            )
            bench_settings = bench_settings.model_copy(
                update={"model": settings.model.model_copy(update={"name": trained.name})}
            )
        embedder = models.embedder(bench_settings.model) if models else None
        with opened(bench_settings, embedder) as components:
            matcher = components.matcher
            matcher.learner.trained_on |= _as_bench_photos(
                components.embedder.trained_on, options.photo_uris
            )
            matcher.read_references_with(folder_reader(options.data, settings))
            ingest_products(
                components.embedder, matcher.catalog(), plan.in_catalog, settings, progress
            )
            remember_scans(components, plan.scanned, settings, progress)
            query_vectors = embed_paths(
                components.embedder,
                [q.path for q in plan.queries],
                ImageKind.scan,
                settings,
                progress,
                f"{options.split} photos",
            )
            query_details = detail_of_paths(
                matcher, [q.path for q in plan.queries], settings, progress, "detail of photos"
            )
            report = AccuracyReport(
                model=matcher.model_id,
                dataset=str(options.data),
                products_in_catalog=len(plan.in_catalog),
                products_left_out=plan.left_out,
                fine_tune=trained.to_json() if trained else None,
            )
            categories = (
                {p.product_id: p.category for p in dataset.products}
                if options.category_hint
                else None
            )
            _runs(matcher, plan, options, query_vectors, query_details, categories, report)
    if options.contact_sheet and report.runs:
        write_contact_sheet(report.runs[0], dataset, options.contact_sheet)
    return report


def _runs(
    matcher: Matcher,
    plan: _Plan,
    options: AccuracyOptions,
    query_vectors: np.ndarray,
    query_details: Sequence[LocalFeatures] | None,
    categories: dict[str, str | None] | None,
    report: AccuracyReport,
) -> None:
    """One run per confirmation count: confirm the next photos, refit, rank every query."""
    known_ids = {p.product_id for p in plan.in_catalog}
    kinds = read_photo_table(options.kinds, "kind") if options.kinds else {}
    confirmed_so_far = 0
    for count in sorted(set(options.confirmed)):
        _confirm(
            matcher,
            [
                q
                for p in plan.in_catalog
                if p.product_id not in plan.new_ids
                for q in first_photos(p, options.confirmed_split, count)[confirmed_so_far:]
            ],
        )
        confirmed_so_far = count
        snapshot = matcher.refit()  # what the worker does in the background
        started = time.perf_counter()
        outcomes = _rank_all(matcher, query_vectors, plan.queries, categories, query_details)
        metric = dict(snapshot.report)
        if options.judged_as_labels:
            confirmed = known_ids - plan.new_ids
            outcomes, metric["judged_as_labels"] = _judged_as_labels(
                matcher, outcomes, query_vectors, confirmed
            )
        report.runs.append(
            AccuracyRun(
                count,
                [o for o in outcomes if o.query.product_id in known_ids],
                [o for o in outcomes if o.query.product_id not in known_ids],
                time.perf_counter() - started,
                metric,
                plan.new_ids,
                kinds,
            )
        )


def _judged_as_labels(
    matcher: Matcher,
    outcomes: list[QueryOutcome],
    vectors: np.ndarray,
    confirmed_products: frozenset[str] | set[str],
) -> tuple[list[QueryOutcome], dict]:
    rankings, report = decided_with_judged_labels(
        matcher.learner,
        [(o.query.product_id, o.query.object_key()) for o in outcomes],
        vectors,
        [o.ranking for o in outcomes],
        np.array([o.query.product_id in confirmed_products for o in outcomes], dtype=bool),
    )
    return [replace(o, ranking=r) for o, r in zip(outcomes, rankings, strict=True)], report


def write_contact_sheet(
    run: AccuracyRun, dataset: FolderDataset, path: Path, rows: int = 24, tile: int = 112
) -> Path:
    """Errors first: each row is a query photo, then its top 5 catalog images; the right
    product is framed green, wrong guesses red."""
    from PIL import ImageDraw

    catalog_image = {p.product_id: p.catalog[0] for p in dataset.products if p.catalog}
    ordered = sorted(run.known, key=lambda o: (o.rank == 1, o.query.path.name))[:rows]
    sheet = Image.new("RGB", ((TOP_K + 1) * tile + 8, len(ordered) * (tile + 14) + 4), "white")
    draw = ImageDraw.Draw(sheet)
    for row, outcome in enumerate(ordered):
        y = row * (tile + 14) + 2
        cells = [(outcome.query.path, f"{outcome.query.product_id[:18]}", None)]
        for hit in outcome.ranking.hits:
            cells.append(
                (
                    catalog_image.get(hit.product_id),
                    f"{hit.product_id[:14]} {hit.score:.2f}",
                    hit.product_id == outcome.query.product_id,
                )
            )
        for column, (image_path, label, right) in enumerate(cells):
            x = column * tile + (8 if column else 0)
            if image_path is not None:
                with Image.open(image_path) as image:
                    thumb = image.convert("RGB")
                    thumb.thumbnail((tile - 6, tile - 6))
                    sheet.paste(thumb, (x + 3, y + 3))
            if right is not None:
                draw.rectangle(
                    [x, y, x + tile - 1, y + tile - 1],
                    outline=(0, 160, 0) if right else (200, 0, 0),
                    width=3,
                )
            draw.text((x + 2, y + tile), label, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path

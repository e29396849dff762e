"""Prometheus metrics of the worker (served on /metrics by `worker.observability.probes`)."""

from __future__ import annotations

import math
from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

MESSAGES = Counter(
    "jewelmatch_messages_total", "Messages handled, by queue and outcome.", ["queue", "outcome"]
)
RETRIES = Counter(
    "jewelmatch_retries_total", "Messages sent to a delay queue for a retry.", ["queue"]
)
DEAD_LETTERS = Counter(
    "jewelmatch_dead_letters_total", "Messages dead-lettered, by reason.", ["queue", "reason"]
)
SCAN_RESULTS = Counter(
    "jewelmatch_scan_results_total",
    "Scan answers published, by status and failure reason (empty unless failed).",
    ["status", "reason"],
)
CHECKED_ANSWERS = Counter(
    "jewelmatch_checked_answers_total",
    "Answers people checked by confirming their scan (its first confirmation only: a "
    "correction is not counted again), by the answer's status and whether its first product "
    "was the one confirmed ('right' or 'wrong').",
    ["status", "first"],
)
SCAN_SECONDS = Histogram(
    "jewelmatch_scan_seconds",
    "A fresh scan's handling time in the worker, fetch to confirmed answer.",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0),
)
STAGE_SECONDS = Histogram(
    "jewelmatch_stage_seconds",
    "Time spent per stage of handling.",
    ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BATCH_SIZE = Histogram(
    "jewelmatch_batch_size",
    "Messages per handled batch.",
    ["queue"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
MODEL_LOAD_SECONDS = Gauge("jewelmatch_model_load_seconds", "Time the model took to load.")
INDEX_POINTS = Gauge(
    "jewelmatch_index_reference_images", "Reference images in the index, counted when scraped."
)
READY = Gauge("jewelmatch_ready", "1 when the worker is ready to take messages.")
INDEX_BACKUP_TIME = Gauge(
    "jewelmatch_index_backup_timestamp_seconds",
    "When the worker's own backup of its index (INDEX__BACKUP_FILE) was last written, in "
    "seconds since the epoch (the file's time when the worker starts).",
)
CATALOG_PAUSED = Gauge(
    "jewelmatch_catalog_work_paused",
    "1 while this worker takes no catalog work: its model was replaced (restart it) or a "
    "switch holds writes.",
)
CONFIDENCE = Gauge(
    "jewelmatch_confidence",
    "The decision as of the last refit: 'learned' 1 when learned from confirmations (0: the "
    "prior); 'margin' 1 while the prior's margin is asked too; its 'threshold'; and on "
    "held-out confirmations, the 'estimated_precision' and "
    "'estimated_coverage' of `matched` and the 'estimated_unknown_refused' share of jewels "
    "outside the catalog; 'labels' confirmations it learned from; 'min_margin' the margin "
    "asked of `matched` (the prior's, raised by the first labels).",
    ["figure"],
)
CONFIDENCE_FIGURES = (
    "threshold",
    "estimated_precision",
    "estimated_coverage",
    "estimated_unknown_refused",
    "labels",
    "min_margin",
)


def observe_confidence(report: dict) -> None:
    """Publish the confidence stage's figures (`Snapshot.report['confidence']`)."""
    origin = report.get("origin", "prior")
    CONFIDENCE.labels("learned").set(1 if origin.startswith("labels") else 0)
    CONFIDENCE.labels("margin").set(1 if origin in ("prior", "labels+margin") else 0)
    for figure in CONFIDENCE_FIGURES:
        value = report.get(figure)
        CONFIDENCE.labels(figure).set(float("nan") if value is None else value)


def observe_stages(timings_ms: dict[str, float]) -> None:
    for stage, ms in timings_ms.items():
        STAGE_SECONDS.labels(stage).observe(ms / 1000)


def count_index_when_scraped(count: Callable[[], int]) -> None:
    """The index size is read at each scrape: a count set once at start goes stale with the
    first product event. NaN while the index cannot be asked (a Qdrant server away)."""

    def read() -> float:
        try:
            return float(count())
        except Exception:
            return math.nan

    INDEX_POINTS.set_function(read)

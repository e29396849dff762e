"""The learner owns what changes over time: it counts catalog changes, confirmations and new
scans, refits the stages in the background when enough has changed, and swaps in the new
snapshot whole, so a ranking never sees half a fit. The service calls it when idle; transport
code never does."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import replace

from worker.index.base import VectorIndex
from worker.matching.fitting import fit_snapshot
from worker.matching.ranking import MatchPolicy, Prototypes, Snapshot
from worker.matching.stages.centring import Centring
from worker.matching.stages.detail import DetailStage, ImageReader, ReferenceDetails
from worker.observability.logs import get_logger
from worker.observability.prometheus import observe_confidence
from worker.settings import LearningSettings
from worker.vectors import VectorLayout

log = get_logger(__name__)


class Learner:
    def __init__(
        self,
        index: VectorIndex,
        layout: VectorLayout,
        learning: LearningSettings,
        policy: MatchPolicy,
        trained_on: frozenset[str] = frozenset(),
    ) -> None:
        self.index, self.layout, self.learning, self.policy = index, layout, learning, policy
        self.trained_on = trained_on
        detail = DetailStage.from_settings(learning.detail)
        self.snapshot = Snapshot(
            layout=layout,
            centring=Centring(learning.centring.enabled),
            policy=policy,
            rerank_candidates=learning.rerank_candidates,
            detail=detail,
        )
        self.prototypes = Prototypes(index, layout, learning.prototype_ttl_seconds)
        self.details: ReferenceDetails | None = None  # `read_references_with`
        observe_confidence(self.snapshot.decision.report)
        self._changes = 0
        self._dirty = False
        self._new_scans = 0  # scans remembered since the last fit
        self._lock = threading.Lock()
        self._fitting: threading.Thread | None = None

    def read_references_with(self, read_image: ImageReader) -> None:
        """Where the detail stage reads reference images; until this is called (or with the
        stage disabled), it does not act."""
        settings = self.learning.detail
        if settings.enabled:
            self.details = ReferenceDetails(
                read_image, self.snapshot.detail, settings.cache_images, settings.cache_seconds
            )

    # what happened ----------------------------------------------------------------------

    def note_changes(self, product_ids: Iterable[str] = (), count: int = 1) -> None:
        """Something changed: products (their prototypes are recomputed at once; `count`
        changes bring a refit closer) or only the scan statistics (`count=0`: refit on the
        next `refit.seconds`)."""
        with self._lock:
            self._changes += count
            self._dirty = True
        self.prototypes.forget(list(product_ids))
        if self.details is not None:
            self.details.forget(list(product_ids))

    def note_photo(self, product_id: str) -> None:
        """A confirmed photo was stored: the product is no longer new."""
        with self._lock:
            stage = self.snapshot.new_products
            if product_id not in stage.with_photos:
                stage = replace(stage, with_photos=stage.with_photos | {product_id})
                self.snapshot = replace(self.snapshot, new_products=stage)

    def note_scans(self, count: int) -> None:
        """New scans refine the scan statistics (domain centring): they make the next refit
        due after `refit.seconds`, not after `refit.after_changes` (a refit reads every
        reference, too costly to repeat every few dozen scans of a large catalog), except the
        refit that first learns the photo domain: due as soon as enough scans exist."""
        if count:
            with self._lock:
                self._new_scans += count
            self.note_changes((), 0)

    # fitting ----------------------------------------------------------------------------

    def refit(self) -> Snapshot:
        """Fit every stage from the index now (synchronously) and rank with it from now on."""
        started = time.perf_counter()
        with self._lock:
            self._changes, self._dirty, self._new_scans = 0, False, 0
        snapshot = fit_snapshot(
            self.index.references(),
            self.index.scan_vectors(self.learning.centring.scans_read),
            self.layout,
            self.learning,
            self.policy,
            self.trained_on,
        )
        with self._lock:
            self.snapshot = snapshot
        self.prototypes.forget()
        observe_confidence(snapshot.report.get("confidence", {}))
        log.info(
            "metric.fitted",
            seconds=round(time.perf_counter() - started, 2),
            stages=snapshot.stages,
            **snapshot.report,
        )
        return snapshot

    def refit_in_background_if_due(self) -> bool:
        """Start a background refit when enough has changed; never blocks the caller."""
        with self._lock:
            if self._fitting is not None and self._fitting.is_alive():
                return False
            elapsed = time.time() - self.snapshot.fitted_at
            due = (
                self._changes >= self.learning.refit.after_changes
                or (self._dirty and elapsed >= self.learning.refit.seconds)
                or self._photo_domain_learnable()
            )
            if not due:
                return False
            self._fitting = threading.Thread(
                target=self._refit_logging_errors, name="metric-refit", daemon=True
            )
            self._fitting.start()
            return True

    def _photo_domain_learnable(self) -> bool:
        """Whether enough scans now exist to learn the photo domain's mean, which the snapshot
        in use lacks (until then confirmed photos are not ranked)."""
        centring = self.snapshot.centring
        if not self.learning.centring.enabled or centring.means.scan is not None:
            return False
        seen = self.snapshot.report.get("scans_for_centring", 0) + self._new_scans
        return seen >= self.learning.centring.min_scans

    def _refit_logging_errors(self) -> None:
        try:
            self.refit()
        except Exception as error:  # a failed refit keeps the previous snapshot
            log.warning("metric.refit_failed", error=str(error))

    def wait(self, timeout: float | None = None) -> None:
        """Until a background refit in progress is done (tests, shutdown)."""
        fitting = self._fitting
        if fitting is not None:
            fitting.join(timeout)

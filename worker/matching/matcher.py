"""From pictures to ranked products: embed, search grouped by product, re-rank, decide.

The worker, the terminal commands and the accuracy benchmark all match through `Matcher`,
so what is measured is what runs.

Ranking a scan:
1. its vector is centred on the mean scan (`worker.matching.learning`), and the index returns the
   nearest products by their best reference image (`rerank_candidates` of them);
2. each product's score is corrected by its best image's domain mean (catalog images and
   confirmed scans are centred on their own means), and the list re-sorted;
3. once enough scans whiten the space, or a metric has been learned from confirmed matches,
   those candidates are re-ranked by their product prototype in that space (the image
   embedding's; with the colour term on, a scan that shows colour adds its colour similarity
   to the product's, weighted as in the vectors, and a scan without colour is ranked by the
   image alone);
4. `MatchPolicy` decides `matched` or `no_confident_match` from the best score and its margin
   over the runner-up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from shared.contract import MatchStatus, RankedProduct, S3Object
from worker.index import SOURCE_CATALOG, SOURCE_CONFIRMED_SCAN, ProductHit, VectorIndex
from worker.matching.catalog import Catalog
from worker.matching.learning import (
    LearnedMetric,
    MetricOptions,
    fit_metric,
    image_part,
    image_references,
)
from worker.observability.logs import get_logger
from worker.settings import LearningSettings, MatchingSettings
from worker.vision.embedder import Embedder, ImageKind, unit_rows

log = get_logger(__name__)


@dataclass(frozen=True)
class MatchPolicy:
    """When the best product is not trusted: too low a score, or too close a runner-up."""

    min_score: float = 0.0
    min_margin: float = 0.0

    @classmethod
    def from_settings(cls, settings: MatchingSettings) -> MatchPolicy:
        return cls(min_score=settings.min_score, min_margin=settings.min_margin)

    def decide(self, hits: Sequence[ProductHit]) -> MatchStatus:
        if not hits:
            return MatchStatus.no_confident_match
        runner_up = hits[1].score if len(hits) > 1 else -1.0
        if hits[0].score < self.min_score or hits[0].score - runner_up < self.min_margin:
            return MatchStatus.no_confident_match
        return MatchStatus.matched


@dataclass(frozen=True)
class _Prototype:
    image: np.ndarray  # in the metric's space
    colour: np.ndarray  # unit mean colour descriptor; zeros where no image showed colour
    hub: float = 0.0  # taken off its score in the metric's space (LearnedMetric.hub_penalty)


@dataclass(frozen=True)
class Ranking:
    status: MatchStatus
    hits: list[ProductHit]

    def ranked_products(self) -> list[RankedProduct]:
        return [
            RankedProduct(
                rank=rank,
                product_id=hit.product_id,
                sku=hit.sku,
                score=round(float(hit.score), 6),
                image_id=hit.image_id,
                source=hit.source,
                name=hit.name,
                image=S3Object.model_validate(hit.uri) if hit.uri else None,
            )
            for rank, hit in enumerate(self.hits, start=1)
        ]


class Matcher:
    """Embedding, retrieval, the learned metric and the decision, for one model's index."""

    def __init__(
        self,
        embedder: Embedder,
        index: VectorIndex,
        policy: MatchPolicy,
        learning: LearningSettings | None = None,
    ) -> None:
        self.embedder = embedder
        self.index = index
        self.policy = policy
        self.learning = learning or LearningSettings()
        self.metric = LearnedMetric()
        self._prototypes: dict[tuple[str, bool], tuple[_Prototype, float]] = {}
        self._changes = 0
        self._dirty = False
        self._new_scans = 0  # scans remembered since the last fit
        self._with_photos: set[str] = set()  # products with confirmed photos (at the last fit)
        self._lock = threading.Lock()
        self._fitting: threading.Thread | None = None

    @property
    def model_id(self) -> str:
        return self.embedder.model_id

    def embed(
        self, images: Sequence[Image.Image], kind: ImageKind = ImageKind.catalog
    ) -> np.ndarray:
        return self.embedder.embed(images, kind)

    def match(
        self, images: Sequence[Image.Image], top_k: int, category: str | None = None
    ) -> list[Ranking]:
        return self.rank(self.embed(images, ImageKind.scan), top_k, category)

    # ranking ------------------------------------------------------------------------

    def rank(self, vectors: np.ndarray, top_k: int, category: str | None = None) -> list[Ranking]:
        """Rank products for scan vectors (one more is looked at, for the margin)."""
        metric = self.metric  # one consistent snapshot, even if a refit swaps it meanwhile
        centred = metric.means.centre_query(vectors) if self.learning.centre_domains else vectors
        wanted = top_k + 1
        if metric.reranks:
            wanted = max(wanted, self.learning.rerank_candidates)
        # Until the photo domain's mean is known, a confirmed photo cannot be corrected for it
        # and would attract every photo (photos resemble photos more than catalog shots): the
        # ranking then keeps to catalog images, and the confirmations wait for the next refit.
        source = None
        if self.learning.centre_domains and metric.means.scan is None:
            source = SOURCE_CATALOG
        found = self.index.search(centred, wanted, category, source)
        rankings = []
        for vector, query, hits in zip(vectors, centred, found, strict=True):
            hits = self._correct_domains(query, hits, metric)
            if metric.reranks and hits:
                hits = self._rerank(vector, hits, metric)
            rankings.append(self._ranking(hits, top_k))
        if source is None and self.learning.new_products_first and self._with_photos:
            rankings = self._new_products_first(vectors, centred, rankings, top_k, category, metric)
        return rankings

    def _ranking(self, hits: list[ProductHit], top_k: int) -> Ranking:
        hits = hits[: top_k + 1]
        return Ranking(self.policy.decide(hits), hits[:top_k])

    def _new_products_first(
        self,
        vectors: np.ndarray,
        centred: np.ndarray,
        rankings: list[Ranking],
        top_k: int,
        category: str | None,
        metric: LearnedMetric,
    ) -> list[Ranking]:
        """A photo of a product that has no confirmed photos yet resembles other products'
        photos more than its own catalog shot, so confirmed look-alikes would win. Where the
        closest catalog image is of such a product, the scan is ranked as on day one: against
        catalog images only (docs/benchmarks.md, "New products among confirmed ones")."""
        whitening = metric.whitening
        wanted = max(top_k + 1, self.learning.rerank_candidates if whitening else 0)
        found = self.index.search(centred, wanted, category, SOURCE_CATALOG)
        # a confirmed photo this similar shows the very item (a corrected scan photographed
        # again): that evidence outweighs the catalog images
        closest_photos = self.index.search(vectors, 1, category, SOURCE_CONFIRMED_SCAN)
        routed = []
        for vector, query, ranking, hits, photos in zip(
            vectors, centred, rankings, found, closest_photos, strict=True
        ):
            hits = self._correct_domains(query, hits, metric)
            if whitening is not None and hits:
                hits = self._rerank(vector, hits, whitening, catalog_only=True)
            new_product_closest = bool(hits) and hits[0].product_id not in self._with_photos
            same_item = bool(photos) and photos[0].score >= self.learning.photo_match_stands
            if new_product_closest and not same_item:
                ranking = self._ranking(hits, top_k)
            routed.append(ranking)
        return routed

    def _correct_domains(
        self, query: np.ndarray, hits: list[ProductHit], metric: LearnedMetric
    ) -> list[ProductHit]:
        """score = q·x − q·mean(domain of x): each reference compared after centring on its
        own domain's mean, without rewriting stored vectors."""
        if not self.learning.centre_domains:
            return hits
        offsets = {}
        for source in (SOURCE_CATALOG, SOURCE_CONFIRMED_SCAN):
            mean = metric.means.for_source(source)
            offsets[source] = float(query @ mean) if mean is not None else 0.0
        corrected = [replace(hit, score=hit.score - offsets.get(hit.source, 0.0)) for hit in hits]
        return sorted(corrected, key=lambda hit: (-hit.score, hit.product_id))

    def _rerank(
        self,
        vector: np.ndarray,
        hits: list[ProductHit],
        metric: LearnedMetric,
        catalog_only: bool = False,
    ) -> list[ProductHit]:
        """Re-score a scan's candidates (`vector`: as embedded) by their prototypes in the
        metric's space, plus the colour term where the scan shows colour."""
        image = metric.image_means.centre_query(image_part(vector[None, :], self.embedder.view_dim))
        projected = metric.project(image)[0]
        colour = self._colour_part(vector[None, :])[0]
        weight = self.embedder.colour_weight
        rescored = []
        for hit in hits:
            prototype = self._prototype(hit.product_id, metric, catalog_only)
            score = metric.score_scale * (float(projected @ prototype.image) - prototype.hub)
            if colour.any() and prototype.colour.any():
                score = (score + weight * float(colour @ prototype.colour)) / (1 + weight)
            rescored.append(replace(hit, score=score))
        return sorted(rescored, key=lambda hit: (-hit.score, hit.product_id))

    def _colour_part(self, vectors: np.ndarray) -> np.ndarray:
        """The colour descriptors inside vectors (unit rows; zero rows where a picture showed
        no colour, and no columns without the colour term)."""
        return unit_rows(vectors[:, self.embedder.view_dim :])

    def _prototype(
        self, product_id: str, metric: LearnedMetric, catalog_only: bool = False
    ) -> _Prototype:
        """A product's prototype in the metric's space and its mean colour (of its catalog
        images only, or of all its references), cached for `prototype_ttl_seconds`."""
        now = time.monotonic()
        key = (product_id, catalog_only)
        cached = self._prototypes.get(key)
        if cached is not None and now - cached[1] < self.learning.prototype_ttl_seconds:
            return cached[0]
        references = self.index.references(product_id)
        if catalog_only and (references.sources == SOURCE_CATALOG).any():
            references = references.subset(references.sources == SOURCE_CATALOG)
        colours = self._colour_part(references.vectors)
        shown = colours[colours.any(axis=1)]
        image = metric.prototype(image_references(references, self.embedder.view_dim))
        prototype = _Prototype(
            image=image,
            colour=unit_rows(shown.mean(axis=0)) if len(shown) else np.zeros(colours.shape[1]),
            hub=float(metric.hub_penalty(image[None, :])[0]),
        )
        current = self.metric
        if metric is current or metric is current.whitening:  # not of a replaced metric
            self._prototypes[key] = (prototype, now)
        return prototype

    # learning -----------------------------------------------------------------------

    def catalog(self) -> Catalog:
        """The catalog over this matcher's index; every change it makes is noted here."""
        return Catalog(self.index, self.note_changes, self._note_photo)

    def note_changes(self, product_ids: Iterable[str] = (), count: int = 1) -> None:
        """Something changed: products (their prototypes are recomputed at once; `count`
        changes bring a refit closer) or only the scan statistics (`count=0`: refit on the
        next `refit_seconds`)."""
        with self._lock:
            self._changes += count
            self._dirty = True
            for product_id in product_ids:
                self._prototypes.pop((product_id, False), None)
                self._prototypes.pop((product_id, True), None)

    def _note_photo(self, product_id: str) -> None:
        """A confirmed photo was stored: the product is no longer new."""
        self._with_photos.add(product_id)

    def note_scans(self, count: int) -> None:
        """New scans refine the scan statistics (domain centring): they make the next refit
        due after `refit_seconds`, not after `refit_after_changes` (a refit reads every
        reference, too costly to repeat every few dozen scans of a large catalog), except
        the refit that first learns the photo domain: due as soon as enough scans exist."""
        if count:
            with self._lock:
                self._new_scans += count
            self.note_changes((), 0)

    def refit(self) -> LearnedMetric:
        """Fit the metric from the index now (synchronously) and start using it."""
        started = time.perf_counter()
        with self._lock:
            self._changes = 0
            self._dirty = False
            self._new_scans = 0
        options = MetricOptions(
            max_dim=self.learning.metric_max_dim,
            shrinkage=self.learning.metric_shrinkage,
            min_confirmations=(self.learning.min_confirmations if self.learning.metric else 10**12),
            min_scans_for_centring=self.learning.min_scans_for_centring,
            whiten_dim=self.learning.whiten_dim,
            whiten_power=self.learning.whiten_power,
            min_scans_for_whitening=self.learning.min_scans_for_whitening,
            hubness_weight=self.learning.hubness_weight,
            hubness_neighbours=self.learning.hubness_neighbours,
            hubness_distinct=self.learning.hubness_distinct,
            view_dim=self.embedder.view_dim,
        )
        references = self.index.references()
        metric = fit_metric(
            references,
            self.index.scan_vectors(self.learning.scans_for_statistics),
            options,
            self.learning.rerank_candidates,
        )
        with_photos = set(references.product_ids[references.sources == SOURCE_CONFIRMED_SCAN])
        with self._lock:
            self.metric = metric
            self._prototypes.clear()
            self._with_photos = with_photos
        log.info("metric.fitted", seconds=round(time.perf_counter() - started, 2), **metric.report)
        return metric

    def refit_in_background_if_due(self) -> bool:
        """Start a background refit when enough has changed; never blocks the caller."""
        with self._lock:
            if self._fitting is not None and self._fitting.is_alive():
                return False
            elapsed = time.time() - self.metric.fitted_at
            due = (
                self._changes >= self.learning.refit_after_changes
                or (self._dirty and elapsed >= self.learning.refit_seconds)
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
        """Whether enough scans now exist to learn the photo domain's mean, which the metric
        in use lacks (until then confirmed photos are not ranked)."""
        if not self.learning.centre_domains or self.metric.means.scan is not None:
            return False
        seen = self.metric.report.get("scans_for_centring", 0) + self._new_scans
        return seen >= self.learning.min_scans_for_centring

    def _refit_logging_errors(self) -> None:
        try:
            self.refit()
        except Exception as error:  # a failed refit keeps the previous metric
            log.warning("metric.refit_failed", error=str(error))

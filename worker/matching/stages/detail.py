"""Stage: the detail that tells twins apart.

The first `candidates` products of a scan's ranking are compared with it by local evidence
(`worker/vision/local_features.py`): how many of the scan's keypoints match the product's
best reference image in one geometry. Each candidate's score becomes

    score + weight × ln(1 + inliers)

and those candidates are re-ordered; the products after them keep their place and score.
(The logarithm: the first shared details say much, the hundredth little; and a shared
background can give dozens.) The rule and its weight were chosen on jewelry-dev and grocery
`train` (docs/benchmarks.md, "Detail"). Re-ordering only the first five leaves recall@5 as
it was.

A reference's features come from its image in the store, extracted once and kept in a
bounded cache (`ReferenceDetails`): the scan's are extracted from its decoded picture.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import structlog
from PIL import Image

from worker.index.base import ProductHit
from worker.settings import DetailSettings
from worker.vision.local_features import (
    LocalFeatures,
    empty_features,
    extract_features,
    geometric_inliers,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class DetailStage:
    enabled: bool = False
    candidates: int = 5
    weight: float = 0.02
    side: int = 400
    features: int = 400

    @classmethod
    def from_settings(cls, settings: DetailSettings) -> DetailStage:
        return cls(
            settings.enabled, settings.candidates, settings.weight, settings.side, settings.features
        )

    def extract(self, picture: Image.Image) -> LocalFeatures:
        return extract_features(picture, self.side, self.features)

    def rerank(
        self, hits: list[ProductHit], scan: LocalFeatures, references: ReferenceDetails
    ) -> list[ProductHit]:
        """The first `candidates` hits re-scored by their shared detail with the scan and
        re-ordered; the rest as they were."""
        head, tail = hits[: self.candidates], hits[self.candidates :]
        rescored = [
            replace(hit, score=hit.score + self.weight * math.log1p(
                geometric_inliers(scan, references.features(hit))))
            for hit in head
        ]  # fmt: skip
        return sorted(rescored, key=lambda hit: (-hit.score, hit.product_id)) + tail

    @staticmethod
    def decision_scores(before: list[ProductHit], after: list[ProductHit]) -> list[float]:
        """What the decision reads once detail has re-ordered `before` into `after`: the new
        first product's score before this stage, and the best other's. The confidence was
        learned from rankings without detail (the refit has vectors, not photos), so it is
        asked about the same kind of evidence; detail can take confidence away (a first
        product it changed leads by a negative margin: `no_confident_match`), never add it.
        """
        if not after:
            return []
        first = after[0].product_id
        others = [hit.score for hit in before if hit.product_id != first]
        score = next(hit.score for hit in before if hit.product_id == first)
        return [score, max(others)] if others else [score]


@dataclass(frozen=True)
class ScanDetails:
    """What the detail stage needs beside the vectors: each scan's features, and where the
    references' come from."""

    scans: Sequence[LocalFeatures]
    references: ReferenceDetails


ImageReader = Callable[[str], Image.Image]
"""Reads a reference image by its URI (`s3://bucket/key`): decoded, upright RGB."""


class ReferenceDetails:
    """Local features of reference images, read through `read` once and kept for `ttl`
    seconds (another worker may replace an image under the same key), at most `capacity`
    images, least recently used first out. A reference that cannot be read has none (logged):
    the scan is still answered, by its global score. Thread-safe."""

    def __init__(
        self, read: ImageReader, stage: DetailStage, capacity: int = 4096, ttl: float = 3600.0
    ) -> None:
        self.read, self.stage, self.capacity, self.ttl = read, stage, capacity, ttl
        self._cached: OrderedDict[tuple[str, str, str], tuple[LocalFeatures, float]] = OrderedDict()
        self._lock = threading.Lock()

    def features(self, hit: ProductHit) -> LocalFeatures:
        key, now = (hit.product_id, hit.image_id, hit.uri or ""), time.monotonic()
        with self._lock:
            cached = self._cached.get(key)
            if cached is not None and now - cached[1] < self.ttl:
                self._cached.move_to_end(key)
                return cached[0]
        features = self._extract(hit)
        if features is None:
            return empty_features()  # not kept: the store may answer next time
        with self._lock:
            self._cached[key] = (features, now)
            self._cached.move_to_end(key)
            while len(self._cached) > self.capacity:
                self._cached.popitem(last=False)
        return features

    def _extract(self, hit: ProductHit) -> LocalFeatures | None:
        if not hit.uri:
            return empty_features()
        try:
            return self.stage.extract(self.read(hit.uri))
        except Exception as error:  # the scan is still answered, without this evidence
            log.warning(
                "detail.reference_unreadable",
                product_id=hit.product_id,
                image_id=hit.image_id,
                uri=hit.uri,
                error=str(error),
            )
            return None

    def forget(self, product_ids: Iterable[str]) -> None:
        """Drop the cached features of these products (their images may have changed)."""
        with self._lock:
            gone = set(product_ids)
            for key in [key for key in self._cached if key[0] in gone]:
                del self._cached[key]

"""From scan vectors to ranked products, for one model's index: the one ranking
(`ranking.rank`) over the learner's current snapshot of fitted stages. The worker, the
terminal commands and the accuracy benchmark all match through `Matcher`, so what is measured
is what runs. Embedding happens before (`worker.vision`): matching loads no model code."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from worker.index.base import VectorIndex
from worker.matching.catalog import Catalog
from worker.matching.learner import Learner
from worker.matching.ranking import MatchPolicy, Ranking, Snapshot, rank
from worker.matching.scan_memory import ScanMemory
from worker.matching.stages.detail import ImageReader, ScanDetails
from worker.settings import LearningSettings, MatchingSettings
from worker.vectors import VectorLayout
from worker.vision.local_features import LocalFeatures

__all__ = ["MatchPolicy", "Matcher", "Ranking", "policy_from_settings"]


def policy_from_settings(settings: MatchingSettings) -> MatchPolicy:
    return MatchPolicy(
        min_score=settings.min_score,
        min_margin=settings.min_margin,
        target_precision=settings.target_precision,
    )


class Matcher:
    def __init__(
        self,
        index: VectorIndex,
        layout: VectorLayout,
        model_id: str,
        policy: MatchPolicy | None = None,
        learning: LearningSettings | None = None,
        trained_on: frozenset[str] = frozenset(),
    ) -> None:
        """`trained_on`: URIs of the confirmed photos the image towers trained on (never
        labels of the confidence stage)."""
        self.index = index
        self.model_id = model_id
        self.learner = Learner(
            index, layout, learning or LearningSettings(), policy or MatchPolicy(), trained_on
        )
        self.scans = ScanMemory(index, self.catalog(), self.learner)

    @property
    def snapshot(self) -> Snapshot:
        return self.learner.snapshot

    def read_references_with(self, read_image: ImageReader) -> None:
        """How the detail stage reads a reference image by its URI (decoded, upright RGB);
        until set, rankings do not compare detail."""
        self.learner.read_references_with(read_image)

    @property
    def compares_detail(self) -> bool:
        """Whether rankings use the scans' pictures (`scan_details`)."""
        return self.learner.details is not None

    def scan_details(self, pictures: Sequence[Image.Image]) -> list[LocalFeatures] | None:
        """The detail stage's features of scan pictures (None where the stage does not act)."""
        if not self.compares_detail:
            return None
        stage = self.learner.snapshot.detail
        return [stage.extract(picture) for picture in pictures]

    def rank(
        self,
        vectors: np.ndarray,
        top_k: int,
        category: str | None = None,
        scan_details: Sequence[LocalFeatures] | None = None,
    ) -> list[Ranking]:
        """Rank products for scan vectors (as embedded) on the current snapshot; with the
        scans' `scan_details`, the detail stage acts."""
        details = None
        if scan_details is not None and self.learner.details is not None:
            details = ScanDetails(scan_details, self.learner.details)
        return rank(
            self.learner.snapshot,
            self.index,
            self.learner.prototypes,
            vectors,
            top_k,
            category,
            details,
        )

    def catalog(self) -> Catalog:
        """The catalog over this matcher's index; every change it makes reaches the learner."""
        return Catalog(self.index, self.learner.note_changes, self.learner.note_photo)

    def refit(self) -> Snapshot:
        return self.learner.refit()

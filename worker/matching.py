"""From pictures to ranked products: embed, search grouped by product, decide confidence.

The worker, the terminal commands and the accuracy benchmark all match through `Matcher`,
so what is measured is what runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from shared.contract import MatchStatus, RankedProduct
from worker.embedder import Embedder
from worker.index import ProductHit, VectorIndex
from worker.settings import MatchingSettings


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
class Ranking:
    status: MatchStatus
    hits: list[ProductHit]

    def ranked_products(self) -> list[RankedProduct]:
        return [
            RankedProduct(
                rank=rank,
                product_id=hit.product_id,
                sku=hit.sku,
                score=round(hit.score, 6),
                image_id=hit.image_id,
                source=hit.source,
            )
            for rank, hit in enumerate(self.hits, start=1)
        ]


class Matcher:
    def __init__(self, embedder: Embedder, index: VectorIndex, policy: MatchPolicy) -> None:
        self.embedder = embedder
        self.index = index
        self.policy = policy

    @property
    def model_id(self) -> str:
        return self.embedder.model_id

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.embedder.embed(images)

    def rank(self, vectors: np.ndarray, top_k: int, category: str | None = None) -> list[Ranking]:
        # One more product than asked for, so the margin to the runner-up is known.
        found = self.index.search(vectors, top_k + 1, category)
        return [Ranking(self.policy.decide(hits), hits[:top_k]) for hits in found]

    def match(
        self, images: Sequence[Image.Image], top_k: int, category: str | None = None
    ) -> list[Ranking]:
        return self.rank(self.embed(images), top_k, category)

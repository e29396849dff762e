"""A re-ranking space: a projection of the centred image embedding (the scans' whitening, or
the metric learned from confirmations), in which each candidate product is scored by its
prototype, less its hub penalty, plus the colour term where the scan shows colour."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from worker.matching.stages.centring import DomainMeans
from worker.matching.stages.hubness import HubPenalty
from worker.vectors import unit_rows

if TYPE_CHECKING:
    from worker.index.base import ReferenceSet


@dataclass(frozen=True)
class RerankSpace:
    name: str  # "whitening" or "lda"
    projection: np.ndarray
    image_means: DomainMeans
    """The image embedding's domain means: the space's centring."""
    score_scale: float = 1.0
    """Scores are multiplied by this: 1 for LDA; for the whitening, the factor that brings its
    scores' margins back to the plain space's scale, so that `matched` answers about as often
    at the same margin (the whitened cosines spread wider)."""
    hubs: HubPenalty | None = None

    def project(self, centred: np.ndarray) -> np.ndarray:
        return unit_rows(centred @ self.projection)

    def project_scans(self, image_vectors: np.ndarray) -> np.ndarray:
        """Scans' image embeddings (rows) in this space."""
        return self.project(self.image_means.centre_query(image_vectors))

    def projected(self, image_refs: ReferenceSet) -> np.ndarray:
        """References' image embeddings (rows) in this space, each of unit length."""
        return self.project(self.image_means.centre_references(image_refs))

    def prototype(self, image_refs: ReferenceSet) -> np.ndarray:
        """One product's prototype from its references' image embeddings: the unit mean of
        their unit projections."""
        return unit_rows(self.projected(image_refs).mean(axis=0))

    def hub_penalty(self, prototypes: np.ndarray) -> np.ndarray:
        if self.hubs is None:
            return np.zeros(len(prototypes), dtype=np.float32)
        return self.hubs.of(prototypes)

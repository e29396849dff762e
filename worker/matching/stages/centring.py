"""Domain centring: scans (hand-held photos of a jewel in a bag) and catalog images (clean
studio shots) differ systematically; subtracting each domain's mean vector before comparing
removes much of that difference. The scan mean comes from unlabeled scans, so it needs no
confirmation. It is applied to the query and to the candidates' scores: stored vectors never
change."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from worker.settings import CentringSettings
from worker.vectors import SOURCE_CATALOG, SOURCE_CONFIRMED_SCAN, VectorLayout, unit_rows

if TYPE_CHECKING:
    from worker.index.base import ProductHit, ReferenceSet


@dataclass(frozen=True)
class DomainMeans:
    catalog: np.ndarray | None = None
    scan: np.ndarray | None = None

    def for_source(self, source: str) -> np.ndarray | None:
        return self.catalog if source == SOURCE_CATALOG else self.scan

    def centre_query(self, vectors: np.ndarray) -> np.ndarray:
        return unit_rows(vectors - self.scan) if self.scan is not None else vectors

    def centre_references(self, refs: ReferenceSet) -> np.ndarray:
        centred = refs.vectors.copy()
        for source in (SOURCE_CATALOG, SOURCE_CONFIRMED_SCAN):
            mean = self.for_source(source)
            if mean is not None:
                centred[refs.sources == source] -= mean
        return unit_rows(centred)

    @classmethod
    def fit(cls, refs: ReferenceSet, scan_vectors: np.ndarray, min_scans: int) -> DomainMeans:
        """Each domain's mean: catalog images, and photos (unlabeled scans and confirmed
        ones), the latter once `min_scans` exist."""
        catalog_mask = refs.sources == SOURCE_CATALOG
        scans = np.concatenate([scan_vectors, refs.vectors[~catalog_mask]])
        return cls(
            catalog=refs.vectors[catalog_mask].mean(axis=0) if catalog_mask.any() else None,
            scan=scans.mean(axis=0) if len(scans) >= min_scans else None,
        )


@dataclass(frozen=True)
class Centring:
    """The fitted stage: the means of the vectors as stored (colour included), for the search
    and its score correction, and of the image embedding alone, for the re-ranking spaces."""

    enabled: bool = True
    means: DomainMeans = DomainMeans()
    image_means: DomainMeans = DomainMeans()

    @classmethod
    def fit(
        cls,
        refs: ReferenceSet,
        scan_vectors: np.ndarray,
        image_refs: ReferenceSet,
        image_scans: np.ndarray,
        settings: CentringSettings,
    ) -> Centring:
        """From the vectors as stored and the same reduced to their image embedding
        (`image_references`, `VectorLayout.image_part`: the very arrays when there is no
        colour part)."""
        means = DomainMeans.fit(refs, scan_vectors, settings.min_scans)
        image_means = means
        if image_refs.vectors is not refs.vectors:
            image_means = DomainMeans.fit(image_refs, image_scans, settings.min_scans)
        return cls(settings.enabled, means, image_means)

    def centre(self, vectors: np.ndarray) -> np.ndarray:
        """The queries as searched."""
        return self.means.centre_query(vectors) if self.enabled else vectors

    def searchable_source(self) -> str | None:
        """Until the photo domain's mean is known, a confirmed photo cannot be corrected for it
        and would attract every photo (photos resemble photos more than catalog shots): the
        ranking then keeps to catalog images, and the confirmations wait for the next refit."""
        return SOURCE_CATALOG if self.enabled and self.means.scan is None else None

    def correct(self, query: np.ndarray, hits: list[ProductHit]) -> list[ProductHit]:
        """score = q·x − q·mean(domain of x): each reference compared after centring on its
        own domain's mean, without rewriting stored vectors."""
        if not self.enabled:
            return hits
        offsets = {}
        for source in (SOURCE_CATALOG, SOURCE_CONFIRMED_SCAN):
            mean = self.means.for_source(source)
            offsets[source] = float(query @ mean) if mean is not None else 0.0
        corrected = [replace(hit, score=hit.score - offsets.get(hit.source, 0.0)) for hit in hits]
        return sorted(corrected, key=lambda hit: (-hit.score, hit.product_id))


def image_references(refs: ReferenceSet, layout: VectorLayout) -> ReferenceSet:
    """Reference vectors reduced to their image embedding (`VectorLayout.image_part`)."""
    return type(refs)(
        layout.image_part(refs.vectors), refs.product_ids, refs.sources, refs.uris, refs.image_ids
    )

"""New products first: a photo of a product that has no confirmed photos yet resembles other
products' photos more than its own catalog shot, so confirmed look-alikes would win. Where the
closest catalog image (in the whitened space when there is one) is of such a product, the
scan is ranked as on day one: against catalog images only (docs/benchmarks.md, "New products
among confirmed ones") — unless a confirmed photo is so similar that it shows the very item.
Where the scan is not routed but, on those same catalog-only terms, a new product is as close
as the answer, the answer is only ahead by its photos, which a new look-alike cannot have:
it is not `matched` ("New look-alikes")."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class NewProductsFirst:
    """The fitted stage: which products had confirmed photos at the last fit."""

    enabled: bool = True
    photo_match_stands: float = 0.93
    with_photos: frozenset[str] = field(default_factory=frozenset)
    doubt_within: float | None = 0.05
    doubt_among: int = 2

    @property
    def applies(self) -> bool:
        return self.enabled and bool(self.with_photos)

    def shows_same_item(self, closest_photo_score: float | None) -> bool:
        """Whether the confirmed photo closest to a scan is a photo of the very item."""
        return closest_photo_score is not None and closest_photo_score >= self.photo_match_stands

    def routes(self, closest_product: str | None, same_item: bool) -> bool:
        """Whether a scan is ranked against catalog images only: its closest catalog product
        is new, and no confirmed photo shows the very item."""
        new_product_closest = closest_product is not None and (
            closest_product not in self.with_photos
        )
        return new_product_closest and not same_item

    def doubts(self, answer: str, catalog_scores: list[tuple[str, float]], same_item: bool) -> bool:
        """Whether the answer `answer` (a product with confirmed photos) is to be refused:
        among the first `doubt_among` of the catalog-only ranking (`catalog_scores`, product
        and score, best first), a product without confirmed photos is within `doubt_within`
        of the answer's own catalog-only score (which is below all of them when the answer
        is not among them), and no confirmed photo shows the very item (`same_item`)."""
        if self.doubt_within is None or same_item or answer not in self.with_photos:
            return False
        own = dict(catalog_scores).get(answer, float("-inf"))
        return any(
            product not in self.with_photos and score >= own - self.doubt_within
            for product, score in catalog_scores[: self.doubt_among]
        )

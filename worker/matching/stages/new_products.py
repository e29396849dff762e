"""New products first: a photo of a product that has no confirmed photos yet resembles other
products' photos more than its own catalog shot, so confirmed look-alikes would win. Where the
closest catalog image (in the whitened space when there is one) is of such a product, the
scan is ranked as on day one: against catalog images only (docs/benchmarks.md, "New products
among confirmed ones") — unless a confirmed photo is so similar that it shows the very item."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class NewProductsFirst:
    """The fitted stage: which products had confirmed photos at the last fit."""

    enabled: bool = True
    photo_match_stands: float = 0.93
    with_photos: frozenset[str] = field(default_factory=frozenset)

    @property
    def applies(self) -> bool:
        return self.enabled and bool(self.with_photos)

    def routes(self, closest_product: str | None, closest_photo_score: float | None) -> bool:
        """Whether a scan is ranked against catalog images only: its closest catalog product
        is new, and no confirmed photo shows the very item."""
        new_product_closest = closest_product is not None and (
            closest_product not in self.with_photos
        )
        same_item = closest_photo_score is not None and (
            closest_photo_score >= self.photo_match_stands
        )
        return new_product_closest and not same_item

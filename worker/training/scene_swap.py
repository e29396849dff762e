"""Training views of a catalog image whose piece lies on another picture's scene.

In lifestyle catalog shots the scene (a wicker tray, a hand, a model's neck) is shared by
many pieces, so a tower that learns each catalog image as its own product also learns the
scene as evidence of it, and a photo of another piece on that tray ranks it first
(docs/benchmarks.md, "Jewelry"). Some of a catalog image's training views therefore show
its piece, as GrabCut finds it (no weights: worker/vision/object_region.py), pasted on a
backdrop cut from another product's catalog image: the piece stays the evidence, the
scene becomes noise."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from functools import cached_property

import numpy as np
from PIL import Image, ImageFilter

from worker.vision.object_region import object_mask

BACKDROP_SIDE = 0.4
"""A backdrop is a corner square of this share of the other picture's shorter side: a
corner shows its scene, seldom its piece (which a catalog shot puts in the middle)."""

EDGE_BLUR = 2.0
"""Radius (px) of the blur that softens the pasted piece's edge."""


class PieceMasks:
    """The piece's soft-edged mask (mode L, the picture's size) of each catalog image, or None
    where GrabCut finds none. GrabCut takes a good part of a second a picture, so it runs once
    per run for every tower; what is kept is its small mask (at most 300 px a side)."""

    def __init__(self) -> None:
        self._found: dict[str, np.ndarray | None] = {}

    def of(self, key: str, picture: Image.Image) -> Image.Image | None:
        if key not in self._found:
            self._found[key] = object_mask(picture)
        found = self._found[key]
        if found is None:
            return None
        small = Image.fromarray(found.astype(np.uint8) * 255)
        resized = small.resize(picture.size, Image.Resampling.BILINEAR)
        return resized.filter(ImageFilter.GaussianBlur(EDGE_BLUR))


class SceneSwap:
    """`swap(rng)`: the picture's piece (its mask from `masks`, found only when a view is
    swapped) on a backdrop cut from one of `backdrops` (product id and loader of every
    catalog image) of another product than `product_id`, drawn by `rng`; None when there is
    no piece or no other product."""

    def __init__(
        self,
        picture: Image.Image,
        key: str,
        product_id: str,
        backdrops: Sequence[tuple[str, Callable[[], Image.Image]]],
        masks: PieceMasks,
    ) -> None:
        self.picture = picture
        self.key = key
        self.product_id = product_id
        self.backdrops = backdrops
        self.masks = masks

    @cached_property
    def mask(self) -> Image.Image | None:
        """The piece's soft mask at full size, made once for all of this picture's views."""
        return self.masks.of(self.key, self.picture)

    def __call__(self, rng: random.Random) -> Image.Image | None:
        load = self._other_product(rng)
        if load is None or (mask := self.mask) is None:
            return None
        try:
            other = load().convert("RGB")
        except Exception:  # an unreadable backdrop: this view keeps its own scene
            return None
        side = max(1, round(min(other.size) * BACKDROP_SIDE))
        left = rng.choice([0, other.width - side])
        top = rng.choice([0, other.height - side])
        backdrop = other.crop((left, top, left + side, top + side)).resize(self.picture.size)
        return Image.composite(self.picture, backdrop, mask)

    def _other_product(self, rng: random.Random) -> Callable[[], Image.Image] | None:
        """A catalog image of another product: a random one, or the next that is another's."""
        if not self.backdrops:
            return None
        start = rng.randrange(len(self.backdrops))
        for step in range(len(self.backdrops)):
            product_id, load = self.backdrops[(start + step) % len(self.backdrops)]
            if product_id != self.product_id:
                return load
        return None

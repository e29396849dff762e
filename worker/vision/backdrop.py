"""The backdrop of a picture, read from its border: where the colour cue (`colour`), the
catalog-zoom cue (`catalog_scene`) and the pieces of a set (`catalog_parts`) start to tell a
piece from what it lies on.

The colour cue then judges differently from the other two (a 1 px frame at 96 px, an L1
distance and a median-deviation test of a busy border; theirs a 10 px frame at 200 px, an RGB
distance and a texture test), each chosen and measured on its own (docs/benchmarks.md,
"Colour" and "Jewelry"), so only the reading is shared."""

from __future__ import annotations

import numpy as np


def border_pixels(rgb: np.ndarray, width: int) -> np.ndarray:
    """The pixels of the outer frame `width` px deep of an H × W × 3 picture, as rows of RGB
    (the corners counted twice, which a median hardly notices)."""
    frame = [rgb[:width], rgb[-width:], rgb[:, :width], rgb[:, -width:]]
    return np.concatenate([part.reshape(-1, 3) for part in frame])


def backdrop_colour(border: np.ndarray) -> np.ndarray:
    """The backdrop's colour: the median of the border's pixels, channel by channel."""
    return np.median(border, axis=0)

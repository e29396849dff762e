"""Colour of the object itself: what tells a gold ring from its silver twin.

The backbone's embedding nearly ignores hue (it was trained to recognise objects whatever
their colour), and a jewel fills a few percent of the frame, so a colour statistic of the whole
picture would describe the backdrop, the bag and the hand. Here the object's region is found
without any model: pixels that differ from the picture's border colour (the backdrop of a
product shot, the bag around a jewel), on pictures whose border is plain; its colours go into
a small histogram: hue for coloured pixels, and brightness for grey ones (silver, white gold,
diamonds).

Saturation is left out and grey pixels count for less: a bag's milky tint, its creases and
glare wash colours out (rose gold's saturation falls by a third through a bag) and add grey
pixels to the region, while a colour's hue survives them (docs/benchmarks.md, "Colour").
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from worker.vision.backdrop import backdrop_colour, border_pixels

HUES = 12
GREYS = 4
DIM = HUES + GREYS
"""Length of a colour descriptor."""

_SIDE = 96  # pictures are looked at this small: colour needs no detail
_GREY_SATURATION = 30  # of 255: below this a pixel counts as grey (metal, white)
_GREY_WEIGHT = 0.3
"""A grey pixel's weight against a coloured one's 1 (grey is partly the bag's glare)."""
_BUSY_BORDER = 40.0
"""Summed median deviation of the border from its colour above which the backdrop is not
plain (0 for product shots and bag photos on a table; 67 to 146, 10th to 90th percentile, for
photos on shop shelves: docs/benchmarks.md, "Colour")."""


def foreground_mask(image: Image.Image) -> np.ndarray | None:
    """Pixels that differ from the border colour (the backdrop), at `_SIDE` px; None where no
    object stands out (too few or too many pixels differ: a busy or an empty picture)."""
    small = np.asarray(image.convert("RGB").resize((_SIDE, _SIDE), Image.Resampling.BILINEAR))
    pixels = small.astype(np.float32)
    border = border_pixels(pixels, 1)
    backdrop = backdrop_colour(border)
    spread = np.median(np.abs(border - backdrop), axis=0).sum()
    if spread > _BUSY_BORDER:
        return None  # no plain backdrop (a shelf, a room): no region to trust
    distance = np.abs(pixels - backdrop).sum(axis=2)
    mask = distance > max(48.0, 3.0 * spread)
    share = mask.mean()
    if share < 0.01 or share > 0.9:
        return None
    return mask


def colour_descriptor(image: Image.Image) -> np.ndarray:
    """A unit-length histogram (square-rooted, so that a few strong colours do not drown the
    rest) of the object's colours; zeros when no object stands out from the backdrop (no
    colour evidence: the embedding alone then ranks)."""
    mask = foreground_mask(image)
    if mask is None:
        return np.zeros(DIM, dtype=np.float32)
    hsv = np.asarray(image.convert("RGB").resize((_SIDE, _SIDE)).convert("HSV")).astype(np.int32)
    hue, saturation, value = hsv[..., 0][mask], hsv[..., 1][mask], hsv[..., 2][mask]
    histogram = np.zeros(DIM, dtype=np.float32)
    grey = saturation < _GREY_SATURATION
    coloured = ~grey
    np.add.at(histogram, hue[coloured] * HUES // 256, 1.0)
    np.add.at(histogram, HUES + value[grey] * GREYS // 256, _GREY_WEIGHT)
    histogram = np.sqrt(histogram / max(histogram.sum(), 1.0))
    return histogram / max(float(np.linalg.norm(histogram)), 1e-12)

"""Whether a catalog image shows its piece small or in a scene, told in a few milliseconds
without weights. With `MODEL__CATALOG_ZOOM` set, such an image (a ring on a hand, a pendant
on a wicker tray, earrings small on a studio backdrop) is also embedded by its zoomed middle,
so that the piece counts more than the scene that other pieces' shots share; an iconic shot
(the product alone, filling the picture, as grocery catalogs and many webshops have them) is
embedded whole, as zooming cuts into it (docs/benchmarks.md, "Jewelry").

Two cues, both read on the picture reduced to 200 × 200 px:
- a scene: the border is textured (the mean grey-level step between neighbouring pixels of
  its outer 10 px exceeds 2 of 255; the median catalog image of grocery and of jewelry-dev
  reads about 0.1);
- a small piece on a plain backdrop: the pixels that differ from the border's median colour
  (by more than 40 in RGB distance) span less than 0.8 of the picture's side.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from worker.vision.backdrop import backdrop_colour, border_pixels

SIDE = 200
FRAME = 10
SCENE_TEXTURE = 2.0
BACKGROUND_DISTANCE = 40.0
SMALL_EXTENT = 0.8
MIN_PIXELS = 20
"""Fewer differing pixels than this: nothing stands out, the picture is taken as iconic."""


def border_texture(grey: np.ndarray) -> float:
    """The mean absolute step between neighbouring pixels along the picture's border frame."""
    across = np.abs(np.diff(grey, axis=1))
    down = np.abs(np.diff(grey, axis=0))
    frame = [across[:FRAME], across[-FRAME:], down[:, :FRAME], down[:, -FRAME:]]
    return float(np.concatenate([part.ravel() for part in frame]).mean())


def piece_extent(rgb: np.ndarray) -> float:
    """The share of the side spanned (1st to 99th percentile) by pixels unlike the border's
    median colour; 1.0 when nothing stands out."""
    background = backdrop_colour(border_pixels(rgb, FRAME))
    differs = np.linalg.norm(rgb - background, axis=2) > BACKGROUND_DISTANCE
    if differs.sum() < MIN_PIXELS:
        return 1.0
    rows, columns = np.nonzero(differs)
    spans = [np.percentile(axis, 99) - np.percentile(axis, 1) for axis in (rows, columns)]
    return float(max(spans) / SIDE)


def shows_piece_small(picture: Image.Image) -> bool:
    """True for a scene (textured border) or a piece spanning under 0.8 of a plain picture."""
    rgb = np.asarray(picture.convert("RGB").resize((SIDE, SIDE)), dtype=np.float32)
    if border_texture(rgb.mean(axis=2)) > SCENE_TEXTURE:
        return True
    return piece_extent(rgb) < SMALL_EXTENT

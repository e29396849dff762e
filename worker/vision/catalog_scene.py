"""Whether a catalog image shows its piece small or in a scene, told in a few milliseconds
without weights. With `MODEL__CATALOG_ZOOM` set, such an image (a ring on a hand, a pendant
on a wicker tray, earrings small on a studio backdrop) is also embedded by its zoomed middle,
so that the piece counts more than the scene that other pieces' shots share; an iconic shot
(the product alone, filling the picture, as grocery catalogs and many webshops have them) is
embedded whole, as zooming cuts into it (docs/benchmarks.md, "Jewelry").

Two cues, both read on the picture reduced to 200 × 200 px:
- a scene: the border is textured (the mean grey-level step between neighbouring pixels of
  its outer 10 px exceeds 2 of 255; the median catalog image of grocery and of jewelry-dev
  reads about 0.1) all round: at most one of its four sides is plain (a step under 0.25). A
  packshot whose print runs into the picture's edge is textured on one or two sides and
  plain on the others (grocery's sour-cream cartons: 0.00 on two sides); a scene surrounds
  its piece (jewelry-dev's 48 textured catalog images: 0.46 or more on three sides);
- a small piece on a plain backdrop: the pixels that differ from the border's median colour
  (by more than 40 in RGB distance) span less than 0.75 of the picture's side (grocery's
  packshots span 0.78 to 0.97).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from worker.vision.backdrop import backdrop_colour, border_pixels

SIDE = 200
FRAME = 10
SCENE_TEXTURE = 2.0
PLAIN_SIDE = 0.25
"""A side of the border frame whose mean step is under this is plain backdrop."""
BACKGROUND_DISTANCE = 40.0
SMALL_EXTENT = 0.75
MIN_PIXELS = 20
"""Fewer differing pixels than this: nothing stands out, the picture is taken as iconic."""


def border_texture(grey: np.ndarray) -> float:
    """The mean absolute step between neighbouring pixels along the picture's border frame."""
    across = np.abs(np.diff(grey, axis=1))
    down = np.abs(np.diff(grey, axis=0))
    frame = [across[:FRAME], across[-FRAME:], down[:, :FRAME], down[:, -FRAME:]]
    return float(np.concatenate([part.ravel() for part in frame]).mean())


def plain_sides(grey: np.ndarray) -> int:
    """How many of the border frame's four sides are plain backdrop (their pixels' steps to
    their neighbours, in both directions, under `PLAIN_SIDE` on average)."""
    sides = [grey[:FRAME], grey[-FRAME:], grey[:, :FRAME].T, grey[:, -FRAME:].T]
    return sum(
        float(np.concatenate([np.abs(np.diff(side, axis=a)).ravel() for a in (0, 1)]).mean())
        < PLAIN_SIDE
        for side in sides
    )


def in_a_scene(grey: np.ndarray) -> bool:
    """A textured border all round (at most one plain side): the piece sits in a scene."""
    return border_texture(grey) > SCENE_TEXTURE and plain_sides(grey) <= 1


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
    """True for a scene (a border textured all round) or a piece spanning under 0.75 of a
    plain picture."""
    rgb = np.asarray(picture.convert("RGB").resize((SIDE, SIDE)), dtype=np.float32)
    if in_a_scene(rgb.mean(axis=2)):
        return True
    return piece_extent(rgb) < SMALL_EXTENT

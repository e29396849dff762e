"""Whether a catalog image shows its piece small or in a scene, told in a few milliseconds
without weights. With `MODEL__CATALOG_ZOOM` set, such an image (a ring on a hand, a pendant
on a wicker tray, earrings small on a studio backdrop) is also embedded by a zoomed square
(a scene's middle, a small piece's surroundings), so that the piece counts more than the
scene that other pieces' shots share; an iconic shot
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
MARGIN = 0.15
"""Around a small piece's zoomed square, on every side, as a share of its longer side."""
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


def _piece_box(rgb: np.ndarray) -> tuple[float, float, float, float] | None:
    """Where the pixels unlike the border's median colour lie (1st to 99th percentile of
    their columns and rows: left, top, right, bottom, at `SIDE` px); None when nothing stands
    out."""
    background = backdrop_colour(border_pixels(rgb, FRAME))
    differs = np.linalg.norm(rgb - background, axis=2) > BACKGROUND_DISTANCE
    if differs.sum() < MIN_PIXELS:
        return None
    rows, columns = np.nonzero(differs)
    left, right = np.percentile(columns, [1, 99])
    top, bottom = np.percentile(rows, [1, 99])
    return float(left), float(top), float(right), float(bottom)


def _span(box: tuple[float, float, float, float]) -> float:
    """A piece box's longer side, as a share of the picture's side (at `SIDE` px)."""
    left, top, right, bottom = box
    return max(right - left, bottom - top) / SIDE


def zoom_box(picture: Image.Image, zoom: float) -> tuple[int, int, int, int] | None:
    """The square a catalog image is zoomed to (left, upper, right, lower, in its pixels), or
    None for an iconic shot: a scene's centred square of `zoom` times the shorter side; a
    small piece's square around the piece, with a margin of `MARGIN` of its longer side, and
    at least `zoom` times the shorter side (so that an off-centre or larger piece is not
    cut)."""
    width, height = picture.size
    shorter = min(width, height)
    rgb = np.asarray(picture.convert("RGB").resize((SIDE, SIDE)), dtype=np.float32)
    if in_a_scene(rgb.mean(axis=2)):
        return square_around(width / 2, height / 2, zoom * shorter, width, height)
    box = _piece_box(rgb)
    if box is None or _span(box) >= SMALL_EXTENT:
        return None
    left, top, right, bottom = box
    sx, sy = width / SIDE, height / SIDE
    longer = max((right - left) * sx, (bottom - top) * sy)
    side = min(max(longer * (1 + 2 * MARGIN), zoom * shorter), shorter)
    return square_around((left + right) / 2 * sx, (top + bottom) / 2 * sy, side, width, height)


def square_around(
    cx: float, cy: float, side: float, width: int, height: int
) -> tuple[int, int, int, int]:
    """A square of `side` centred on (cx, cy), moved to lie within the picture."""
    x0, x1 = _span_inside(cx - side / 2, side, width)
    y0, y1 = _span_inside(cy - side / 2, side, height)
    return round(x0), round(y0), round(x1), round(y1)


def _span_inside(start: float, length: float, limit: float) -> tuple[float, float]:
    """A span of `length` from `start`, moved to lie within 0..`limit` (cut where longer)."""
    start = min(max(start, 0.0), max(limit - length, 0.0))
    return start, min(start + length, limit)

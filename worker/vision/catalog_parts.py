"""The pieces of a set: a catalog image that shows several separate pieces on a plain backdrop
(a necklace with its two earrings, a pair of rings) is also stored as each piece alone, so
that a scan of one piece finds its set as it would a catalog image of that piece
(`MODEL__CATALOG_PARTS`; docs/benchmarks.md, "Jewelry": studio shots of a necklace-and-earrings
set ranked their earrings, photographed alone, 13th to 30th before).

Told without weights, on the picture reduced to 200 × 200 px: the border is plain (the
`catalog_scene` texture test), the pixels unlike the border's median colour are joined where
they lie within a few pixels of each other, and each joined region of at least 1 % of the
picture is a piece. Two or more pieces: each is cut out as a square around it, with a margin;
one piece (or a scene): none, the whole picture serves alone.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from worker.vision.backdrop import backdrop_colour, border_pixels
from worker.vision.catalog_scene import (
    BACKGROUND_DISTANCE,
    FRAME,
    SCENE_TEXTURE,
    SIDE,
    border_texture,
    square_around,
)

CATALOG_PARTS_VERSION = 1
"""Bumped whenever the rule below changes (another model id)."""

JOIN_PX = 9
"""Differing pixels this close (at 200 px) belong to one piece: a chain's links, a pendant's
bail."""
MIN_AREA = 0.01
"""A region smaller than this share of the picture is a speck, not a piece."""
MARGIN = 0.15
"""Added on every side of a piece's box, as a share of its longer side."""
MIN_SIDE = 40
"""The smallest crop (at 200 px), so that a tiny piece keeps some context."""
MAX_PARTS = 6
"""More regions than this: a pattern or a scattered display, not a set of pieces."""


def piece_boxes(picture: Image.Image) -> list[tuple[int, int, int, int]]:
    """Boxes (left, upper, right, lower, in the picture's pixels) of its separate pieces; empty
    unless it shows two to `MAX_PARTS` of them on a plain backdrop."""
    rgb = np.asarray(picture.convert("RGB").resize((SIDE, SIDE)), dtype=np.float32)
    if border_texture(rgb.mean(axis=2)) > SCENE_TEXTURE:
        return []
    background = backdrop_colour(border_pixels(rgb, FRAME))
    differs = (np.linalg.norm(rgb - background, axis=2) > BACKGROUND_DISTANCE).astype(np.uint8)
    joined = cv2.dilate(differs, np.ones((JOIN_PX, JOIN_PX), np.uint8))
    _, _, stats, _ = cv2.connectedComponentsWithStats(joined)
    regions = [row for row in stats[1:] if row[cv2.CC_STAT_AREA] >= MIN_AREA * SIDE * SIDE]
    if not 2 <= len(regions) <= MAX_PARTS:
        return []
    width, height = picture.size
    sx, sy = width / SIDE, height / SIDE
    boxes = []
    for left, top, w, h, _ in regions:
        side = max(max(w * sx, h * sy) * (1 + 2 * MARGIN), MIN_SIDE / SIDE * min(width, height))
        boxes.append(square_around((left + w / 2) * sx, (top + h / 2) * sy, side, width, height))
    return boxes


def piece_crops(picture: Image.Image) -> list[Image.Image]:
    """Each separate piece of a set's picture cut out (`piece_boxes`)."""
    return [picture.crop(box) for box in piece_boxes(picture)]

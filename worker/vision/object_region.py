"""The piece's own region in a picture, found without any weights: OpenCV's GrabCut,
started from the middle of the picture as "probably the object" and its border as
background, separates the piece from a plain or staged backdrop; the picture is cut to the
found region's box (a square around it, with a margin). Lifestyle catalog shots (a pendant on
a tray, a ring on a hand) then show less of the scene that would vouch for other pieces
photographed the same way (docs/benchmarks.md, "Jewelry")."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

WORK_SIDE = 300
"""GrabCut runs on the picture reduced to this many px on its longer side (it is slow)."""

MIN_PIXELS = 50
"""A region smaller than this (at WORK_SIDE) is noise: the whole picture is kept."""


def object_mask(picture: Image.Image, inner: float = 0.9) -> np.ndarray | None:
    """Where GrabCut finds the object inside the picture's middle `inner` share: a boolean
    mask at `WORK_SIDE` (its longer side), or None when nothing stands out."""
    rgb = picture.convert("RGB")
    scale = min(1.0, WORK_SIDE / max(rgb.size))
    small = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))))
    pixels = np.ascontiguousarray(np.asarray(small)[:, :, ::-1])  # BGR, as OpenCV wants
    height, width = pixels.shape[:2]
    if min(height, width) < 8:
        return None
    rect = (
        int(width * (1 - inner) / 2),
        int(height * (1 - inner) / 2),
        int(width * inner),
        int(height * inner),
    )
    if _middle_is_backdrop(pixels, rect):
        return None
    mask = np.zeros((height, width), np.uint8)
    cv2.setRNGSeed(0)  # GrabCut's colour models start from a random sample
    cv2.grabCut(pixels, mask, rect, np.zeros((1, 65)), np.zeros((1, 65)), 4, cv2.GC_INIT_WITH_RECT)
    found = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    return found if found.sum() >= MIN_PIXELS else None


def object_region(picture: Image.Image, inner: float = 0.9, margin: float = 0.15) -> Image.Image:
    """`picture` cut to a square around the object GrabCut finds inside its middle `inner`
    share, `margin` wider on each side; the whole picture when nothing stands out."""
    found = object_mask(picture, inner)
    if found is None:
        return picture
    height, width = found.shape
    scale = min(1.0, WORK_SIDE / max(picture.size))
    rows, columns = np.nonzero(found)
    side = max(columns.max() - columns.min(), rows.max() - rows.min()) * (1 + margin)
    centre_x, centre_y = (columns.min() + columns.max()) / 2, (rows.min() + rows.max()) / 2
    box = (
        max(0.0, centre_x - side / 2),
        max(0.0, centre_y - side / 2),
        min(float(width), centre_x + side / 2),
        min(float(height), centre_y + side / 2),
    )
    return picture.crop(tuple(round(v / scale) for v in box))


def _middle_is_backdrop(pixels: np.ndarray, rect: tuple[int, int, int, int]) -> bool:
    """True when the colour of most of the border fills the whole middle but for fewer than
    MIN_PIXELS pixels: nothing stands out there. Such flat pictures (a placeholder image, a
    blank) are where GrabCut's max-flow is pathological: 17 s for a plain 300 x 200 px
    picture, against a few hundredths for a photo, for a region too small to keep."""
    left, top, width, height = rect
    colours = (pixels.astype(np.int32) * (1 << 16, 1 << 8, 1)).sum(axis=2)
    middle = np.zeros(colours.shape, bool)
    middle[top : top + height, left : left + width] = True
    values, counts = np.unique(colours[~middle], return_counts=True)
    backdrop = values[counts.argmax()]
    if counts.max() < 0.5 * counts.sum():
        return False
    return int((colours[middle] != backdrop).sum()) < MIN_PIXELS

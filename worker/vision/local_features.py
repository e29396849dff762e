"""Local features of a picture, and how many of them two pictures share in one geometry.

The global vector of a jewel keeps its overall look; twins (two signet rings with different
engravings, bangles with different patterns) differ in detail it averages away. Local
evidence keeps that detail: RootSIFT descriptors (SIFT, L1-normalised and square-rooted, so
that comparing them by L2 compares their Hellinger kernel) at keypoints of a grey picture,
matched with Lowe's ratio test and kept only where one similarity transform (rotation, scale,
shift: how a jewel moves between two photos of it) explains them (RANSAC). The count of such
inliers is the evidence the detail stage fuses with the global score
(`worker/matching/stages/detail.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

MIN_MATCHES = 5
"""Fewer ratio-test matches than this: no geometry is estimated (no inliers)."""


@dataclass(frozen=True)
class LocalFeatures:
    points: np.ndarray  # (n, 2) float32, pixels of the reduced picture
    descriptors: np.ndarray  # (n, 128) float16 RootSIFT (kept small: references are cached)

    def __len__(self) -> int:
        return len(self.descriptors)

    @property
    def nbytes(self) -> int:
        return self.points.nbytes + self.descriptors.nbytes


def empty_features() -> LocalFeatures:
    return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float16))


def extract_features(picture: Image.Image, side: int, count: int) -> LocalFeatures:
    """The `count` strongest keypoints of `picture` reduced to `side` px on its longer side
    (never enlarged), with their RootSIFT descriptors."""
    grey = picture.convert("L")
    scale = side / max(grey.size)
    if scale < 1:
        size = (max(1, round(grey.width * scale)), max(1, round(grey.height * scale)))
        grey = grey.resize(size, Image.Resampling.BOX)
    keypoints, descriptors = cv2.SIFT_create(nfeatures=count).detectAndCompute(
        np.asarray(grey), None
    )
    if descriptors is None or not len(keypoints):
        return empty_features()
    descriptors = descriptors / (descriptors.sum(axis=1, keepdims=True) + 1e-7)
    return LocalFeatures(
        np.array([k.pt for k in keypoints], dtype=np.float32),
        np.sqrt(descriptors).astype(np.float16),
    )


def geometric_inliers(
    scan: LocalFeatures, reference: LocalFeatures, ratio: float = 0.8, tolerance: float = 8.0
) -> int:
    """How many of the scan's features match the reference's (ratio test) in one similarity
    transform, within `tolerance` px (RANSAC)."""
    if len(scan) < MIN_MATCHES or len(reference) < 2:
        return 0
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(
        scan.descriptors.astype(np.float32), reference.descriptors.astype(np.float32), k=2
    )
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < ratio * p[1].distance]
    if len(good) < MIN_MATCHES:
        return 0
    source = scan.points[[m.queryIdx for m in good]]
    target = reference.points[[m.trainIdx for m in good]]
    _, mask = cv2.estimateAffinePartial2D(
        source, target, method=cv2.RANSAC, ransacReprojThreshold=tolerance
    )
    return int(mask.sum()) if mask is not None else 0

"""The colour term: scored apart from the learned spaces, where a scan shows colour, its
colour similarity to the product's mean colour is added to the re-ranked score, weighted as
in the vectors (`JEWELMATCH_MODEL__COLOUR_WEIGHT`); a scan without colour is ranked by the
image alone."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ColourTerm:
    weight: float = 0.0

    def combine(self, score: float, scan_colour: np.ndarray, product_colour: np.ndarray) -> float:
        if self.weight and scan_colour.any() and product_colour.any():
            return (score + self.weight * float(scan_colour @ product_colour)) / (1 + self.weight)
        return score

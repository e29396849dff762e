"""The prior's confidence, calibrated: the probability that a scan's first product is right,
as a logistic function of the decision's margin, fitted on a folder data set's photos matched
from the catalog image alone (no confirmation: where the prior decides), through the accuracy
benchmark's protocol (worker/tools/bench/accuracy.py). Prints the fitted slope and intercept
(`PRIOR_CALIBRATION` in worker/matching/stages/confidence.py holds grocery `train`'s) and the
calibration error (ECE) of the served confidence and of the fitted one on those photos.

    .venv/bin/python benchmarks/prior_calibration.py ../shared/data/grocery-store [SPLIT]

Figures and the decision: docs/benchmarks.md, "Knowing when it does not know".
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from rich.progress import Progress

from worker.matching.stages.confidence import (
    Confidence,
    evidence,
    expected_calibration_error,
    fit_logistic,
)
from worker.observability.logs import load_settings
from worker.tools.bench.accuracy import AccuracyOptions, run_accuracy


def main(data: Path, split: str) -> None:
    with Progress(transient=True) as progress:
        report = run_accuracy(load_settings(quiet=True), AccuracyOptions(data, split), progress)
    known = report.runs[0].known
    rows = np.array([evidence(o.ranking.evidence) for o in known])
    right = np.array([o.rank == 1 for o in known], dtype=float)
    slope, intercept = fit_logistic(rows[:, 1:], right, np.ones(len(right)))
    # what the stage would serve with this calibration (`Confidence.prior`'s weights)
    fitted = Confidence(np.array([0.0, slope, intercept]), 0.0).of(rows)
    served = np.array([o.ranking.confidence for o in known])
    print(f"{data} ({split}): {len(known)} photos of catalog products, recall@1 {right.mean():.3f}")
    print(f"fitted: slope {slope:.3f}, intercept {intercept:.3f}")
    print(f"ECE of the served confidence {expected_calibration_error(served, right):.3f}")
    print(f"ECE of the fitted one {expected_calibration_error(fitted, right):.3f} (in-sample)")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "train")

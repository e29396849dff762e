"""Confidence: the probability that a scan's first product is the right one, learned from this
deployment's own confirmations, and the `matched` threshold that keeps a target precision.

Labels come from the refit (`labels.py`): every confirmed photo is ranked as if it arrived
now, against the references of the other folds (cross-fitting: no photo is ranked by a metric
fitted on it), with and without its product's other confirmed photos, labelled outcomes (right
or wrong at rank 1); and each ranking is read once more with its product taken out, an outcome
that can only be wrong (a jewel the catalog does not hold). A logistic model of the ranking's
evidence (`evidence`) is fitted on the outcomes of a third of the confirmations; the threshold
is chosen on the other two thirds, the smallest confidence at which
`(wrong answers + 1) / (answers + 1)` stays within `1 - target_precision` and at least
`unknown_refusal` of the jewels outside the catalog are refused (a conformal-style split: the
`+1` is what a guarantee on unseen scans of the same kind costs). In the fit, unknown jewels
weigh `unknown_share` of all scans, the prior odds that a scan shows one. Before enough labels
exist, and while they cannot promise the target, the prior decides: a margin threshold
(`MATCHING__MIN_MARGIN`, chosen on the grocery `train` split), raised from the first few
labels until it refuses the asked share of unknown jewels.

The confidence served is that model's probability rescaled (`_served`) for scans that are
their product's first as often as the confirmations were: the same scans answered, a
probability nearer how often they are right."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np

from shared.contract import MatchStatus
from worker.index.base import draw_hash
from worker.settings import ConfidenceSettings

EVIDENCE = ("score", "margin")
"""What the confidence reads of a ranking: the first product's score and its lead on the
second. (Whether the best image is a confirmed photo, the catalog image's own lead, the product's
photo-to-photo spread and the lead over the next four were tried, on `train`: none separated
right answers or unknown jewels better; docs/benchmarks.md, "Confidence".)"""

PRIOR_CALIBRATION = (17.175, -0.064)
"""Before labels, the confidence is `sigmoid(slope × margin + intercept)`: how often the first
product was right at that margin, fitted on grocery `train` photos matched from the catalog
image alone by the default ensemble (`benchmarks/prior_calibration.py`; docs/benchmarks.md,
"Knowing when it does not know"). Other towers or other photos move it, as they move the
prior's margin; the decision is that margin's alone, and labels replace both."""


def evidence(scores: Sequence[float]) -> np.ndarray:
    """The evidence of one ranking, from its products' scores (best first)."""
    if not len(scores):
        return np.array([-1.0, 0.0])
    runner_up = scores[1] if len(scores) > 1 else -1.0
    return np.array([scores[0], scores[0] - runner_up])


@dataclass(frozen=True)
class Confidence:
    """The decision stage: a logistic model of `evidence` (weights, intercept last) and the
    confidence from which a scan is `matched`."""

    weights: np.ndarray
    threshold: float
    min_score: float = 0.0
    origin: str = "prior"
    report: dict = field(default_factory=dict)
    min_margin: float = 0.0
    """Also asked of a `matched` answer while labels cannot promise the target precision yet
    (origin `labels+margin`): the prior's margin."""

    @classmethod
    def prior(cls, min_margin: float, min_score: float = 0.0) -> Confidence:
        """Before labels: matched when the margin reaches `min_margin` (and the score
        `min_score`); the confidence is the calibration's (`PRIOR_CALIBRATION`), whatever
        the margin asked."""
        slope, intercept = PRIOR_CALIBRATION
        report = {"origin": "prior", "min_margin": min_margin}
        return cls(np.array([0.0, slope, intercept]), 0.0, min_score, "prior", report, min_margin)

    def of(self, features: np.ndarray) -> np.ndarray:
        """Probability of being right, per row of evidence."""
        features = np.atleast_2d(features)
        return _sigmoid(features @ self.weights[:-1] + self.weights[-1])

    def assess(self, scores: Sequence[float]) -> tuple[MatchStatus, float]:
        """The decision on one ranking and its confidence."""
        if not len(scores):
            return MatchStatus.no_confident_match, 0.0
        features = evidence(scores)
        confidence = float(self.of(features)[0])
        trusted = (
            confidence >= self.threshold
            and scores[0] >= self.min_score
            and features[1] >= self.min_margin
        )
        return (MatchStatus.matched if trusted else MatchStatus.no_confident_match), confidence


@dataclass(frozen=True)
class Outcomes:
    """Labelled rankings: evidence rows, whether rank 1 was right, and whether the product
    was in the catalog (False: a simulated unknown jewel, never right)."""

    evidence: np.ndarray
    right: np.ndarray
    known: np.ndarray
    keys: np.ndarray  # a stable key per outcome (the confirmation it comes from)
    product_confirmations: np.ndarray  # how many confirmations its product has, drawn or not
    alone: np.ndarray  # ranked without its product's other confirmed photos (its first day)

    @classmethod
    def none(cls) -> Outcomes:
        empty, nothing = np.zeros(0, dtype=bool), np.zeros(0, dtype=object)
        return cls(np.zeros((0, len(EVIDENCE))), empty, empty, nothing, np.zeros(0), empty)

    @classmethod
    def joined(cls, parts: Sequence[Outcomes]) -> Outcomes:
        """All of `parts`' outcomes, in order."""
        return cls(
            *(np.concatenate([getattr(part, f.name) for part in parts]) for f in fields(cls))
        )

    def __len__(self) -> int:
        return len(self.right)

    def labels(self) -> int:
        """The confirmations these outcomes come from (each gives several: `labels.py`)."""
        return len(set(self.keys[self.known]))

    def subset(self, mask: np.ndarray) -> Outcomes:
        return Outcomes(*(getattr(self, f.name)[mask] for f in fields(self)))

    def first_share(self) -> float:
        """The share of confirmations that were their product's first (products over
        confirmations): how often a scan shows a product with no confirmed photo yet, as far
        as the labels tell. The mean of one over each label's product's confirmations, so
        that labels drawn from many more (`max_labels`) estimate the same share."""
        counts = self.product_confirmations[self.known]
        return float(np.mean(1.0 / counts)) if len(counts) else 1.0

    def weights(self, unknown_share: float, first_share: float = 0.5) -> np.ndarray:
        """Known outcomes weigh 1 on average, those ranked `alone` together `first_share` of
        them (a half: each confirmation gives one of each); unknown ones together
        `unknown_share` of the total."""
        weights = np.ones(len(self))
        if (self.known & self.alone).any() and (self.known & ~self.alone).any():
            weights = np.where(self.alone, 2 * first_share, 2 * (1 - first_share))
        known, unknown = weights[self.known].sum(), int((~self.known).sum())
        if not unknown or not known:
            return weights
        per_unknown = unknown_share / (1 - unknown_share) * known / unknown
        return np.where(self.known, weights, per_unknown)


def fit_confidence(
    outcomes: Outcomes,
    settings: ConfidenceSettings,
    target_precision: float,
    fallback: Confidence,
    draw_seed: int = 0,
) -> Confidence:
    """A learned confidence from labelled outcomes, or `fallback` (the prior) while they come
    from fewer than `min_labels` confirmations. `draw_seed` salts the split of the labels
    (`LEARNING__DRAW_SEED`)."""
    known = outcomes.labels()
    if not settings.enabled or known < settings.min_labels:
        return _prior_refusing_unknowns(outcomes, settings, fallback, known)
    # a third fits the two weights; two thirds choose the threshold, where numbers count
    calibrating = np.array([draw_hash(str(k), draw_seed) % 3 != 0 for k in outcomes.keys])
    fit_part, check_part = outcomes.subset(~calibrating), outcomes.subset(calibrating)
    weights = fit_logistic(
        fit_part.evidence, fit_part.right.astype(float), fit_part.weights(settings.unknown_share)
    )
    first_share = outcomes.first_share()
    weights = _served(weights, fit_part, settings.unknown_share, first_share)
    learned = Confidence(weights, 1.0, fallback.min_score, "labels")
    check_confidence = learned.of(check_part.evidence)
    known_part = check_part.known
    answers = check_confidence[known_part]
    precise, _, _ = conformal_threshold(
        answers, check_part.right[known_part], np.ones(len(answers)), target_precision
    )
    refusing = refusal_threshold(check_confidence[~known_part], settings.unknown_refusal)
    if refusing >= 1.0:
        return _with_report(fallback, labels=known, skipped="too few labels to refuse unknowns")
    threshold, origin, min_margin = max(precise, refusing), "labels", 0.0
    if precise >= 1.0:
        # the target cannot be promised yet: the prior's margin decides, and the labels
        # refuse what looks like a jewel outside the catalog
        threshold, origin = refusing, "labels+margin"
        min_margin = fallback.min_margin
    margins = check_part.evidence[known_part, 1]
    answered = (answers >= threshold) & (margins >= min_margin)
    report = {
        "origin": origin,
        "labels": known,
        "calibration_labels": check_part.labels(),
        "target_precision": target_precision,
        "threshold": round(threshold, 4),
        "min_margin": min_margin,
        "threshold_for_precision": round(precise, 4),
        "threshold_for_unknown_refusal": round(refusing, 4),
        "estimated_precision": round(
            float(check_part.right[known_part][answered].mean()) if answered.any() else np.nan, 4
        ),
        "estimated_coverage": round(float(answered.mean()), 4),
        "estimated_unknown_refused": round(
            float(
                (
                    (check_confidence[~known_part] < threshold)
                    | (check_part.evidence[~known_part, 1] < min_margin)
                ).mean()
            ),
            4,
        ),
        "first_share": round(first_share, 4),
        "calibration_error": round(
            expected_calibration_error(
                answers,
                check_part.right[known_part],
                check_part.weights(settings.unknown_share, first_share)[known_part],
            ),
            4,
        ),
    }
    return Confidence(weights, threshold, fallback.min_score, origin, report, min_margin)


def _served(
    weights: np.ndarray, outcomes: Outcomes, unknown_share: float, first_share: float
) -> np.ndarray:
    """The weights of the served probability. The model is fitted, and the threshold chosen,
    on both rankings of each confirmation weighing alike, which keeps the promise on scans as
    hard as a product's first day, but says too little of scans of products with confirmed
    photos. Its logit is rescaled (Platt) to be calibrated where the rankings `alone` weigh
    `first_share`, as often as the labels show a product's first confirmation. The map is
    increasing: it moves the probability, not the order of scans, so the same are answered."""
    logit = outcomes.evidence @ weights[:-1] + weights[-1]
    scale, shift = fit_logistic(
        logit[:, None], outcomes.right.astype(float), outcomes.weights(unknown_share, first_share)
    )
    if scale <= 0:
        return weights
    return np.r_[scale * weights[:-1], scale * weights[-1] + shift]


def _prior_refusing_unknowns(
    outcomes: Outcomes, settings: ConfidenceSettings, fallback: Confidence, known: int
) -> Confidence:
    """Before `min_labels`: the prior, its margin raised (never lowered), once
    `min_refusal_labels` exist, until it refuses `unknown_refusal` of the simulated unknown
    jewels (a conformal quantile of their margins; nothing is fitted, so all of them count;
    while they are fewer than that share takes, every one of them).
    The prior's margin was chosen on `train` with frozen towers; confirmed photos and towers
    trained on them widen every margin, an unknown jewel's too."""
    too_few = {"labels": known, "skipped": f"fewer than {settings.min_labels}"}
    if not settings.enabled or known < settings.min_refusal_labels:
        return _with_report(fallback, **too_few)
    unknown_margins = outcomes.evidence[~outcomes.known, 1]
    refusing = refusal_threshold(unknown_margins, settings.unknown_refusal)
    if refusing >= 1.0 and len(unknown_margins):
        # fewer than the asked share takes (98 % takes 49): refuse every simulated one
        refusing = float(np.nextafter(unknown_margins.max(), np.inf))
    too_few["margin_for_unknown_refusal"] = round(refusing, 4)
    if refusing <= fallback.min_margin or refusing >= 1.0:
        return _with_report(fallback, **too_few)
    return _with_report(
        Confidence.prior(refusing, fallback.min_score),  # its report: origin, min_margin
        **too_few,
        prior_margin=fallback.min_margin,
        estimated_unknown_refused=round(float((unknown_margins < refusing).mean()), 4),
    )


def _with_report(confidence: Confidence, **extra) -> Confidence:
    return replace(confidence, report={**confidence.report, **extra})


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


def fit_logistic(
    features: np.ndarray, labels: np.ndarray, weights: np.ndarray, l2: float = 1e-3
) -> np.ndarray:
    """Weighted, lightly regularised logistic regression by Newton's method (two features and
    a few thousand rows at most: no library needed); intercept last."""
    x = np.hstack([features, np.ones((len(features), 1))])
    w = np.zeros(x.shape[1])
    penalty = l2 * np.eye(x.shape[1])
    penalty[-1, -1] = 0.0
    for _ in range(100):
        p = _sigmoid(x @ w)
        gradient = x.T @ (weights * (p - labels)) + penalty @ w
        hessian = (x * (weights * p * (1 - p))[:, None]).T @ x + penalty
        step = np.linalg.solve(hessian + 1e-9 * np.eye(len(w)), gradient)
        w = w - step
        if np.abs(step).max() < 1e-9:
            break
    return w


def conformal_threshold(
    confidence: np.ndarray, right: np.ndarray, weights: np.ndarray, target_precision: float
) -> tuple[float, float, float]:
    """The smallest confidence whose answers keep `(wrong + 1) / (answered + 1)` within
    `1 - target_precision` on these held-out outcomes (weighted); with the precision and the
    (weighted) share answered there. 1.0, nothing answered, when no confidence does."""
    order = np.argsort(-confidence, kind="stable")
    c, y, w = confidence[order], right[order].astype(float), weights[order]
    answered = np.cumsum(w)
    wrong = np.cumsum(w * (1 - y))
    bound = (wrong + 1) / (answered + 1)
    last_of_value = np.r_[c[1:] != c[:-1], True]  # a threshold sits between distinct values
    ok = np.flatnonzero((bound <= 1 - target_precision) & last_of_value)
    if not len(ok):
        return 1.0, float("nan"), 0.0
    i = ok[-1]
    return float(c[i]), float(1 - wrong[i] / answered[i]), float(answered[i] / w.sum())


def refusal_threshold(unknown_confidence: np.ndarray, refusal: float) -> float:
    """The smallest confidence that refuses at least `refusal` of jewels outside the catalog
    with a conformal quantile of these held-out ones (the `⌈(n + 1) · refusal⌉`-th smallest
    refused). 1.0 when there are too few to promise it; 0.0 when nothing is asked."""
    if refusal <= 0:
        return 0.0
    ordered = np.sort(unknown_confidence)
    rank = int(np.ceil((len(ordered) + 1) * refusal))
    if rank > len(ordered):
        return 1.0
    return float(np.nextafter(ordered[rank - 1], np.inf))


def expected_calibration_error(
    confidence: np.ndarray, right: np.ndarray, weights: np.ndarray | None = None, bins: int = 10
) -> float:
    """Mean gap between confidence and the share right, over equal-width confidence bins,
    weighted by how many (or how much `weights`) fall in each."""
    if not len(confidence):
        return float("nan")
    weights = np.ones(len(confidence)) if weights is None else weights
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    gap = 0.0
    for b in range(bins):
        inside = which == b
        w = weights[inside]
        if w.sum() > 0:  # a bin of outcomes that weigh nothing says nothing
            said = np.average(confidence[inside], weights=w)
            gap += w.sum() * abs(said - np.average(right[inside], weights=w))
    return float(gap / weights.sum())

"""The gate a fine-tuned version must pass before it is promoted, judged on what it never
trained on (worker/tools/training/export.py): it must rank the latest confirmations of the
products it trained on better than the model in service, rank the products it never trained
on at least as well, and refuse photos of products outside the catalog at least as often."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

CRITERIA = (
    (
        "recall@1_confirmed_products",
        "beat",
        "recall@1 on the latest confirmations",
        "confirmed_queries",
    ),
    ("recall@1_new", "hold", "recall@1 on products it never trained on", "new_queries"),
    (
        "no_confident_match_open_set",
        "hold",
        "photos of products outside the catalog refused",
        "open_set_queries",
    ),
)
"""Per criterion: the summary's figure, the rule, what it says, and how many photos it was
measured on (a reason names them: one photo of 40 is 0.025)."""


@dataclass
class GateDecision:
    passed: bool
    current: dict
    candidate: dict
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "passed": self.passed,
            "reasons": self.reasons,
            "current": _figures(self.current),
            "candidate": _figures(self.candidate),
        }


def _figures(summary: dict) -> dict:
    """The criteria, what they were measured on, and what decided `matched`: the margin asked
    (0 where the learned confidence decides) and the labels it read at judging time, and
    with the judged photos as labels (`judged_as_labels`: as on its first day in service)."""
    keys = [key for key, _, _, _ in CRITERIA]
    keys += ["recall@1", "answered_accuracy", "queries", *(count for *_, count in CRITERIA)]
    metric = summary.get("metric") or {}
    confidence = metric.get("confidence") or {}
    judged = (
        {"judged_as_labels": metric["judged_as_labels"]} if "judged_as_labels" in metric else {}
    )
    return {
        **{key: summary.get(key) for key in keys},
        "confidence_origin": summary.get("confidence_origin"),
        "min_margin": confidence.get("min_margin"),
        "labels": confidence.get("labels"),
        **judged,
    }


def judge(current: dict, candidate: dict) -> GateDecision:
    """`current` and `candidate`: `bench accuracy` run summaries on the same held-out photos."""
    decision = GateDecision(True, current, candidate)
    for key, rule, label, count in CRITERIA:
        old, new = current.get(key), candidate.get(key)
        if not _measured(old) or not _measured(new):
            decision.passed = False
            decision.reasons.append(f"{label}: not measured (no held-out photos)")
        elif (rule == "beat" and not new > old) or (rule == "hold" and new < old):
            decision.passed = False
            decision.reasons.append(
                f"{label}: {new:.3f} against {old:.3f} in service, of {candidate.get(count)} "
                "photos" + (" (must be higher)" if rule == "beat" else " (must not be lower)")
            )
    return decision


def _measured(value: object) -> bool:
    return isinstance(value, int | float) and not math.isnan(value)

"""The colour term's weight (JEWELMATCH_MODEL__COLOUR_WEIGHT) on two data sets, through the
accuracy benchmark's protocol (worker/tools/bench/accuracy.py):

- the generated jewelry catalog of `jewelmatch demo` (32 designs in look-alike families, 4 bag
  photos each): recall@1, and how many photos rank a twin first that differs only in metal
  or only in stone colour;
- a grocery folder data set: recall@1 on SPLIT from the catalog image alone and with 10
  confirmed photos per product, and the colour confusions that issue 17 names.

    .venv/bin/python benchmarks/colour_weights.py 0,0.1,0.25,0.5,1 [DATA] [SPLIT]

Figures and the decision: docs/benchmarks.md, "Colour".
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from rich.progress import Progress

from worker.observability.logs import load_settings
from worker.settings import Settings
from worker.tools.bench.accuracy import AccuracyOptions, AccuracyReport, run_accuracy
from worker.tools.synthetic import Design, write_catalog

COLOUR_CONFUSIONS = {
    ("Pink-Lady", "Floury-Potato"),
    ("Nectarine", "Floury-Potato"),
    ("Red-Grapefruit", "Satsumas"),
    ("Mango", "Granny-Smith"),
    ("Lemon", "Satsumas"),
    ("Lime", "Granny-Smith"),
}
FIELDS = ("kind", "metal", "stone", "cut", "band", "stones")


def with_weight(settings: Settings, weight: float) -> Settings:
    model = settings.model.model_copy(update={"colour_weight": weight})
    return settings.model_copy(update={"model": model})


def accuracy(settings: Settings, options: AccuracyOptions) -> AccuracyReport:
    with Progress(transient=True) as progress:
        return run_accuracy(settings, options, progress)


def twin_of(first: Design, second: Design) -> str | None:
    """The one field two designs differ in, if only one."""
    differing = [f for f in FIELDS if getattr(first, f) != getattr(second, f)]
    return differing[0] if len(differing) == 1 else None


def main() -> None:
    weights = [float(w) for w in sys.argv[1].split(",")]
    data = Path(sys.argv[2] if len(sys.argv) > 2 else "../shared/data/grocery-store")
    split = sys.argv[3] if len(sys.argv) > 3 else "val"
    settings = load_settings(quiet=True)
    with tempfile.TemporaryDirectory(prefix="jewelmatch-colour-") as tmp:
        designs = {d.product_id: d for d in write_catalog(Path(tmp), 32, 4)}
        for weight in weights:
            report = accuracy(
                with_weight(settings, weight),
                AccuracyOptions(data=Path(tmp), open_set=0, confirmed=(0,)),
            )
            run = report.runs[0]
            twins = {"metal": 0, "stone": 0}
            for outcome in run.known:
                first = outcome.ranked[0] if outcome.ranked else outcome.query.product_id
                field = twin_of(designs[outcome.query.product_id], designs[first])
                if first != outcome.query.product_id and field in twins:
                    twins[field] += 1
            print(
                f"generated catalog, weight {weight}: R@1 {run.summary()['recall@1']:.3f}, "
                f"metal twin first {twins['metal']}, stone-colour twin first {twins['stone']} "
                f"(of {len(run.known)} photos)",
                flush=True,
            )
    for weight in weights:
        report = accuracy(
            with_weight(settings, weight),
            AccuracyOptions(data=data, split=split, confirmed=(0, 10)),
        )
        cells = []
        for run in report.runs:
            confusions = sum(
                1
                for o in run.known
                if o.ranked and (o.query.product_id, o.ranked[0]) in COLOUR_CONFUSIONS
            )
            cells.append(
                f"{run.confirmed_per_product} confirmed: R@1 {run.summary()['recall@1']:.3f}, "
                f"colour confusions {confusions}"
            )
        print(f"{data.name} {split}, weight {weight}: " + "; ".join(cells), flush=True)


if __name__ == "__main__":
    main()

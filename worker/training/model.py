"""Fine-tuning every image tower of the configured model (each member of an ensemble on its
own), into open_clip folders that the embedder loads as `local-dir:` members."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from worker.settings import ModelSettings, TrainingSettings
from worker.training.fine_tune import (
    LabelledPicture,
    TowerReport,
    fine_tune_tower,
    training_digest,
)
from worker.training.scene_swap import PieceMasks
from worker.vision.embedder import ENSEMBLE_SEPARATOR, ensemble_members, member_id
from worker.vision.weights import resolve_model_name

Progress = Callable[[str, str, int, int], None]
"""`(tower, stage, done, total)`: a progress bar per tower and stage."""


@dataclass
class TrainedModel:
    """The fine-tuned towers: `name` is the model name to configure (local-dir: members)."""

    name: str
    folders: list[Path]
    version: str = ""
    towers: dict[str, TowerReport] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {
            "version": self.version,
            "name": self.name,
            "seconds": round(self.seconds, 1),
            "towers": {member: report.to_json() for member, report in self.towers.items()},
        }


def member_folder(name: str, model: ModelSettings) -> Path:
    """The open_clip folder a member's weights are read from (a built-in model's is prepared
    on first use)."""
    resolved = resolve_model_name(name, model.cache_dir)
    if not resolved.startswith("local-dir:"):
        raise ValueError(
            f"model {name!r} is not an open_clip folder: only built-in and local-dir: "
            "models can be fine-tuned"
        )
    return Path(resolved.removeprefix("local-dir:"))


def fine_tune_model(
    model: ModelSettings,
    pictures: Sequence[LabelledPicture],
    training: TrainingSettings,
    out_dir: Path,
    version: str,
    on_progress: Progress = lambda tower, stage, done, total: None,
) -> TrainedModel:
    """Fine-tune each member of `model` on `pictures`; `out_dir/<member>-<version>` holds each
    trained folder (its name makes the model id: another version, another index), and
    `out_dir/work/<member>` its checkpoint (a run started again resumes there)."""
    started = time.perf_counter()
    trained = TrainedModel(name="", folders=[], version=version)
    masks = PieceMasks()  # found once, for every tower
    for name in ensemble_members(model.name):
        member = member_id(name)
        target = out_dir / f"{member}-{version}"
        report = fine_tune_tower(
            member_folder(name, model),
            pictures,
            training,
            target,
            out_dir / "work" / member,
            lambda stage, done, total, member=member: on_progress(member, stage, done, total),
            threads=model.threads,
            masks=masks,
        )
        trained.towers[member] = report
        trained.folders.append(target)
    trained.name = ENSEMBLE_SEPARATOR.join(f"local-dir:{folder}" for folder in trained.folders)
    trained.seconds = time.perf_counter() - started
    return trained


def run_version(
    model: ModelSettings, pictures: Sequence[LabelledPicture], training: TrainingSettings
) -> str:
    """A short id of a run's inputs (model, pictures, settings): the same inputs, the same
    version, whatever machine trains it. (An input scale of 1 is left out: versions made
    before the setting keep their ids.)"""
    served_natively = frozenset({"input_scale"}) if training.input_scale == 1.0 else frozenset()
    return "ft" + training_digest(model.name.encode(), pictures, training, served_natively)[:8]

"""`jewelmatch train`: export the confirmed matches (export.py), fine-tune the configured
model's towers on the training share and judge the result against the model in service on the
held-out shares with `bench accuracy`'s protocol (gate.py); the run is kept as a model version
with its card, whether it passed or not, and only a version that passed can be promoted.

Each held-out product that is not confirmed in the judging is judged in both roles, brand-new
(its catalog image only) and outside the catalog, in two judging runs with the roles swapped:
the gate's two "hold" criteria then each rest on all of those products, not half of them."""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from rich.progress import Progress

from worker.index import VectorIndex
from worker.observability.logs import get_logger
from worker.pipeline.storage import ImageStore
from worker.settings import ModelRuntime, Settings
from worker.tools.bench.accuracy import (
    BENCH_BUCKET,
    AccuracyOptions,
    AccuracyReport,
    AccuracyRun,
    run_accuracy,
)
from worker.tools.bench.loaded_models import LoadedModels
from worker.tools.folders import read_folder_dataset
from worker.tools.training.export import export_confirmations
from worker.training.gate import GateDecision, judge
from worker.vision.versions import (
    BASE,
    ModelVersion,
    ModelVersions,
    read_trained_on,
    write_trained_on,
)

log = get_logger(__name__)


@dataclass(frozen=True)
class TrainOptions:
    recent_share: float = 0.2
    product_share: float = 0.2
    open_set: int = 4


class NothingToTrainOn(ValueError):
    pass


def train_version(
    settings: Settings,
    index: VectorIndex,
    store: ImageStore,
    options: TrainOptions,
    progress: Progress,
) -> tuple[ModelVersion, GateDecision]:
    started = time.time()
    versions = ModelVersions(settings.model.cache_dir)
    seed = settings.training.seed
    with tempfile.TemporaryDirectory(prefix="jewelmatch-train-") as tmp:
        data = Path(tmp) / "data"
        task = progress.add_task("reading the index", total=index.count())
        exported = export_confirmations(
            index,
            store,
            settings.images,
            data,
            options.recent_share,
            options.product_share,
            seed,
            lambda done: progress.advance(task, done),
            outside=options.open_set,
            fetch_threads=settings.s3.fetch_threads,
        )
        log.info("training.exported", **exported.to_json())
        if not exported.train_photos:
            raise NothingToTrainOn("no confirmed matches to train on")
        dataset = read_folder_dataset(data)
        most = max(sum(q.split == "train" for q in p.queries) for p in dataset.products)
        judged = AccuracyOptions(
            data=data,
            split="val",
            confirmed=(most,),
            left_out=frozenset(exported.outside_products),  # in place of an `open_set` draw
            seed=seed,
            unlabeled_scans_per_product=most,
            new_products=frozenset(exported.new_products),
            never_train=exported.kept_products,
            photo_uris=exported.uris,  # the version in service trained on some of them
            judged_as_labels=True,  # each version decided as on its first day in service
        )
        # a stable place: a run stopped half-way resumes from its checkpoints
        staging = versions.root / ".training"
        in_service, trained, decision = _judge(settings, judged, staging, progress)
    version = trained["version"]
    folder = versions.folder(version)
    towers = [Path(name.removeprefix("local-dir:")).name for name in trained["name"].split("+")]
    trained_on = _move_towers(staging, folder, towers, exported.uris)
    exports = _export_towers(settings, [folder / tower for tower in towers])
    card = {
        "version": version,
        "base_model": settings.model.name,
        "in_service": in_service,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "seed": seed,
        "training_settings": settings.training.model_dump(mode="json"),
        "data": {
            **exported.to_json(),
            "confirmed_per_product_at_most": most,
            "photos_trained_on": len(trained_on),
        },
        "towers": towers,
        "exports": [str(path.relative_to(folder)) for path in exports],
        "training": trained,
        "gate": decision.to_json(),
    }
    model_version = versions.write_card(version, card)
    log.info("training.gate", version=version, **decision.to_json())
    return model_version, decision


def _judge(
    settings: Settings, judged: AccuracyOptions, staging: Path, progress: Progress
) -> tuple[str, dict, GateDecision]:
    """Judge the model in service, fine-tune the candidate (its towers under `staging`) and
    judge it, then both again with the outside and brand-new products' roles swapped. Returns
    the model id in service, the training's report and the gate's decision."""
    models = LoadedModels()  # a version's second run embeds only what its first did not
    in_service = run_accuracy(settings, judged, progress, models)
    candidate = run_accuracy(
        _base_weights(settings),
        replace(judged, fine_tune=True, fine_tune_dir=staging),
        progress,
        models,
    )
    trained = candidate.fine_tune or {}
    swapped = replace(judged, left_out=judged.new_products, new_products=judged.left_out)
    candidate_settings = _trained(settings, trained["name"])
    decision = judge(
        _in_both_roles(in_service, run_accuracy(settings, swapped, progress, models)),
        _in_both_roles(candidate, run_accuracy(candidate_settings, swapped, progress, models)),
    )
    return in_service.model, trained, decision


def _in_both_roles(judged: AccuracyReport, swapped: AccuracyReport) -> dict:
    """The judging run's figures, its brand-new and outside products judged over both runs
    (the swapped run judges each in the other role; the confirmed products' photos it ranks
    again are not counted twice)."""
    first, other = judged.runs[-1], swapped.runs[-1]
    new_there = [o for o in other.known if o.query.product_id in other.new_products]
    both: AccuracyRun = replace(
        first,
        known=first.known + new_there,
        unknown=first.unknown + other.unknown,
        new_products=first.new_products | other.new_products,
    )
    return both.summary()


def _move_towers(
    staging: Path, folder: Path, towers: list[str], exported: dict[str, str]
) -> list[str]:
    """Move the trained towers from `staging` into the version's folder, each listing the
    photos it trained on by their URIs in the index; the checkpoints go. Returns that list."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    # every tower trained on the same photos, known to the benchmark by their exported place
    trained_on = _in_the_index(read_trained_on(staging / towers[0]), exported)
    for tower in towers:
        (staging / tower).rename(folder / tower)
        write_trained_on(folder / tower, trained_on)
    shutil.rmtree(staging)  # the checkpoints: the run is over
    return trained_on


def _in_the_index(bench_uris: frozenset[str], exported: dict[str, str]) -> list[str]:
    """The photos the towers trained on, by their URIs in the index (the benchmark that
    trained them knew them by their place in the exported data set)."""
    prefix = f"s3://{BENCH_BUCKET}/"
    return sorted(exported[uri.removeprefix(prefix)] for uri in bench_uris)


def _export_towers(settings: Settings, folders: list[Path]) -> list[Path]:
    """The towers' ONNX files, made now in their folders: workers mount versions read-only
    and load them from there (the judging run has usually made them already)."""
    from worker.vision.embedder import Embedder

    runtime = settings.model.runtime
    name = "+".join(f"local-dir:{folder}" for folder in folders)
    Embedder(
        settings.model.model_copy(
            update={
                "name": name,
                "version": BASE,
                "runtime": ModelRuntime.openvino if runtime is ModelRuntime.torch else runtime,
            }
        )
    )
    return sorted(path for folder in folders for path in (folder / "onnx").glob("*.onnx"))


def _trained(settings: Settings, name: str) -> Settings:
    """The candidate as trained (its towers' folders: `name`), for the swapped judging run:
    `_base_weights` named as `run_accuracy` names the model it fine-tuned, so that the two
    runs share one loaded model."""
    base = _base_weights(settings)
    return base.model_copy(update={"model": base.model.model_copy(update={"name": name})})


def _base_weights(settings: Settings) -> Settings:
    """A candidate is trained from the configured weights, never from an earlier version."""
    return settings.model_copy(
        update={"model": settings.model.model_copy(update={"version": BASE})}
    )

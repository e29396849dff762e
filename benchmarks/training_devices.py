"""`jewelmatch train` on the CPU and on a GPU: whether the two agree, whether a GPU run is
deterministic from its seed as a CPU run is, what each costs, and what training more stages
(only worth it on a GPU) buys. The built-in Lite0 (real ImageNet weights) on generated
look-alike products: a catalog render and bag photos of each, some trained on, some held out.

    .venv/bin/python benchmarks/training_devices.py [--products 40] [--photos 10]
        [--stages 2,4,7] [--devices cpu,cuda] [--out FILE]

Prints one JSON object: per device and trained stages, the feature cache's and the epochs'
seconds, the loss, recall@1 of the held-out photos against the catalog renders (before and
after training), whether two runs from one seed wrote the same weights, and how closely the
CPU- and GPU-trained towers' vectors agree (cosine). More stages than the default two are
trained on the GPU alone. Figures: docs/benchmarks.md, "Training on a GPU".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _pictures(products: int, photos: int, held_out: int) -> tuple[list, list, list]:
    """Catalog renders, training photos and held-out photos of generated look-alikes."""
    from worker.tools.synthetic import catalog_designs, photograph, render
    from worker.training.fine_tune import LabelledPicture

    rng = random.Random(3)
    catalog, trained, unseen = [], [], []
    for design in catalog_designs(products, seed=11):
        picture = render(design, 224)
        pid = design.product_id
        catalog.append(LabelledPicture(pid, f"{pid}/catalog", lambda c=picture: c, True))
        for n in range(photos + held_out):
            photo = photograph(picture, rng, 224)
            labelled = LabelledPicture(pid, f"{pid}/{n}", lambda p=photo: p)
            (trained if n < photos else unseen).append(labelled)
    return catalog, trained, unseen


def _vectors(folder: Path, device: str, pictures: list, cache: Path):
    """Unit vectors of `pictures` (catalog images as catalog, photos as scans), in order."""
    import numpy as np

    from worker.settings import ModelRuntime, ModelSettings
    from worker.vectors import ImageKind
    from worker.vision.embedder import Embedder

    settings = ModelSettings(
        name=f"local-dir:{folder}",
        cache_dir=cache,
        runtime=ModelRuntime.torch,
        device=device,
        colour_weight=0.0,
        threads=os.cpu_count() or 2,
    )
    embedder = Embedder(settings)
    catalog = [p.load() for p in pictures if p.is_catalog]
    photos = [p.load() for p in pictures if not p.is_catalog]
    parts = []
    if catalog:
        parts.append(embedder.embed(catalog, ImageKind.catalog))
    if photos:
        parts.append(embedder.embed(photos, ImageKind.scan))
    return np.concatenate(parts)


def _recall(folder: Path, catalog: list, unseen: list, cache: Path) -> float:
    import numpy as np

    vectors = _vectors(folder, "cpu", catalog + unseen, cache)  # one model load
    references, queries = vectors[: len(catalog)], vectors[len(catalog) :]
    nearest = np.argmax(queries @ references.T, axis=1)
    right = [catalog[i].product_id == p.product_id for i, p in zip(nearest, unseen, strict=True)]
    return round(float(np.mean(right)), 3)


def _digest(folder: Path) -> str:
    from worker.vision.weights import WEIGHTS_FILE

    return hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()[:16]


def _agreement(first: tuple[Path, str], second: tuple[Path, str], pictures: list, cache: Path):
    """Cosines between the vectors of (folder, device) `first` and `second`: worst, median."""
    import numpy as np

    cosine = np.sum(_vectors(*first, pictures, cache) * _vectors(*second, pictures, cache), axis=1)
    return {"min": round(float(cosine.min()), 6), "median": round(float(np.median(cosine)), 6)}


def _train(source: Path, pictures: list, device: str, stages: int, work: Path, name: str):
    from worker.settings import TrainingSettings
    from worker.training.fine_tune import fine_tune_tower

    settings = TrainingSettings(device=device, trained_stages=stages, epochs=4)
    target = work / name
    started = time.perf_counter()
    report = fine_tune_tower(
        source, pictures, settings, target, work / f"{name}-work", threads=os.cpu_count() or 2
    )
    return target, {
        "wall_seconds": round(time.perf_counter() - started, 1),
        **report.to_json(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--products", type=int, default=40)
    parser.add_argument("--photos", type=int, default=10)
    parser.add_argument("--held-out", type=int, default=3)
    parser.add_argument("--stages", default="2")
    parser.add_argument("--devices", help="comma-separated; default: cpu, and cuda if found")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import torch

    from worker.vision.weights import prepare_builtin

    work = Path(tempfile.mkdtemp(prefix="training-devices-"))
    cache = work / "cache"
    lite0 = prepare_builtin("efficientnet-lite0", cache)
    catalog, trained, unseen = _pictures(args.products, args.photos, args.held_out)
    found = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    devices = args.devices.split(",") if args.devices else found
    result: dict = {
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_threads": os.cpu_count(),
        "pictures": {"catalog": len(catalog), "trained": len(trained), "held_out": len(unseen)},
        "recall_at_1_untrained": _recall(lite0, catalog, unseen, cache),
        "untrained_cpu_vs_gpu_embedder": (
            _agreement((lite0, "cpu"), (lite0, "cuda"), catalog + unseen, cache)
            if "cuda" in devices
            else None
        ),
        "runs": [],
    }
    for stages in [int(s) for s in args.stages.split(",")]:
        folders = {}
        for device in devices if stages == 2 else devices[-1:]:
            folder, run = _train(
                lite0, catalog + trained, device, stages, work, f"{device}-{stages}"
            )
            again, _ = _train(lite0, catalog + trained, device, stages, work, f"{device}-{stages}b")
            run["same_weights_twice"] = _digest(folder) == _digest(again)
            run["recall_at_1"] = _recall(folder, catalog, unseen, cache)
            folders[device] = folder
            result["runs"].append({"device": device, "stages": stages, **run})
            print(json.dumps(result["runs"][-1]), file=sys.stderr, flush=True)
        if len(folders) == 2:
            result[f"cpu_vs_gpu_trained_{stages}_stages"] = _agreement(
                (folders["cpu"], "cpu"), (folders["cuda"], "cpu"), catalog + unseen, cache
            )
    shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

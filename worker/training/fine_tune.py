"""Fine-tuning an image tower on confirmed matches: each confirmed bag photo is a labelled example
of its product, and the product's catalog images are its anchors.

The loss is a normalised softmax over the products, which needs no pairs or triplets and holds
with one to ten photos per product. Each product is represented by its catalog images as the
tower being trained embeds them (`TRAINING__ANCHORS=catalog`: the photos are pulled to the very
references a scan is ranked against), or by one learned vector started from them (`proxies`,
ahead for a catalog trained on its own images alone), each less its domain's mean
(`TRAINING__DOMAIN_CENTRED`), as the ranking compares them. Only the tower's last stages are
trained: the frozen front is run once per augmented view of each picture and cached, so an
epoch costs the last stages' forward and backward passes alone (minutes on two CPU cores for a
few thousand photos; on a GPU, when torch finds one, more stages can be trained).

A run is deterministic from its seed (the views of a picture depend on the seed and the
picture's position, each epoch's order on the seed and the epoch), and it resumes from the
checkpoint of its last finished epoch.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image, ImageOps
from safetensors.torch import save_file

from worker.files import written_whole
from worker.observability.logs import get_logger
from worker.settings import TrainingSettings
from worker.training import CUBLAS_DETERMINISTIC
from worker.training.scene_swap import PieceMasks, SceneSwap
from worker.training.towers import SplitTower
from worker.vision.weights import CONFIG_FILE, WEIGHTS_FILE

log = get_logger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass(frozen=True)
class LabelledPicture:
    """One training picture: a catalog image (an anchor) or a confirmed bag photo."""

    product_id: str
    key: str
    """Stable name of the picture (its URI): part of the run's fingerprint."""
    load: Callable[[], Image.Image]
    is_catalog: bool = False


@dataclass
class TowerReport:
    """What one tower's run did (a model card keeps it)."""

    pictures: int
    products: int
    views: int
    epochs: int
    stages: int
    device: str
    losses: list[float] = field(default_factory=list)
    cache_seconds: float = 0.0
    train_seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "pictures": self.pictures,
            "products": self.products,
            "views_per_picture": self.views,
            "epochs": self.epochs,
            "trained_stages": self.stages,
            "device": self.device,
            "loss_per_epoch": [round(loss, 4) for loss in self.losses],
            "feature_cache_seconds": round(self.cache_seconds, 1),
            "training_seconds": round(self.train_seconds, 1),
            "pictures_skipped": len(self.skipped),
        }


def training_device(settings: TrainingSettings) -> torch.device:
    """The configured device, else a GPU when torch finds one, else the CPU."""
    if settings.device:
        return torch.device(settings.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextmanager
def deterministic_kernels(device: torch.device) -> Iterator[None]:
    """On a GPU, torch's deterministic kernels while a run lasts (then the settings before):
    without them, a GPU run that trains more than the last two stages writes other weights
    each time (an H200, `benchmarks/training_devices.py`). The CPU's kernels are deterministic
    already."""
    if device.type != "cuda":
        yield
        return
    for name, value in CUBLAS_DETERMINISTIC.items():
        os.environ.setdefault(name, value)
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


PHOTO_CROP = 0.5
"""Smallest random crop of a bag photo among its training views, as the scan's zoomed crops."""


def training_views(
    picture: Image.Image,
    count: int,
    rng: random.Random,
    smallest: float,
    scene_swap: float = 0.0,
    swapped: Callable[[random.Random], Image.Image | None] | None = None,
) -> list[Image.Image]:
    """The picture whole, then `count - 1` random square crops of at least `smallest` of its
    shorter side, each mirrored at random, and each cut with chance `scene_swap` from
    `swapped(rng)` (the piece on another scene: scene_swap.py) instead of the picture. No
    colour change: colour tells twins apart."""
    width, height = picture.size
    shorter = min(width, height)
    views = [picture]
    for _ in range(count - 1):
        source = picture
        if scene_swap and swapped is not None and rng.random() < scene_swap:
            source = swapped(rng) or picture
        side = max(1, round(shorter * rng.uniform(smallest, 1.0)))
        left = rng.randint(0, width - side)
        top = rng.randint(0, height - side)
        view = source.crop((left, top, left + side, top + side))
        views.append(ImageOps.mirror(view) if rng.random() < 0.5 else view)
    return views


def training_digest(
    start: bytes,
    pictures: Sequence[LabelledPicture],
    settings: TrainingSettings,
    exclude: frozenset[str] = frozenset(),
) -> str:
    """A hash of what a training run depends on: `start` (its starting point), the settings
    but `exclude`, and the pictures."""
    digest = hashlib.sha256(start)
    chosen = settings.model_dump(mode="json", exclude=set(exclude))
    digest.update(json.dumps(chosen, sort_keys=True).encode())
    for picture in pictures:
        digest.update(f"{picture.product_id}\x1f{picture.key}\x1f{picture.is_catalog}\n".encode())
    return digest.hexdigest()


def scaled_size(size: int | list[int], scale: float) -> int | list[int]:
    """An input size (pixels, or height and width) times `scale`, in steps of 8 px."""
    if isinstance(size, int):
        return max(8, round(size * scale / 8) * 8)
    return [scaled_size(side, scale) for side in size]


def run_fingerprint(
    source: Path, pictures: Sequence[LabelledPicture], settings: TrainingSettings
) -> str:
    """What a checkpoint belongs to: the starting weights, the pictures and the settings but
    the number of epochs (a longer run goes on from a shorter one's checkpoint) and the input
    size the version is served at (training does not read it)."""
    weights = (source / WEIGHTS_FILE).read_bytes()
    return training_digest(weights, pictures, settings, frozenset({"epochs", "input_scale"}))[:16]


class _Checkpoint:
    """The state after the last finished epoch, written whole or not at all."""

    def __init__(self, directory: Path, fingerprint: str) -> None:
        self.path = directory / CHECKPOINT_FILE
        self.fingerprint = fingerprint

    def load(self) -> dict | None:
        """The saved state of this run, or None: none saved, another run's, or a file that
        is not a checkpoint (read as weights only: a pickle that would run code is refused,
        and the run starts over rather than failing every time)."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
            reason = f"not a checkpoint ({type(error).__name__})"
            log.warning("training.checkpoint_ignored", path=str(self.path), reason=reason)
            return None
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            log.info("training.checkpoint_ignored", path=str(self.path), reason="another run")
            return None
        return state

    def save(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with written_whole(self.path) as partial:
            torch.save({**state, "fingerprint": self.fingerprint}, partial)


def fine_tune_tower(
    source: Path,
    pictures: Sequence[LabelledPicture],
    settings: TrainingSettings,
    target: Path,
    work_dir: Path,
    on_progress: Callable[[str, int, int], None] = lambda stage, done, total: None,
    threads: int = 2,
    masks: PieceMasks | None = None,
) -> TowerReport:
    """Fine-tune the open_clip folder `source` on `pictures`; write the result, an open_clip
    folder with the same configuration, to `target`. `on_progress(stage, done, total)`
    reports the feature cache and the epochs (a progress bar shows them); `masks` keeps the
    pieces GrabCut found for `TRAINING__SCENE_SWAP` (the towers of one run share them)."""
    torch.set_num_threads(threads)
    device = training_device(settings)
    with deterministic_kernels(device):
        return _fine_tune(source, pictures, settings, target, work_dir, device, on_progress, masks)


def _fine_tune(
    source: Path,
    pictures: Sequence[LabelledPicture],
    settings: TrainingSettings,
    target: Path,
    work_dir: Path,
    device: torch.device,
    on_progress: Callable[[str, int, int], None],
    masks: PieceMasks | None,
) -> TowerReport:
    """fine_tune_tower's run on `device`."""
    torch.manual_seed(settings.seed)
    model = open_clip.create_model(f"local-dir:{source}", device="cpu")
    split = SplitTower(model, settings.trained_stages)
    split.freeze()
    transform = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    model.to(device)

    cache_started = time.perf_counter()
    masks = masks or PieceMasks()
    cache = _cache_front(split, transform, pictures, settings, masks, device, on_progress)
    features, labels = cache.features, cache.labels
    report = TowerReport(
        len(labels),
        len(cache.products),
        settings.views,
        settings.epochs,
        split.stages,
        str(device),
        skipped=cache.skipped,
    )
    report.cache_seconds = time.perf_counter() - cache_started
    if not labels:
        raise ValueError("no picture could be read: nothing to train on")

    frozen = _embed_views(split, features, device)
    offsets = _domain_offsets(frozen, cache, device) if settings.domain_centred else None
    proxies = torch.nn.Parameter(_initial_proxies(frozen, cache, device, offsets))
    groups = [{"params": split.trainable_parameters(), "lr": settings.learning_rate}]
    learned = settings.anchors == "proxies"  # else the catalog images themselves: none learned
    if learned:
        groups.append(
            {"params": [proxies], "lr": settings.proxy_learning_rate, "weight_decay": 0.0}
        )
    targets = (
        (lambda step: proxies)
        if learned
        else _CatalogAnchors(split, features, cache, device, settings.batch_size, offsets).at_step
    )
    optimizer = torch.optim.AdamW(groups, weight_decay=settings.weight_decay)
    checkpoint = _Checkpoint(work_dir, run_fingerprint(source, pictures, settings))
    start_epoch = 0
    if (state := checkpoint.load()) is not None:
        model.load_state_dict(state["model"])
        proxies.data.copy_(state["proxies"])
        optimizer.load_state_dict(state["optimizer"])
        report.losses = list(state["losses"])
        start_epoch = state["epoch"]
        log.info("training.resumed", epoch=start_epoch, path=str(checkpoint.path))

    label_tensor, cached = torch.tensor(labels, device=device), _Cached(features, frozen, offsets)
    train_started = time.perf_counter()
    for epoch in range(start_epoch, settings.epochs):
        loss = _train_epoch(split, targets, optimizer, cached, label_tensor, settings, epoch)
        report.losses.append(loss)
        checkpoint.save(
            {
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "proxies": proxies.detach().cpu(),
                "optimizer": optimizer.state_dict(),
                "losses": report.losses,
            }
        )
        log.info("training.epoch", epoch=epoch + 1, loss=round(loss, 4))
        on_progress("epochs", epoch + 1, settings.epochs)
    report.train_seconds = time.perf_counter() - train_started
    _save_folder(model, source, target, settings.input_scale)
    return report


@dataclass(frozen=True)
class _Cached:
    """The front's output and the untrained tower's unit embedding of every view (pictures ×
    views × ...), and with `TRAINING__DOMAIN_CENTRED` each picture's domain mean."""

    features: torch.Tensor
    frozen: torch.Tensor
    offsets: torch.Tensor | None = None


def _train_epoch(
    split: SplitTower,
    targets: Callable[[int], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    cached: _Cached,
    labels: torch.Tensor,
    settings: TrainingSettings,
    epoch: int,
) -> float:
    """One pass in an order (and with views) drawn from the seed and the epoch; the mean loss.
    `targets(step)`: each product's vector at the epoch's step (proxies, or catalog anchors)."""
    features, frozen, offsets = cached.features, cached.frozen, cached.offsets
    generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + epoch)
    order = torch.randperm(len(labels), generator=generator)
    chosen_view = torch.randint(settings.views, (len(labels),), generator=generator)
    device = labels.device
    total, batches = 0.0, 0
    for start in range(0, len(order), settings.batch_size):
        batch = order[start : start + settings.batch_size]
        inputs = features[batch, chosen_view[batch]].to(device, torch.float32)
        embedded = F.normalize(split.back(inputs), dim=1)
        own_offsets = offsets[batch.to(device)] if offsets is not None else None
        compared = _less_domain_mean(embedded, own_offsets)  # as the ranking compares
        logits = compared @ F.normalize(targets(batches), dim=1).T / settings.temperature
        loss = F.cross_entropy(logits, labels[batch.to(device)])
        if settings.keep_weight:  # stay near the untrained embedding: unknown products too
            before = frozen[batch, chosen_view[batch]].to(device, torch.float32)
            loss = loss + settings.keep_weight * (1 - (embedded * before).sum(dim=1)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total, batches = total + loss.item(), batches + 1
    return total / max(1, batches)


@dataclass
class _FeatureCache:
    """The frozen front's output for every view of every readable picture (float16, on the
    CPU, shaped pictures × views × C × H × W), with each picture's product number."""

    features: torch.Tensor
    labels: list[int]
    is_catalog: list[bool]
    products: list[str]
    skipped: list[str]


def _cache_front(
    split: SplitTower,
    transform: Callable,
    pictures: Sequence[LabelledPicture],
    settings: TrainingSettings,
    masks: PieceMasks,
    device: torch.device,
    on_progress: Callable[[str, int, int], None],
) -> _FeatureCache:
    products = sorted({picture.product_id for picture in pictures})
    number = {product_id: i for i, product_id in enumerate(products)}
    cache = _FeatureCache(torch.zeros(0), [], [], products, [])
    rows = []
    backdrops = [(p.product_id, p.load) for p in pictures if p.is_catalog]
    for position, picture in enumerate(pictures):
        try:
            image = picture.load().convert("RGB")
        except Exception as error:  # one unreadable picture must not stop a run
            cache.skipped.append(picture.key)
            log.warning("training.picture_skipped", key=picture.key, reason=str(error))
            continue
        rng = random.Random(f"{settings.seed}:{position}:{picture.key}")
        if picture.is_catalog:
            swap = SceneSwap(image, picture.key, picture.product_id, backdrops, masks)
            views = training_views(
                image, settings.views, rng, settings.catalog_crop, settings.scene_swap, swap
            )
        else:
            views = training_views(image, settings.views, rng, PHOTO_CROP)
        pixels = torch.stack([transform(view) for view in views]).to(device)
        with torch.inference_mode():
            rows.append(split.front(pixels).to("cpu", torch.float16))
        cache.labels.append(number[picture.product_id])
        cache.is_catalog.append(picture.is_catalog)
        on_progress("pictures", position + 1, len(pictures))
    if rows:
        cache.features = torch.stack(rows)
    return cache


class _CatalogAnchors:
    """`TRAINING__ANCHORS=catalog`: each product's target is the sum of its catalog images'
    whole views (its photos' where it has none) as the tower embeds them, without a gradient
    (each less its domain's mean, given `offsets`): the photos are pulled to the very
    references a scan is ranked against. Embedded again every `refresh` steps (from each
    epoch's first), so that a large catalog costs about one batch's forward pass per step, and
    a resumed run draws what an unbroken one does."""

    def __init__(
        self,
        split: SplitTower,
        features: torch.Tensor,
        cache: _FeatureCache,
        device: torch.device,
        batch: int,
        offsets: torch.Tensor | None = None,
    ):
        rows, owners = [], []
        for product, chosen in enumerate(_anchor_pictures(cache)):
            rows.extend(chosen.tolist())
            owners.extend([product] * len(chosen))
        self.inputs = features[torch.tensor(rows), 0]
        self.offsets = offsets[torch.tensor(rows, device=device)] if offsets is not None else None
        self.owners = torch.tensor(owners, device=device)
        self.products = len(cache.products)
        self.split = split
        self.device = device
        self.refresh = max(1, -(-len(rows) // batch))
        self.embedded: torch.Tensor | None = None

    def at_step(self, step: int) -> torch.Tensor:
        if self.embedded is None or step % self.refresh == 0:
            embedded = _unit_embeddings(self.split, self.inputs, self.device)
            embedded = _less_domain_mean(embedded, self.offsets)
            sums = torch.zeros(self.products, embedded.shape[1], device=self.device)
            self.embedded = sums.index_add_(0, self.owners, embedded)
        return self.embedded


def _embed_views(split: SplitTower, features: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The untrained tower's unit embedding of every cached view (pictures × views × D)."""
    pictures, views = features.shape[:2]
    flat = features.flatten(0, 1)
    return _unit_embeddings(split, flat, device, torch.device("cpu")).reshape(pictures, views, -1)


def _unit_embeddings(
    split: SplitTower,
    inputs: torch.Tensor,
    device: torch.device,
    to: torch.device | None = None,
) -> torch.Tensor:
    """The tower's back on cached front outputs, in chunks of 64, as unit vectors, without a
    gradient, computed on `device` and kept on `to` (default: `device`)."""
    with torch.no_grad():
        rows = [
            F.normalize(split.back(inputs[i : i + 64].to(device, torch.float32))).to(to or device)
            for i in range(0, len(inputs), 64)
        ]
    return torch.cat(rows)


def _anchor_pictures(cache: _FeatureCache) -> list[np.ndarray]:
    """Each product's anchors, as positions in the cache: its catalog images, or its photos
    where it has none."""
    labels, is_catalog = np.array(cache.labels), np.array(cache.is_catalog)
    chosen = []
    for product in range(len(cache.products)):
        own = labels == product
        anchors = own & is_catalog
        chosen.append(np.flatnonzero(anchors if anchors.any() else own))
    return chosen


def _domain_offsets(
    frozen: torch.Tensor, cache: _FeatureCache, device: torch.device
) -> torch.Tensor | None:
    """Each picture's domain mean (pictures × D): the mean untrained embedding of every view of
    the catalog images, or of the bag photos, as the ranking's domain centring takes out. Fixed
    for the run: the keep term holds the trained tower near the untrained one. None for a run
    of one domain (a catalog trained on its own images): no gap between domains to take out,
    and the jewelry recipe ranks lower with its one mean taken out (docs/benchmarks.md)."""
    is_catalog = torch.tensor(cache.is_catalog)
    if is_catalog.all() or not is_catalog.any():
        return None
    means = torch.stack([frozen[is_catalog == domain].flatten(0, 1).mean(0) for domain in (0, 1)])
    return means[is_catalog.long()].to(device)


def _less_domain_mean(vectors: torch.Tensor, offsets: torch.Tensor | None) -> torch.Tensor:
    """Unit rows of `vectors` less their domain's mean (`offsets`, row for row, from
    `_domain_offsets`); the rows as they are without offsets."""
    return vectors if offsets is None else F.normalize(vectors - offsets, dim=1)


def _initial_proxies(
    frozen: torch.Tensor,
    cache: _FeatureCache,
    device: torch.device,
    offsets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each product's proxy starts as the mean embedding of its anchors (whole view; less its
    domain's mean, given `offsets`): the point its photos are pulled to."""
    whole = _less_domain_mean(frozen[:, 0], offsets.cpu() if offsets is not None else None)
    rows = [whole[torch.from_numpy(chosen)].mean(dim=0) for chosen in _anchor_pictures(cache)]
    return F.normalize(torch.stack(rows), dim=1).to(device)


def _save_folder(
    model: torch.nn.Module, source: Path, target: Path, input_scale: float = 1.0
) -> None:
    """The trained model as an open_clip folder with its source's configuration, the input
    size scaled by `input_scale` (the towers are convolutional and average-pooled: they read
    any size, and the embedder reads the size from the folder)."""
    target.mkdir(parents=True, exist_ok=True)
    if input_scale == 1.0:
        shutil.copyfile(source / CONFIG_FILE, target / CONFIG_FILE)
    else:
        config = json.loads((source / CONFIG_FILE).read_text())
        vision = config["model_cfg"]["vision_cfg"]
        vision["image_size"] = scaled_size(vision["image_size"], input_scale)
        (target / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        str(target / WEIGHTS_FILE),
    )

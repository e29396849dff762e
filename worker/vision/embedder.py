"""Image embeddings with open_clip: loaded once, warmed up, batched, L2-normalised.

A picture is embedded as a *view*: the mean of the unit embeddings of a few centred square
crops (fractions of its shorter side), each also mirrored. Catalog pictures are clean,
centred shots: one full crop. Scans show the jewel at an unknown scale among clutter: the full
frame plus two zoomed-in crops. Both were chosen on the accuracy benchmark (docs/benchmarks.md,
"Matching quality").

A model name may join several image towers with `+` (an ensemble, e.g.
`efficientnet-lite1+efficientnet-lite2`): each embeds the views at its own input size, and a
picture's vector is the members' unit view vectors side by side, scaled to unit length.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from worker.errors import StartupError
from worker.observability.logs import get_logger
from worker.settings import ModelSettings
from worker.vectors import ImageKind, VectorLayout, unit_rows
from worker.vision import colour
from worker.vision.catalog_parts import CATALOG_PARTS_VERSION, piece_crops
from worker.vision.catalog_scene import zoom_box
from worker.vision.object_region import object_region
from worker.vision.runtimes import open_tower
from worker.vision.scene_subtraction import SCENE_VERSION, scene_only, without_scene
from worker.vision.versions import read_trained_on, versioned_name
from worker.vision.weights import BUILTIN_MODELS, resolve_model_name

log = get_logger(__name__)


def centred_crops(image: Image.Image, fractions: Sequence[float]) -> list[Image.Image]:
    """Centred square crops whose sides are `fractions` of the image's shorter side."""
    width, height = image.size
    crops = []
    for fraction in fractions:
        side = max(1, round(min(width, height) * fraction))
        left, top = (width - side) // 2, (height - side) // 2
        crops.append(image.crop((left, top, left + side, top + side)))
    return crops


VIEWS_VERSION = 1
"""Bumped whenever the code changes how pictures become vectors (decoding, crops, flips), so
that vectors made the old way and the new way never share an index."""
CATALOG_SCENE_VERSION = 2
"""Bumped whenever the rule of worker/vision/catalog_scene.py changes (another model id)."""


COLOUR_VERSION = 3
"""Bumped whenever the colour descriptor changes (worker/vision/colour.py)."""


def _view_suffix(settings: ModelSettings) -> str:
    """A hash of the effective view settings: another crop or flip is another index, whatever
    today's defaults are."""
    view = (VIEWS_VERSION, tuple(settings.catalog_crops), tuple(settings.scan_crops), settings.flip)
    if settings.colour_weight:  # (absent when off, so that existing ids stay as they were)
        view += (COLOUR_VERSION, settings.colour_weight)
    if settings.catalog_object_region:  # (likewise)
        view += ("catalog_object_region",)
    if settings.catalog_zoom:
        view += ("catalog_zoom", CATALOG_SCENE_VERSION, settings.catalog_zoom)
    if settings.catalog_parts:
        view += ("catalog_parts", CATALOG_PARTS_VERSION)
    if settings.scene_subtraction:
        view += ("scene_subtraction", SCENE_VERSION, settings.scene_subtraction)
    return "-v" + hashlib.sha256(repr(view).encode()).hexdigest()[:6]


ENSEMBLE_SEPARATOR = "+"


def ensemble_members(name: str) -> list[str]:
    """The model names an (ensemble) model name joins; one for a single model."""
    return [member.strip() for member in name.split(ENSEMBLE_SEPARATOR)]


def model_id_for(settings: ModelSettings) -> str:
    """A short, path- and collection-safe id of the model that produced a vector.

    Vectors of different models never mix: the id names the index directory or collection
    and is part of every point id.
    """
    name = settings.name
    members = ensemble_members(name)
    if len(members) > 1:
        return "_".join(member_id(member) for member in members) + _view_suffix(settings)
    if name not in BUILTIN_MODELS and not name.startswith("local-dir:") and settings.pretrained:
        name = f"{name}-{Path(settings.pretrained).stem}"
    return member_id(name) + _view_suffix(settings)


def check_model_available(settings: ModelSettings) -> None:
    """Fail in one line, before open_clip tries (and a model hub is asked), when a configured
    model's files are not there."""
    for name in ensemble_members(settings.name):
        if name.startswith("local-dir:"):
            folder = Path(name.removeprefix("local-dir:"))
            if not (folder / "open_clip_config.json").is_file():
                raise StartupError(
                    f"no model in {folder} (an open_clip folder holds open_clip_config.json "
                    "and its weights; JEWELMATCH_MODEL__NAME)"
                )
        elif name not in BUILTIN_MODELS and not (
            settings.pretrained and Path(settings.pretrained).is_file()
        ):
            raise StartupError(
                f"model {name!r} is neither built in ({', '.join(BUILTIN_MODELS)}) nor a "
                "local-dir: folder, and JEWELMATCH_MODEL__PRETRAINED names no weights file: "
                "nothing is downloaded at run time"
            )


class _Member:
    """One image tower of the embedder, with its own preprocessing (input size)."""

    def __init__(self, settings: ModelSettings, name: str, model_id: str) -> None:
        device = torch.device(settings.device)
        model = open_clip.create_model(
            resolve_model_name(name, settings.cache_dir),
            pretrained=settings.pretrained,
            device=device,
        ).eval()
        preprocess = PreprocessCfg(**model.visual.preprocess_cfg)
        size = preprocess.size
        self.image_size: tuple[int, int] = (size, size) if isinstance(size, int) else tuple(size)
        self.transform = image_transform_v2(preprocess, is_train=False)
        # the exported runtimes hold their own copy of the weights; torch's is then dropped
        folder = Path(name.removeprefix("local-dir:")) if name.startswith("local-dir:") else None
        self.tower = open_tower(settings, model, self.image_size, model_id, device, folder)
        self.trained_on = read_trained_on(folder) if folder else frozenset()


class Embedder:
    """Turns pictures into unit-length vectors. Thread-compatible, not thread-safe."""

    def __init__(self, settings: ModelSettings) -> None:
        started = time.perf_counter()
        settings = settings.model_copy(
            update={"name": versioned_name(settings.name, settings.version, settings.cache_dir)}
        )
        check_model_available(settings)
        torch.set_num_threads(settings.threads)
        self.model_id = model_id_for(settings)
        self.batch_size = settings.batch_size
        self._crops = {
            ImageKind.catalog: tuple(settings.catalog_crops),
            ImageKind.scan: tuple(settings.scan_crops),
        }
        self._flip = settings.flip
        self._object_region = settings.catalog_object_region
        self._catalog_zoom = settings.catalog_zoom
        self._scene_subtraction = settings.scene_subtraction
        self.embeds_catalog_parts = settings.catalog_parts
        """Whether a set's catalog image is also stored as its pieces (`catalog_parts`)."""
        names = ensemble_members(settings.name)
        if len(names) > 1 and settings.pretrained:
            raise ValueError("an ensemble's members must be built-in or local-dir: models")
        self._members = [
            _Member(settings, name, self.model_id if len(names) == 1 else member_id(name))
            for name in names
        ]
        self.image_size = self._members[0].image_size
        self.trained_on: frozenset[str] = frozenset().union(
            *(member.trained_on for member in self._members)
        )
        """URIs of the confirmed photos its towers trained on (`jewelmatch train`)."""
        self.runtime = settings.runtime
        self._colour_weight = settings.colour_weight
        grey = Image.new("RGB", (64, 64), "gray")
        self.view_dim = int(self._views_of([[grey]]).shape[1])
        # the leading dimensions are the image embedding; the rest (if any) the colour
        self.dim = self.view_dim + (colour.DIM if self._colour_weight else 0)
        self.load_seconds = time.perf_counter() - started
        log.info(
            "model.loaded",
            model=self.model_id,
            dim=self.dim,
            threads=settings.threads,
            runtime=self.runtime.value,
            seconds=round(self.load_seconds, 2),
        )

    @property
    def colour_weight(self) -> float:
        return self._colour_weight

    @property
    def layout(self) -> VectorLayout:
        """How its vectors are made of an image part and a colour part."""
        return VectorLayout(self.view_dim, self._colour_weight)

    def embed(
        self, images: Sequence[Image.Image], kind: ImageKind = ImageKind.catalog
    ) -> np.ndarray:
        """Embed pictures as views of their kind; float32 rows of unit length, one per picture."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        if kind is ImageKind.catalog and self._object_region:
            images = [object_region(image) for image in images]
        crops = [self._crops_of(image, kind) for image in images]
        if self._scene_subtraction:
            # the scenes' views go through the towers in the same batches as the pictures'
            scenes = [centred_crops(scene_only(image), (1.0,)) for image in images]
            both = self._views_of([*crops, *scenes])
            views = without_scene(both[: len(images)], both[len(images) :], self._scene_subtraction)
        else:
            views = self._views_of(crops)
        if not self._colour_weight:
            return views
        # the object's colour, appended: a dot product of two vectors then adds the colour
        # similarity, weighted, to the embedding's (a picture without colour evidence is its
        # embedding alone)
        regions = images if kind is ImageKind.catalog else [_central(image) for image in images]
        colours = np.stack([colour.colour_descriptor(region) for region in regions])
        joined = np.concatenate([views, np.sqrt(self._colour_weight) * colours], axis=1)
        return unit_rows(joined).astype(np.float32)

    def embed_parts(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        """Per catalog image, the vectors of its separate pieces, each embedded as a catalog
        image (`catalog_parts`; no rows for a picture of one piece, or with the setting off)."""
        crops = [piece_crops(image) if self.embeds_catalog_parts else [] for image in images]
        vectors = self.embed([crop for pieces in crops for crop in pieces], ImageKind.catalog)
        bounds = np.cumsum([0, *(len(pieces) for pieces in crops)])
        return [vectors[start:end] for start, end in itertools.pairwise(bounds)]

    def _crops_of(self, image: Image.Image, kind: ImageKind) -> list[Image.Image]:
        """The crops a picture is embedded by: its kind's centred squares, and for a catalog
        image that shows its piece small or in a scene, its zoomed square too (`zoom_box`)."""
        crops = centred_crops(image, self._crops[kind])
        if kind is ImageKind.catalog and self._catalog_zoom:
            box = zoom_box(image, self._catalog_zoom)
            if box is not None:
                crops.append(image.crop(box))
        return crops

    def _views_of(self, crops_per_picture: Sequence[Sequence[Image.Image]]) -> np.ndarray:
        """One unit vector per picture, from its own crops: each member's unit mean of their
        embeddings, the members side by side. Every picture's crops go through the towers
        together, in batches of `batch_size` (with their mirror images)."""
        crops = [crop for own in crops_per_picture for crop in own]
        starts = np.cumsum([0, *(len(own) for own in crops_per_picture[:-1])])
        per_pass = max(1, self.batch_size // 2) if self._flip else self.batch_size  # + mirrors
        parts = []
        for member in self._members:
            features = np.concatenate(
                [
                    self._forward(member, crops[start : start + per_pass])
                    for start in range(0, len(crops), per_pass)
                ]
            )
            parts.append(unit_rows(np.add.reduceat(features, starts, axis=0)))
        return parts[0] if len(parts) == 1 else unit_rows(np.concatenate(parts, axis=1))

    def _forward(self, member: _Member, images: Sequence[Image.Image]) -> np.ndarray:
        """Unit embeddings of pictures (each the mean with its mirror image when flipping; the
        mirrored pictures go through the tower in the same batch)."""
        pixels = np.stack([member.transform(image).numpy() for image in images])
        if self._flip:
            pixels = np.concatenate([pixels, pixels[..., ::-1]])
        features = unit_rows(member.tower(np.ascontiguousarray(pixels, dtype=np.float32)))
        if self._flip:
            features = unit_rows(features[: len(images)] + features[len(images) :])
        return features.astype(np.float32, copy=False)


def member_id(name: str) -> str:
    """A member's name as a file-name-safe id (names its cached ONNX export)."""
    if name.startswith("local-dir:"):
        name = Path(name.removeprefix("local-dir:")).name
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.") or "model"


def _central(image: Image.Image) -> Image.Image:
    """A scan's middle (its 0.75 centred square): the jewel, less of the bag and the hand."""
    return centred_crops(image, [0.75])[0]


__all__ = ["Embedder", "ImageKind", "centred_crops", "unit_rows"]

"""Image embeddings with open_clip: loaded once, warmed up, batched, L2-normalised."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from worker.logs import get_logger
from worker.models import BUILTIN_MODELS, resolve_model_name
from worker.settings import ModelSettings

log = get_logger(__name__)


def model_id_for(settings: ModelSettings) -> str:
    """A short, path- and collection-safe id of the model that produced a vector.

    Vectors of different models never mix: the id names the index directory or collection
    and is part of every point id.
    """
    name = settings.name
    if name.startswith("local-dir:"):
        name = Path(name.removeprefix("local-dir:")).name
    elif name not in BUILTIN_MODELS and settings.pretrained:
        name = f"{name}-{Path(settings.pretrained).stem}"
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.") or "model"


class Embedder:
    """Turns pictures into unit-length vectors. Thread-compatible, not thread-safe."""

    def __init__(self, settings: ModelSettings) -> None:
        started = time.perf_counter()
        torch.set_num_threads(settings.threads)
        self.model_id = model_id_for(settings)
        self.batch_size = settings.batch_size
        self._device = torch.device(settings.device)
        self._model = open_clip.create_model(
            resolve_model_name(settings.name, settings.cache_dir),
            pretrained=settings.pretrained,
            device=self._device,
        ).eval()
        preprocess = PreprocessCfg(**self._model.visual.preprocess_cfg)
        self.image_size = preprocess.size
        self._transform = image_transform_v2(preprocess, is_train=False)
        self.dim = int(self._forward([Image.new("RGB", (64, 64), "gray")]).shape[1])  # warm-up
        self.load_seconds = time.perf_counter() - started
        log.info(
            "model.loaded",
            model=self.model_id,
            dim=self.dim,
            threads=settings.threads,
            seconds=round(self.load_seconds, 2),
        )

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed pictures in batches; returns float32 rows of unit length, one per picture."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks = [
            self._forward(images[start : start + self.batch_size])
            for start in range(0, len(images), self.batch_size)
        ]
        return np.concatenate(chunks)

    def _forward(self, images: Sequence[Image.Image]) -> np.ndarray:
        batch = torch.stack([self._transform(image) for image in images]).to(self._device)
        with torch.inference_mode():
            features = self._model.encode_image(batch)
            features = torch.nn.functional.normalize(features.float(), dim=-1)
        return features.cpu().numpy().astype(np.float32, copy=False)

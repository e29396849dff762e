"""A tiny, randomly initialised open_clip model written as a `local-dir:` folder.

Tests load it through the same code path as real weights, in well under a second.
"""

from __future__ import annotations

import json
from pathlib import Path

from worker.settings import ModelSettings

TINY_CONFIG = {
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": 64,
            "layers": 2,
            "width": 64,
            "patch_size": 16,
            "head_width": 32,
        },
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 1, "layers": 1},
    },
    "preprocess_cfg": {
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    },
}


def write_tiny_model(directory: Path, seed: int = 0) -> Path:
    return _write(directory, TINY_CONFIG, seed)


def use_tiny_model(monkeypatch, model_dir: Path, index_path: Path | None = None) -> None:
    """The commands as a terminal runs them, on the tiny model (its exports cached beside it)
    and, given `index_path`, an index there."""
    monkeypatch.setenv("JEWELMATCH_MODEL__NAME", f"local-dir:{model_dir}")
    monkeypatch.setenv("JEWELMATCH_MODEL__CACHE_DIR", str(model_dir.parent / "cache"))
    monkeypatch.setenv("JEWELMATCH_MODEL__SCAN_CROPS", "[1.0]")
    if index_path is not None:
        monkeypatch.setenv("JEWELMATCH_INDEX__PATH", str(index_path))


def tiny_settings(model_dir: Path, cache_dir: Path, **settings) -> ModelSettings:
    """Settings of the tiny model in `model_dir`, its exports in `cache_dir`: one thread and
    torch unless `settings` say otherwise."""
    defaults = {"threads": 1, "runtime": "torch"}
    return ModelSettings(
        name=f"local-dir:{model_dir}", cache_dir=cache_dir, **{**defaults, **settings}
    )


def _write(directory: Path, config: dict, seed: int) -> Path:
    import open_clip
    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{directory}")
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(directory / "open_clip_model.safetensors"),
    )
    return directory


TINY_EFFICIENTNET_CONFIG = {
    "model_cfg": {
        "embed_dim": 1280,
        "vision_cfg": {
            "timm_model_name": "tf_efficientnet_lite0",
            "timm_model_pretrained": False,
            "timm_pool": "avg",
            "timm_proj": "none",
            "image_size": 64,
        },
        "text_cfg": TINY_CONFIG["model_cfg"]["text_cfg"],
    },
    "preprocess_cfg": TINY_CONFIG["preprocess_cfg"],
}
"""The built-in models' kind of tower (a timm EfficientNet, which fine-tuning needs), random
and at 64 px: small enough to train in a test."""


def write_tiny_efficientnet(directory: Path, seed: int = 0) -> Path:
    return _write(directory, TINY_EFFICIENTNET_CONFIG, seed)

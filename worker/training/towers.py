"""An open_clip image tower cut in two: a frozen front, run once per training view and cached,
and the last stages, which are trained.

Only the built-in models' kind of tower is supported (a timm EfficientNet: `conv_stem`, `bn1`,
`blocks` of stages, `conv_head`, `bn2`, pooled): training the last stages on cached features
is what makes a run take minutes on two CPU cores.
"""

from __future__ import annotations

import torch
from torch import nn


class UnsupportedTower(ValueError):
    """The model's image tower cannot be cut into stages."""


class SplitTower:
    """`front(pixels)` then `back(features)` equals `model.encode_image(pixels)`."""

    def __init__(self, model: nn.Module, trained_stages: int) -> None:
        visual = getattr(model, "visual", None)
        trunk = getattr(visual, "trunk", None)
        blocks = getattr(trunk, "blocks", None)
        if blocks is None or not all(
            hasattr(trunk, name) for name in ("conv_stem", "bn1", "conv_head", "bn2")
        ):
            raise UnsupportedTower(
                "fine-tuning needs a timm EfficientNet image tower (the built-in "
                "efficientnet-lite models, or local-dir: folders made from them)"
            )
        stages = min(max(1, trained_stages), len(blocks))
        self.visual, self.trunk, self.stages = visual, trunk, stages
        self.frozen_blocks = blocks[: len(blocks) - stages]
        self.trained_blocks = blocks[len(blocks) - stages :]

    def trainable_parameters(self) -> list[nn.Parameter]:
        modules = [self.trained_blocks, self.trunk.conv_head, self.trunk.bn2, self.visual.head]
        return [p for module in modules for p in module.parameters()]

    def freeze(self) -> None:
        """Only the trained stages keep gradients; every batch norm keeps its running
        statistics (a few dozen photos per batch would only make them noisy)."""
        for parameter in self.visual.parameters():
            parameter.requires_grad_(False)
        for parameter in self.trainable_parameters():
            parameter.requires_grad_(True)
        self.visual.eval()

    def front(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.trunk.bn1(self.trunk.conv_stem(pixels))
        return self.frozen_blocks(x)

    def back(self, features: torch.Tensor) -> torch.Tensor:
        x = self.trained_blocks(features)
        x = self.trunk.bn2(self.trunk.conv_head(x))
        return self.visual.head(self.trunk.forward_head(x))

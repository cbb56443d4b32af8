"""The photo restorer's generator: a small residual network without BatchNorm.

Images in and out are RGB in [0, 1], the same size. A 3x3 conv lifts the image to ``width``
channels; ``blocks`` residual blocks (conv, LeakyReLU, conv, scaled by 0.2 before the sum, as
ESRGAN's blocks do for stable training without normalisation) work at full resolution after a
stride-2 conv (half the compute, a wider view) and a pixel-shuffle back; the network predicts a
correction added to its input, so an untrained one already returns the input.

``norm="batch"`` puts BatchNorm after each conv: only for the study that shows why the recipe
says not to (BatchNorm's batch statistics differ between training and a single served image,
which shows up as colour shifts and artefacts).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = ["RestoreNet"]


class _Block(nn.Module):
    def __init__(self, width: int, norm: Literal["none", "batch"]) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(width, width, 3, padding=1)]
        if norm == "batch":
            layers.append(nn.BatchNorm2d(width))
        layers += [nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(width, width, 3, padding=1)]
        if norm == "batch":
            layers.append(nn.BatchNorm2d(width))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x + 0.2 * self.body(x)
        return out


class RestoreNet(nn.Module):
    """(N, 3, H, W) in [0, 1] -> the restored (N, 3, H, W), clamped to [0, 1] when not
    training (H and W even)."""

    def __init__(
        self, width: int = 48, blocks: int = 6, norm: Literal["none", "batch"] = "none"
    ) -> None:
        super().__init__()
        if norm not in ("none", "batch"):
            raise ValueError(f"norm must be none or batch, got {norm!r}")
        self.width, self.blocks_count, self.norm = width, blocks, norm
        self.head = nn.Conv2d(3, width, 3, padding=1)
        self.down = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.body = nn.Sequential(*(_Block(width, norm) for _ in range(blocks)))
        self.up = nn.Sequential(nn.Conv2d(width, width * 4, 3, padding=1), nn.PixelShuffle(2))
        last = nn.Conv2d(width, 3, 3, padding=1)
        nn.init.zeros_(last.weight)  # starts as the identity
        nn.init.zeros_(last.bias)  # type: ignore[arg-type]
        self.tail = nn.Sequential(
            nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(width * 2, width, 3, padding=1),
            nn.LeakyReLU(0.2, inplace=True), last,
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.head(x)
        deep = self.up(self.body(self.down(features)))
        out: torch.Tensor = x + self.tail(torch.cat([features, deep], dim=1))
        return out if self.training else out.clamp(0.0, 1.0)

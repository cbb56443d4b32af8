"""Image quality numbers that work offline.

- :func:`psnr_y` and :func:`ssim_y`: as BasicSR reports them for restoration (``test_y_channel``
  and ``crop_border``): the BT.601 luma of 8-bit RGB (16-235), a border cropped, PSNR over the
  mean squared error, SSIM with an 11x11 Gaussian window (sigma 1.5) over the valid region,
  constants (0.01 * 255)^2 and (0.03 * 255)^2. The tests check them against scikit-image and
  against a case computed by hand.
- :class:`FeatureDistance`: the mean L1 distance between our ImageNet Lite0's features of two
  images (the content loss's layers and weights). **Uncalibrated**: unlike LPIPS (whose learned
  weights cannot be fetched here) nobody has fitted it to human judgements; smaller is closer,
  and it compares methods on the same images only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from visionloop.models.efficientnet_lite import EfficientNetLite, efficientnet_lite0

__all__ = ["CONTENT_LAYERS", "FeatureDistance", "LiteFeatures", "luma", "psnr_y", "ssim_y"]

# Lite0 block -> weight: the outputs at strides 2, 4, 8 and 16 (16, 24, 40 and 112 channels).
# Shallow layers (edges, colour) count 0.1, deeper (texture, parts) 1.0, as Real-ESRGAN weighs
# VGG's conv1-2 against conv3-5. The deepest block (stride 32) is left out: at a 96 px crop it
# is 3x3 cells, more about the label than the picture.
CONTENT_LAYERS: dict[int, float] = {0: 0.1, 2: 0.1, 4: 1.0, 10: 1.0}


def luma(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 255] -> (N, H, W) BT.601 Y in [16, 235] (float64)."""
    r, g, b = images.double().unbind(dim=1)
    return 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def _crop(y: torch.Tensor, border: int) -> torch.Tensor:
    return y[..., border:-border, border:-border] if border else y


def psnr_y(restored: torch.Tensor, clean: torch.Tensor, border: int = 4) -> torch.Tensor:
    """Per image PSNR (dB) of the luma, RGB in [0, 255], ``border`` pixels cropped; inf when
    the two are equal."""
    a, b = _crop(luma(restored), border), _crop(luma(clean), border)
    mse = ((a - b) ** 2).mean(dim=(-2, -1))
    return 10.0 * torch.log10(255.0**2 / mse)


def _gaussian(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g /= g.sum()
    return torch.outer(g, g)[None, None]


def ssim_y(restored: torch.Tensor, clean: torch.Tensor, border: int = 4) -> torch.Tensor:
    """Per image SSIM of the luma (RGB in [0, 255], ``border`` cropped), Gaussian window 11,
    sigma 1.5, over the window's valid positions."""
    a = _crop(luma(restored), border)[:, None]
    b = _crop(luma(clean), border)[:, None]
    window = _gaussian()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = F.conv2d(a, window), F.conv2d(b, window)
    var_a = F.conv2d(a * a, window) - mu_a**2
    var_b = F.conv2d(b * b, window) - mu_b**2
    cov = F.conv2d(a * b, window) - mu_a * mu_b
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return ssim.mean(dim=(1, 2, 3))


class LiteFeatures(nn.Module):
    """The frozen ImageNet Lite0's features at :data:`CONTENT_LAYERS`, for images in [0, 1]
    (normalised as Lite0 was trained: x * 2 - 1). In eval mode whatever the caller's mode:
    BatchNorm keeps ImageNet's statistics."""

    def __init__(self, network: EfficientNetLite | None = None) -> None:
        super().__init__()
        network = network if network is not None else efficientnet_lite0(pretrained=True)
        self.stem, self.blocks = network.stem, network.blocks
        self.last = max(CONTENT_LAYERS)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LiteFeatures:
        return super().train(False)

    def forward(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        y = self.stem(images * 2.0 - 1.0)
        out = {}
        for index, block in enumerate(self.blocks):
            y = block(y)
            if index in CONTENT_LAYERS:
                out[index] = y
            if index == self.last:
                break
        return out

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per image: the weighted mean absolute difference of the features of ``a`` and
        ``b`` (both in [0, 1]), divided by the sum of the weights."""
        fa, fb = self(a), self(b)
        total = sum(CONTENT_LAYERS[k] * (fa[k] - fb[k]).abs().mean(dim=(1, 2, 3)) for k in fa)
        return total / math.fsum(CONTENT_LAYERS.values())  # type: ignore[no-any-return]


class FeatureDistance:
    """:meth:`LiteFeatures.distance` without gradients, for evaluation."""

    def __init__(self, features: LiteFeatures | None = None) -> None:
        self.features = features if features is not None else LiteFeatures()

    @torch.no_grad()
    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.features.distance(a, b)

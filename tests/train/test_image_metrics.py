"""PSNR and SSIM on the luma as BasicSR reports them: against a hand-computed case and against
scikit-image; the Lite0 feature distance is zero for the same image and grows with damage."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from visionloop.train.image_metrics import FeatureDistance, LiteFeatures, luma, psnr_y, ssim_y


def rgb(seed: int, size: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(1, 3, size, size, generator=g) * 255).round()


def test_psnr_of_a_known_error_by_hand():
    """Grey images whose luma differs by exactly 10 everywhere: mse 100, PSNR 10 log10(255^2 /
    100) = 28.1308 dB; the border is cropped first."""
    a = torch.full((1, 3, 16, 16), 100.0, dtype=torch.float64)
    # a grey step of d in R=G=B moves Y by d * (65.481 + 128.553 + 24.966) / 255 = d * 219/255
    b = a + 10.0 * 255.0 / 219.0
    assert float(luma(b).mean() - luma(a).mean()) == pytest.approx(10.0)
    assert float(psnr_y(a, b)) == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-9)
    b[..., :2, :] = 0  # damage inside the 4 px border only: not counted
    assert float(psnr_y(a, b)) == pytest.approx(28.1308, abs=1e-4)
    assert math.isinf(float(psnr_y(a, a)))


def test_psnr_and_ssim_match_scikit_image_on_the_luma():
    metrics = pytest.importorskip("skimage.metrics")
    clean = rgb(0)
    noisy = clean + torch.randn(clean.shape, generator=torch.Generator().manual_seed(1)) * 12
    noisy = noisy.clamp(0, 255).round()
    ya, yb = (luma(x)[0, 4:-4, 4:-4].numpy() for x in (noisy, clean))
    assert float(psnr_y(noisy, clean)) == pytest.approx(
        metrics.peak_signal_noise_ratio(yb, ya, data_range=255), rel=1e-9
    )
    theirs = metrics.structural_similarity(
        yb, ya, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    # scikit-image averages SSIM over the pixels the 11x11 window fits (it crops 5 px), as
    # BasicSR does with its valid convolution
    assert float(ssim_y(noisy, clean)) == pytest.approx(theirs, abs=1e-6)
    assert float(ssim_y(clean, clean)) == pytest.approx(1.0)


def test_the_feature_distance_is_zero_for_the_same_image_and_grows_with_damage():
    features = LiteFeatures(pretrained_network())
    distance = FeatureDistance(features)
    clean = rgb(2, 64) / 255
    a = float(distance(clean, clean))
    slight = float(distance(clean, (clean + 0.02).clamp(0, 1)))
    heavy = float(distance(clean, (clean * 0.3 + 0.35)))
    assert a == 0.0
    assert 0 < slight < heavy
    assert not any(p.requires_grad for p in features.parameters())
    features.train()
    assert not features.training  # frozen statistics, whatever the caller asks


def pretrained_network():
    from visionloop.models.efficientnet_lite import efficientnet_lite0

    return efficientnet_lite0(pretrained=True)


def test_luma_is_bt601_studio_range():
    white, black = torch.full((1, 3, 2, 2), 255.0), torch.zeros(1, 3, 2, 2)
    assert np.allclose(luma(white).numpy(), 235.0)
    assert np.allclose(luma(black).numpy(), 16.0)

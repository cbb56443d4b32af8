"""A no-reference quality score with no downloaded weights: NIQE (Mittal, Soundararajan and
Bovik, "Making a completely blind image quality analyzer", 2013), its pristine model fitted
here on our own clean photos.

Why this one: NIQE needs no human opinion scores and no network, only a multivariate Gaussian
of natural-scene statistics fitted on undistorted images; the published model (``niqe_pris_
params``) is a download, but the fit is a few lines, so :meth:`Niqe.fit` makes it from the
clean training photos (never the evaluation ones). A score is the distance between the
pristine Gaussian and the one fitted to the judged image's patches: **lower is more natural**.
Not comparable with published NIQE values (another pristine set, patch size and image sizes).

Features per patch and scale (two scales: the image and half of it), on the luma: mean-
subtracted contrast-normalised (MSCN) coefficients (Gaussian window 7x7, sigma 7/6); an
asymmetric generalised Gaussian fitted to them (shape, variance) and to the products of
neighbours in four directions (shape, mean, left and right variance): 18 per scale, 36 in all.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from scipy.special import gamma

__all__ = ["Niqe", "features"]

Array = npt.NDArray[np.float64]

_SHAPES = np.arange(0.2, 10.0, 0.001)
_RATIO = gamma(2.0 / _SHAPES) ** 2 / (gamma(1.0 / _SHAPES) * gamma(3.0 / _SHAPES))


def _mscn(y: Array) -> Array:
    mu = ndimage.gaussian_filter(y, 7 / 6, truncate=2.5)  # a 7x7 window
    sigma = np.sqrt(np.abs(ndimage.gaussian_filter(y * y, 7 / 6, truncate=2.5) - mu * mu))
    out: Array = (y - mu) / (sigma + 1.0)
    return out


def _aggd(x: Array) -> tuple[float, float, float, float]:
    """Shape, mean, left and right variance of an asymmetric generalised Gaussian (moment
    matching)."""
    x = x.ravel()
    left, right = x[x < 0], x[x >= 0]
    sigma_l = float(np.sqrt(np.mean(left**2))) if left.size else 1e-6
    sigma_r = float(np.sqrt(np.mean(right**2))) if right.size else 1e-6
    gamma_hat = sigma_l / max(sigma_r, 1e-12)
    r_hat = float(np.mean(np.abs(x))) ** 2 / max(float(np.mean(x**2)), 1e-12)
    r_norm = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1) ** 2
    shape = float(_SHAPES[np.argmin((_RATIO - r_norm) ** 2)])
    mean = (
        (sigma_r - sigma_l)
        * gamma(2 / shape)
        / gamma(1 / shape)
        * np.sqrt(gamma(1 / shape) / gamma(3 / shape))
    )
    return shape, float(mean), float(sigma_l**2), float(sigma_r**2)


def _patch_features(m: Array) -> list[float]:
    shape, _, left, right = _aggd(m)
    out = [shape, (left + right) / 2]
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        shifted = np.roll(np.roll(m, -dy, axis=0), -dx, axis=1)
        out += list(_aggd(m * shifted))
    return out


def features(rgb: npt.NDArray[np.uint8], patch: int = 32) -> tuple[Array, Array]:
    """Per patch: the 36 features, and the patch's sharpness (mean local deviation), for an
    RGB uint8 image (H, W, 3); patches that do not fit are dropped."""
    y = (rgb.astype(np.float64) @ np.array([65.481, 128.553, 24.966]) / 255.0) + 16.0
    rows: list[list[float]] = []
    sharp: list[float] = []
    scales = [y, ndimage.zoom(ndimage.gaussian_filter(y, 0.5), 0.5, order=1)]
    maps = [_mscn(s) for s in scales]
    local = ndimage.gaussian_filter(y, 7 / 6, truncate=2.5)
    deviation = np.sqrt(np.abs(ndimage.gaussian_filter(y * y, 7 / 6, truncate=2.5) - local**2))
    h, w = y.shape
    for top in range(0, h - patch + 1, patch):
        for left in range(0, w - patch + 1, patch):
            row: list[float] = []
            for level, m in enumerate(maps):
                p, t, lf = patch >> level, top >> level, left >> level
                row += _patch_features(m[t : t + p, lf : lf + p])
            rows.append(row)
            sharp.append(float(deviation[top : top + patch, left : left + patch].mean()))
    return np.asarray(rows, dtype=np.float64), np.asarray(sharp, dtype=np.float64)


class Niqe:
    """The pristine model (mean and covariance of patch features of clean photos) and the
    score of an image against it."""

    def __init__(self, mean: Array, cov: Array, patch: int = 32) -> None:
        self.mean, self.cov, self.patch = mean, cov, patch

    @classmethod
    def fit(
        cls, clean: Iterable[npt.NDArray[np.uint8]], patch: int = 32, keep: float = 0.75
    ) -> Niqe:
        """From clean RGB images: the patches at least ``keep`` times as sharp as the image's
        sharpest (the published recipe: pristine means in focus)."""
        chosen = []
        for image in clean:
            rows, sharp = features(image, patch)
            if len(rows):
                chosen.append(rows[sharp >= keep * sharp.max()])
        if not chosen:
            raise ValueError(f"no clean image holds a {patch} px patch")
        stacked = np.concatenate(chosen)
        if len(stacked) < 2:
            raise ValueError("a pristine model needs at least two patches")
        return cls(stacked.mean(axis=0), np.cov(stacked, rowvar=False), patch)

    def score(self, rgb: npt.NDArray[np.uint8]) -> float:
        """The distance of ``rgb``'s patch statistics from the pristine model (lower: more
        natural)."""
        rows, _ = features(rgb, self.patch)
        if len(rows) < 2:
            raise ValueError(
                f"{rgb.shape[1]}x{rgb.shape[0]} holds fewer than two {self.patch} px patches"
            )
        mean = rows.mean(axis=0)
        cov = np.cov(rows, rowvar=False)
        diff = self.mean - mean
        return float(np.sqrt(diff @ np.linalg.pinv((self.cov + cov) / 2) @ diff))

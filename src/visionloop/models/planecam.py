"""Zero-label plane masks: class activation maps (CAM) of the ImageNet head, refined by GrabCut.

The ImageNet classifier we already serve (``catdog``'s EfficientNet-Lite0) knows planes:
airliner (404), warplane (895) and wing (908, mostly photos of a plane's wing from the cabin or
of a small plane). Its last convolutional features ``F`` (1280 x H/32 x W/32) pooled and
multiplied by the classifier's rows give the logits, so the classifier's row ``w_c`` applied at
every cell, ``w_c . F[:, y, x]``, says where class ``c`` is seen (Zhou et al., *Learning Deep
Features for Discriminative Localization*, 2016). The plane map is the sum of the plane classes'
maps weighted by their pooled probabilities, kept positive, upsampled to the image and divided
by its maximum. The image is enlarged ``zoom`` times first (2 by default: a 224 px input gives
a 14 x 14 map): a finer map (``benchmarks/planes/cam.py`` chooses the zoom on its tuning set).

A map that coarse is a region, not a mask. Two steps make it one:

1. **Gate**: when P(plane) is below ``gate`` the mask is empty. A map divided by its own
   maximum has a peak on every photo, so without the gate a photo with no plane still gets a
   blob. P(plane) is read per cell (the full classifier, softmax over the 1000 classes, on one
   cell's features; the best cell counts): a plane that does not fill the frame barely moves
   the pooled softmax.
2. **Refine** on the pixels with OpenCV's GrabCut (a colour model per side and a graph cut,
   Rother et al. 2004): the map's peak (``>= core``) is sure plane, ``>= seed`` probably
   plane, ``< background`` sure background, the rest probably background.

``gate``, ``seed`` and ``background`` are chosen on a small labelled set that is never used to
evaluate (:func:`tune`). OpenCV is needed for the refinement only (``pip install
'visionloop[planes]'``); without it, ``refine=False`` gives the thresholded map.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from visionloop.models.efficientnet_lite import EfficientNetLite

__all__ = [
    "PLANE_CLASSES",
    "CamSettings",
    "PlaneCam",
    "decide",
    "iou_counts",
    "opencv",
    "plane_maps",
    "refine",
    "tune",
]

PLANE_CLASSES = (404, 895, 908)  # airliner, warplane, wing (imagenet_labels() names them)


@dataclass(frozen=True)
class CamSettings:
    """Thresholds of :class:`PlaneCam` (probabilities and fractions of the map's maximum)."""

    gate: float = 0.15  # P(plane) (the best cell's) below which the mask is empty
    seed: float = 0.4  # map >= seed: probably plane
    background: float = 0.1  # map < background: sure background
    core: float = 0.85  # map >= core: sure plane
    refine: bool = True  # GrabCut on the pixels; False: the thresholded map (>= seed)
    iterations: int = 4  # GrabCut's

    def __post_init__(self) -> None:
        if not 0.0 <= self.gate <= 1.0:
            raise ValueError(f"gate must be a probability, got {self.gate}")
        if not 0.0 <= self.background <= self.seed <= self.core <= 1.0:
            raise ValueError(
                "need 0 <= background <= seed <= core <= 1, got "
                f"{self.background}, {self.seed}, {self.core}"
            )
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class PlaneCam:
    """P(plane), activation map and mask from an ImageNet :class:`EfficientNetLite`.

    Takes images normalised as the network was trained (``catdog``'s input: (x - 127.5) /
    127.5), any size (the network is fully convolutional; the map has a cell per 32 px).
    """

    def __init__(
        self,
        network: EfficientNetLite,
        classes: Sequence[int] = PLANE_CLASSES,
        settings: CamSettings | None = None,
        zoom: float = 2.0,
    ) -> None:
        if not 0.25 <= zoom <= 4.0:
            raise ValueError(f"zoom must be in [0.25, 4], got {zoom}")
        self.zoom = zoom
        if not classes or any(not 0 <= c < network.classifier.out_features for c in classes):
            raise ValueError(f"classes must be indices of the classifier's outputs, got {classes}")
        self.network = network.eval()
        self.classes = tuple(classes)
        self.settings = settings or CamSettings()

    @torch.inference_mode()
    def maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """P(plane) (N,) and the map (N, H, W): :func:`plane_maps` with this object's
        classes and zoom."""
        return plane_maps(self.network, x, self.classes, self.zoom)

    def masks(
        self, images: npt.NDArray[np.uint8], x: torch.Tensor
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Masks (N, H, W) for ``images`` (uint8 NHWC) and the same images normalised
        (``x``), with the group probabilities (N,) and the maps (N, H, W)."""
        if images.shape[0] != x.shape[0] or images.shape[1:3] != tuple(x.shape[-2:]):
            raise ValueError(
                f"images {images.shape} and normalised input {tuple(x.shape)} do not match"
            )
        probability, cam = self.maps(x)
        p, maps = probability.numpy(), cam.numpy()
        out = np.stack([decide(image, m, float(q), self.settings)
                        for image, m, q in zip(images, maps, p, strict=True)])  # fmt: skip
        return out, p, maps


def plane_maps(
    net: EfficientNetLite, x: torch.Tensor, classes: Sequence[int], zoom: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """P(plane) (N,) and the map (N, H, W) in [0, 1] at the input's size (all zeros where no
    position is positive), for normalised images ``x``. The input is first enlarged ``zoom``
    times (a cell per ``32 / zoom`` input pixels). P(plane) is the largest, over cells, of the
    classes' summed softmax when the classifier reads one cell's features alone: a plane that
    does not fill the frame is missed by the pooled softmax, not by its own cells. Pure
    tensor operations: it traces into an ONNX graph."""
    size = x.shape[-2:]
    if zoom != 1.0:
        x = F.interpolate(x, scale_factor=zoom, mode="bilinear", align_corners=False)
    features = net.head(net.blocks(net.stem(x))).float()  # (N, 1280, h, w)
    weight, bias = net.classifier.weight.float(), net.classifier.bias.float()
    cells = torch.einsum("kc,nchw->nkhw", weight, features) + bias[None, :, None, None]
    picked = list(classes)
    probability = cells.softmax(dim=1)[:, picked].sum(1).flatten(1).amax(1)
    pooled = features.mean(dim=(2, 3)) @ weight.T + bias  # in fp32, whatever the network's
    shares = pooled.softmax(dim=1)[:, picked]  # (N, K)
    shares = shares / shares.sum(1, keepdim=True).clamp_min(1e-12)
    per_class = cells[:, picked] - bias[picked][None, :, None, None]
    cam = torch.einsum("nk,nkhw->nhw", shares, per_class).clamp_min(0.0)
    cam = F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return probability, (cam / peak).clamp(0.0, 1.0)


def decide(
    image: npt.NDArray[np.uint8], cam: npt.NDArray[np.float32], probability: float, s: CamSettings
) -> npt.NDArray[np.bool_]:
    """One image's mask from its map and group probability (see the module docstring)."""
    if probability < s.gate:
        return np.zeros(cam.shape, dtype=bool)
    if not s.refine:
        return np.asarray(cam >= s.seed)
    return refine(image, cam, s)


def refine(
    image: npt.NDArray[np.uint8], cam: npt.NDArray[np.float32], s: CamSettings
) -> npt.NDArray[np.bool_]:
    """GrabCut initialised from the map: sure / probable plane and background by threshold."""
    cv2 = opencv()
    if image.shape[:2] != cam.shape:
        raise ValueError(f"image {image.shape[:2]} and map {cam.shape} differ in size")
    init = np.full(cam.shape, cv2.GC_PR_BGD, dtype=np.uint8)
    init[cam < s.background] = cv2.GC_BGD
    init[cam >= s.seed] = cv2.GC_PR_FGD
    init[cam >= s.core] = cv2.GC_FGD
    fg = (init == cv2.GC_FGD) | (init == cv2.GC_PR_FGD)
    bg = (init == cv2.GC_BGD) | (init == cv2.GC_PR_BGD)
    if not fg.any():
        return np.zeros(cam.shape, dtype=bool)
    if not bg.any():  # GrabCut needs both sides: the map covers everything
        return np.asarray(fg, dtype=bool)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    bgr = np.ascontiguousarray(image[..., ::-1])
    cv2.setRNGSeed(0)
    try:
        cv2.grabCut(bgr, init, (0, 0, 0, 0), bgd, fgd, s.iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # a degenerate colour model (e.g. a flat image): keep the seeds
        return np.asarray(cam >= s.seed)
    return np.asarray((init == cv2.GC_FGD) | (init == cv2.GC_PR_FGD))


def opencv() -> Any:
    """The ``cv2`` module, or a RuntimeError that says how to install it."""
    try:
        import cv2
    except ImportError as exc:
        raise RuntimeError(
            "refining plane masks needs OpenCV: pip install 'visionloop[planes]' "
            "(or CamSettings(refine=False): the thresholded map)"
        ) from exc
    return cv2


def iou_counts(
    predicted: Iterable[npt.NDArray[np.bool_]], truth: Iterable[npt.NDArray[np.bool_]]
) -> tuple[int, int]:
    """Summed intersection and union over images (a dataset's IoU is their ratio; images with
    neither mask add nothing, a false positive on a plane-free image adds to the union)."""
    inter = union = 0
    for p, t in zip(predicted, truth, strict=True):
        inter += int(np.logical_and(p, t).sum())
        union += int(np.logical_or(p, t).sum())
    return inter, union


def tune(
    images: npt.NDArray[np.uint8],
    probabilities: npt.NDArray[np.float32],
    maps: npt.NDArray[np.float32],
    truth: npt.NDArray[np.bool_],
    base: CamSettings | None = None,
    gates: Sequence[float] = (0.02, 0.05, 0.1, 0.15, 0.25, 0.4, 0.6, 0.8),
    seeds: Sequence[float] = (0.2, 0.3, 0.4, 0.5, 0.6),
    backgrounds: Sequence[float] = (0.05, 0.1, 0.2),
    max_false_rate: float = 0.05,
) -> tuple[CamSettings, list[dict[str, Any]]]:
    """The settings with the best dataset IoU on a labelled tuning set (``truth``: its plane
    masks, empty for plane-free images) among those that put a mask on at most
    ``max_false_rate`` of its plane-free images (a dataset IoU alone counts a false blob by
    its area, and a small blob on many photos costs it little; a customer sees a plane that is
    not there). When no combination keeps to the rate, the one with the lowest rate wins. Also
    every tried combination with its IoU and false rate.

    The maps are computed once, and each (seed, background) pair refines once: the gate only
    empties masks. Ties go to the first in grid order (seed, background, then gate)."""
    if not 0.0 <= max_false_rate <= 1.0:
        raise ValueError(f"max_false_rate must be in [0, 1], got {max_false_rate}")
    base = base or CamSettings()
    free = ~truth.reshape(len(truth), -1).any(axis=1)
    tried: list[dict[str, Any]] = []
    best: tuple[tuple[bool, float, float], CamSettings] | None = None
    lowest = min(gates)
    for seed, background in itertools.product(seeds, backgrounds):
        if not background <= seed <= base.core:
            continue
        s = replace(base, gate=lowest, seed=seed, background=background)
        refined = [decide(i, m, float(p), s) for i, m, p in zip(images, maps, probabilities,
                                                                strict=True)]  # fmt: skip
        for gate in gates:
            kept = [m if p >= gate else np.zeros_like(m)
                    for m, p in zip(refined, probabilities, strict=True)]  # fmt: skip
            inter, union = iou_counts(kept, truth)
            iou = inter / union if union else 1.0
            marked = np.array([m.any() for m in kept])
            false_rate = float(marked[free].mean()) if free.any() else 0.0
            tried.append({"gate": gate, "seed": seed, "background": background, "iou": iou,
                          "false_rate": false_rate})  # fmt: skip
            rank = (false_rate <= max_false_rate, -false_rate if false_rate > max_false_rate
                    else 0.0, iou)  # fmt: skip
            if best is None or rank > best[0]:
                best = (rank, replace(s, gate=gate))
    if best is None:
        raise ValueError("no combination of thresholds satisfies background <= seed <= core")
    return best[1], tried

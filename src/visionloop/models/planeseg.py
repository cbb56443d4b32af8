"""Built-in ``catseg_plane``: catseg's ``cat`` and ``animal`` plus a **weak** ``plane`` channel
that needs no label (:mod:`visionloop.models.planecam`), served at once.

The network runs both halves on the same normalised input (catseg and catdog normalise alike):
catseg's :class:`~visionloop.models.catseg.SegNet` for cat and animal, and the ImageNet
EfficientNet-Lite0 for the plane's activation map and P(plane). Its raw output is
``(N, 4, H, W)``: the two catseg logits, the plane map and P(plane) (constant over the image);
it traces into one ONNX graph, so an engine can run it. On the host, after the network, each
image whose P(plane) reaches the gate gets its plane mask refined by GrabCut on its pixels
(:func:`~visionloop.models.planecam.decide`); the others get none.

The ``plane`` channel's probabilities are the map where the gate passes and 0 elsewhere (not a
calibrated probability); its masks are GrabCut's. ``weak`` in :meth:`PlaneSeg.describe` says
so, and how it was measured (``GET /v2/models/{m}`` shows it, and a worker's card carries it
to the API replicas in redis mode). The default thresholds are those
``benchmarks/planes/cam.py`` chose on its tuning set (``benchmarks/results/plane_cam.json``).

Weights: a state dict of the whole network (``seg.*`` and ``imagenet.*``), or a plain catseg
state dict (what ``visionloop train seg`` writes as ``best.pt``): then the ImageNet half keeps
the packaged weights, so a trained catseg gains the plane channel with no new file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar, cast

import numpy as np
import torch
from torch import nn

from visionloop.models.base import MASKS, JSONDict, OutputSpec
from visionloop.models.catseg import CatSeg, SegNet
from visionloop.models.efficientnet_lite import EfficientNetLite, efficientnet_lite0
from visionloop.models.planecam import PLANE_CLASSES, CamSettings, decide, opencv, plane_maps

__all__ = ["PLANE_SETTINGS", "PLANE_ZOOM", "PlaneSeg", "PlaneSegNet", "build_catseg_plane"]

# Chosen by benchmarks/planes/cam.py on its tuning set (benchmarks/results/plane_cam.json).
PLANE_SETTINGS = CamSettings(gate=0.8, seed=0.6, background=0.1, core=0.85)
PLANE_ZOOM = 2.5
WEAK = (
    "zero labels: the ImageNet head's activation map for airliner, warplane and wing, gated "
    "by P(plane) and refined by GrabCut; plane IoU 0.437 on held-out composed images, 1 of "
    "156 plane-free photos marked (benchmarks/results/plane_cam.json)"
)


class PlaneSegNet(nn.Module):
    """catseg's SegNet and the ImageNet Lite0 -> (N, 4, H, W): cat and animal logits, the
    plane map, P(plane)."""

    def __init__(
        self,
        seg: SegNet | None = None,
        imagenet: EfficientNetLite | None = None,
        zoom: float = PLANE_ZOOM,
        pretrained: bool = True,
    ) -> None:
        super().__init__()
        self.seg = seg if seg is not None else SegNet(2, pretrained=pretrained)
        self.imagenet = imagenet if imagenet is not None else efficientnet_lite0(pretrained)
        self.zoom = zoom

    @property
    def blocks(self) -> nn.Module:
        """catseg's encoder blocks (what :meth:`CatSeg.segment` embeds from)."""
        return self.seg.blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.seg(x)
        probability, cam = plane_maps(self.imagenet, x, PLANE_CLASSES, self.zoom)
        n, _, h, w = logits.shape
        p = probability.to(logits.dtype)[:, None, None, None].expand(n, 1, h, w)
        return torch.cat([logits, cam.to(logits.dtype)[:, None], p], dim=1)

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """The whole network's state, or a plain catseg (SegNet) state dict: then only the
        catseg half is loaded and the ImageNet half keeps its weights."""
        if state_dict and not any(k.startswith(("seg.", "imagenet.")) for k in state_dict):
            return self.seg.load_state_dict(state_dict, strict=strict, assign=assign)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


class PlaneSeg(CatSeg):
    """Per-pixel ``cat``, ``animal`` and a weak ``plane``: probabilities, masks and areas."""

    name = "catseg_plane"
    description = (
        "EfficientNet-Lite0 + FPN for cat and animal, and a zero-label plane channel from the "
        "ImageNet head (CAM + GrabCut)"
    )
    exportable = True
    trainable_classes = False
    weak: ClassVar[Mapping[str, str]] = MappingProxyType({"plane": WEAK})

    def __init__(
        self,
        network: PlaneSegNet | None = None,
        size: int = 224,
        threshold: float = 0.5,
        plane: CamSettings = PLANE_SETTINGS,
    ) -> None:
        if plane.refine:
            opencv()  # missing: an error at load, naming the extra, not one per request
        self.plane = plane
        super().__init__(
            cast(SegNet, network if network is not None else PlaneSegNet()),
            size=size,
            classes=("cat", "animal", "plane"),
            threshold=threshold,
        )
        shape = (len(self.classes), size, size)
        self.outputs = (
            OutputSpec("probabilities", shape, description="sigmoid (cat, animal); plane map"),
            OutputSpec(MASKS, shape, dtype="UINT8", description="cat, animal: p >= threshold; "
                       "plane: GrabCut where P(plane) >= the gate"),
        )  # fmt: skip

    def with_classes(self, classes: Sequence[str]) -> None:
        """Fixed: cat and animal from catseg, plane from the ImageNet head."""
        raise ValueError(
            f"model {self.name!r} has fixed classes ({', '.join(self.classes)}): its plane "
            "channel needs no training; for a trained plane class serve catseg with that run's "
            "classes"
        )

    def outputs_from(self, raw: torch.Tensor) -> dict[str, torch.Tensor]:
        """Without the pixels: the plane mask is the gated map's seeds (``forward`` with uint8
        images refines it)."""
        raw = raw.float()
        cat_animal = raw[:, :2].sigmoid()
        passed = (raw[:, 3, 0, 0] >= self.plane.gate)[:, None, None]
        plane = torch.where(passed, raw[:, 2], torch.zeros_like(raw[:, 2]))
        probabilities = torch.cat([cat_animal, plane[:, None]], dim=1)
        masks = torch.cat(
            [cat_animal >= self.threshold, (plane >= self.plane.seed)[:, None]], dim=1
        ).byte()
        return {"probabilities": probabilities, MASKS: masks}

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """As :meth:`VisionModel.forward`; for uint8 images, each plane mask whose gate passes
        is GrabCut's on that image's pixels."""
        raw = self.raw(batch)
        out = self.outputs_from(raw)
        if batch.dtype != torch.uint8 or not self.plane.refine:
            return out
        images = batch.cpu().numpy()
        maps, chances = raw[:, 2].float().cpu().numpy(), raw[:, 3, 0, 0].float().cpu().numpy()
        masks = out[MASKS].clone()
        for i, (image, cam, chance) in enumerate(zip(images, maps, chances, strict=True)):
            refined = decide(image, cam, float(chance), self.plane)
            masks[i, 2] = torch.from_numpy(np.asarray(refined, dtype=np.uint8))
        return {"probabilities": out["probabilities"], MASKS: masks}

    def postprocess(self, outputs: Mapping[str, torch.Tensor]) -> list[JSONDict]:
        """Areas from the masks (the plane's are GrabCut's), the first present class."""
        answers = []
        for masks in outputs[MASKS]:
            areas = {c: round(float(m.float().mean()), 6)
                     for c, m in zip(self.classes, masks, strict=True)}  # fmt: skip
            present = [c for c in self.classes if areas[c] > 0]
            answers.append({"label": present[0] if present else "none", "areas": areas})
        return answers


def build_catseg_plane() -> PlaneSeg:
    """Registry factory: catseg (untrained decoder unless ``--weights``) with the plane
    channel. ``--weights`` takes a catseg ``best.pt`` or the whole network's state dict."""
    return PlaneSeg()

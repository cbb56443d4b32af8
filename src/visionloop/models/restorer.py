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

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

from visionloop.imaging import CenterCrop
from visionloop.models.base import IMAGE, InputSpec, JSONDict, OutputSpec, VisionModel
from visionloop.models.catdog import CatDog
from visionloop.models.efficientnet_lite import efficientnet_lite0

__all__ = [
    "CatDogRestored",
    "RestoreNet",
    "RestoreThenClassify",
    "Restorer",
    "build_catdog_restored",
    "build_restorer",
]


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

    @staticmethod
    def shape_of(state: Mapping[str, Any]) -> tuple[int, int, Literal["none", "batch"]] | None:
        """(width, blocks, norm) of a RestoreNet state dict, or None if it is not one."""
        head = state.get("head.weight")
        if not isinstance(head, torch.Tensor) or head.ndim != 4:
            return None
        blocks = {k.split(".")[1] for k in state if k.startswith("body.")}
        norm: Literal["none", "batch"] = (
            "batch" if any(k.endswith("running_mean") for k in state) else "none"
        )
        return int(head.shape[0]), len(blocks), norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.head(x)
        deep = self.up(self.body(self.down(features)))
        out: torch.Tensor = x + self.tail(torch.cat([features, deep], dim=1))
        return out if self.training else out.clamp(0.0, 1.0)


class Restorer(VisionModel):
    """Built-in ``restorer``: the photo restorer (``train gan``'s ``best.pt`` through
    ``--weights``; without weights the untrained network returns its input). The upload's
    short side goes to ``size`` and the centre ``size x size`` is restored; the answer is the
    restored image (``image``, uint8 (H, W, 3)) and how much it changed."""

    name = "restorer"
    description = "a small residual restorer for damaged phone photos (JPEG, scale, blur, noise)"
    exportable = True

    def __init__(self, network: RestoreNet | None = None, size: int = 256) -> None:
        if size % 2:
            raise ValueError(f"size must be even, got {size}")
        self.input_spec = InputSpec(
            crop=CenterCrop(short_side=size, height=size, width=size, resample="bicubic"),
            mean=(0.0, 0.0, 0.0),
            std=(255.0, 255.0, 255.0),
        )
        self.outputs = (
            OutputSpec(IMAGE, (size, size, 3), dtype="UINT8", description="the restored RGB"),
        )
        super().__init__(network if network is not None else RestoreNet())

    def adapt(self, state: Mapping[str, Any]) -> None:
        """A ``train gan`` run with another ``--width``, ``--blocks`` or ``--norm``: the
        generator is rebuilt to its shape before its weights load."""
        shape = RestoreNet.shape_of(state)
        network = self.network
        if (
            shape is not None
            and isinstance(network, RestoreNet)
            and shape != (network.width, network.blocks_count, network.norm)
        ):
            self.network = RestoreNet(*shape).eval()

    def outputs_from(self, raw: torch.Tensor) -> dict[str, torch.Tensor]:
        pixels = (raw.float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
        return {IMAGE: pixels.permute(0, 2, 3, 1).contiguous()}

    def forward(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().forward(batch)
        if batch.dtype == torch.uint8:  # how much each image changed, for the answer
            change = (out[IMAGE].float() - batch.to(out[IMAGE].device).float()).abs()
            out["mean_change"] = change.mean(dim=(1, 2, 3))
        return out

    def postprocess(self, outputs: Mapping[str, torch.Tensor]) -> list[JSONDict]:
        images = outputs[IMAGE]
        changes = outputs.get("mean_change")
        answers: list[JSONDict] = []
        for i, image in enumerate(images):
            answer: JSONDict = {"label": "restored", "width": int(image.shape[1]),
                                "height": int(image.shape[0])}  # fmt: skip
            if changes is not None:
                answer["mean_change"] = round(float(changes[i]), 4)
            answers.append(answer)
        return answers


def build_restorer() -> Restorer:
    """Registry factory: ``restorer`` (``--weights`` a ``train gan`` best.pt with the default
    width and blocks)."""
    return Restorer()


class RestoreThenClassify(nn.Module):
    """The restorer, then catdog's ImageNet Lite0, in one network: takes catdog's normalised
    input ((x - 127.5) / 127.5), restores it in [0, 1], classifies the result."""

    def __init__(
        self, restorer: RestoreNet | None = None, classifier: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.restore = restorer if restorer is not None else RestoreNet()
        self.classify = classifier if classifier is not None else efficientnet_lite0()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        restored = self.restore((x + 1.0) * 0.5).clamp(0.0, 1.0)
        out: torch.Tensor = self.classify(restored * 2.0 - 1.0)
        return out

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """The whole network's state, or a restorer's (``train gan``'s best.pt): then only the
        restorer is loaded and the classifier keeps its ImageNet weights."""
        if state_dict and not any(k.startswith(("restore.", "classify.")) for k in state_dict):
            return self.restore.load_state_dict(state_dict, strict=strict, assign=assign)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


class CatDogRestored(CatDog):
    """``catdog`` that restores each photo before classifying it (the same answer)."""

    name = "catdog_restored"
    description = "catdog after the photo restorer: restore, then cat / dog / neither"

    def adapt(self, state: Mapping[str, Any]) -> None:
        """The restorer half rebuilt to the shape of a ``train gan`` best.pt (or of the
        ``restore.`` part of a whole state dict)."""
        network = self.network
        if not isinstance(network, RestoreThenClassify):
            return
        own = {k.removeprefix("restore."): v for k, v in state.items()
               if k.startswith("restore.")} or dict(state)  # fmt: skip
        shape = RestoreNet.shape_of(own)
        current = network.restore
        if shape is not None and shape != (current.width, current.blocks_count, current.norm):
            network.restore = RestoreNet(*shape).eval()


def build_catdog_restored() -> CatDogRestored:
    """Registry factory: ``catdog_restored`` (``--weights`` a ``train gan`` best.pt; without,
    the untrained restorer passes the photo through unchanged)."""
    return CatDogRestored(RestoreThenClassify())  # type: ignore[arg-type]

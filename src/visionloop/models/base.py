"""What a servable model is: its input spec, its named outputs, ``forward`` and ``postprocess``.

The serving side only ever talks to :class:`VisionModel`. It hands ``forward`` a batch of
uint8 NHWC images (what :mod:`visionloop.imaging` produces, compact on the wire and in queues)
and gets named output tensors back; ``postprocess`` turns one batch of outputs, on the CPU,
into one JSON-ready dict per image. Normalisation happens inside ``forward``, on the model's
device, so the host never materialises float images.

Every model names its ``classes``. A model that segments declares an output named ``masks``
(uint8, ``(len(classes), H, W)`` per image: the server encodes it by class name) and implements
:class:`Segmenter`, all the labelling loop needs of it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from visionloop.bn import fuse_conv_bn
from visionloop.imaging import CenterCrop
from visionloop.settings import ModelSettings

if TYPE_CHECKING:
    from visionloop.engines.base import Engine

DType = Literal["float32", "float16", "bfloat16"]
JSONDict = dict[str, Any]

_TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


@dataclass(frozen=True)
class InputSpec:
    """The image a model takes: uint8 RGB ``height x width``, made by ``crop`` from any upload.

    ``mean`` and ``std`` are in 0-255 units, per RGB channel: the network sees
    ``(pixel - mean) / std``.
    """

    crop: CenterCrop
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layout: Literal["NHWC"] = "NHWC"

    @property
    def height(self) -> int:
        return self.crop.height

    @property
    def width(self) -> int:
        return self.crop.width

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of one image as ``forward`` accepts it (HWC)."""
        return (self.crop.height, self.crop.width, 3)

    def __post_init__(self) -> None:
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be > 0 per channel, got {self.std}")


@dataclass(frozen=True)
class OutputSpec:
    """One named output tensor, per image (the batch dimension is not included)."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "FP32"
    description: str = ""


class VisionModel(ABC):
    """A servable image model.

    Subclasses set ``name``, ``description``, ``input_spec``, ``outputs``, ``classes`` and
    ``network`` (an ``nn.Module`` taking normalised float NCHW), and implement
    :meth:`outputs_from` and :meth:`postprocess`.

    ``classes`` are the names of the classes the model tells apart, in output order: for a
    classifier the labels it answers with (``catdog``: cat, dog, neither, the channels of its
    ``scores``); for a segmenter the channels of its ``masks`` output (``catseg``: cat,
    animal). A model with no class axis has none (``()``). Classes do not say whether a model
    returns masks: its ``masks`` output does (:data:`MASKS`), and in process, being a
    :class:`Segmenter`.

    ``network`` stays the source of truth (training, the BatchNorm tools, the drift tap). For
    serving, an :class:`~visionloop.engines.base.Engine` may run it instead (``engine``, set
    by :func:`visionloop.engines.attach`): ONNX Runtime or OpenVINO, fp32, bf16 or int8.
    """

    name: str
    description: str
    input_spec: InputSpec
    outputs: tuple[OutputSpec, ...]
    classes: tuple[str, ...] = ()  # see the class docstring: labels, or mask channels
    # Classes made without labels, each with how (e.g. a zero-label plane channel): users see
    # it in the description, so they know not to take it for a trained class.
    weak: ClassVar[Mapping[str, str]] = MappingProxyType({})
    # True when ``network`` is a pure function of its input that ONNX export traces faithfully
    # (no data-dependent Python branches, no side effects): ``engine auto`` then converts it.
    # Any model can still be converted by naming the engine; the conversion is verified.
    exportable: bool = False
    # True when the network is untrained until weights are loaded (catseg's decoder): its
    # classes other than the ``weak`` ones answer noise, different on every build.
    needs_weights: ClassVar[bool] = False

    def __init__(self, network: nn.Module) -> None:
        self.network = network.eval()
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.engine: Engine | None = None
        self.source_sha256: str | None = None
        self.weights_loaded = False  # set by registry.load_weights
        self._set_normalisation()

    def untrained_classes(self) -> list[str]:
        """The classes that answer noise: those of a model that ``needs_weights`` and has none
        loaded, its weak (zero-label) channels excepted."""
        if not self.needs_weights or self.weights_loaded:
            return []
        return [c for c in self.classes if c not in self.weak]

    # True when the head can be rebuilt for the classes a training run chose (catseg):
    # ``with_classes`` works, and a weights file of another class count says how to name them.
    trainable_classes: ClassVar[bool] = False

    def adapt(self, state: Mapping[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Fit the network to a state dict's shapes where the architecture allows it (the
        restorer's width, depth and normalisation), before the weights load. Default: none."""

    def with_classes(self, classes: Sequence[str]) -> None:
        """Take weights trained for other ``classes`` (names in output order, e.g. ``train seg
        --classes cat,animal,plane``): a model whose head can be rebuilt for them does so, before
        the weights are loaded. Most models' classes are fixed.

        Raises:
            ValueError: this model's classes cannot change, or ``classes`` are not usable names.
        """
        raise ValueError(
            f"model {self.name!r} has fixed classes ({', '.join(self.classes) or 'none'}); "
            "classes cannot be set for it"
        )

    def _set_normalisation(self) -> None:
        spec = self.input_spec
        shape = (1, 3, 1, 1)
        self._mean = torch.tensor(spec.mean, dtype=self.dtype, device=self.device).view(shape)
        self._inv_std = (
            (1.0 / torch.tensor(spec.std, dtype=torch.float64, device=self.device))
            .to(self.dtype)
            .view(shape)
        )

    def prepare(self, options: ModelSettings) -> VisionModel:
        """Ready for serving, in the contract's order: eval, BN fusion, channels_last, dtype,
        device, optional ``torch.compile``. Returns ``self``."""
        network = self.network.eval()
        if self.source_sha256 is None:  # the weights as loaded, before fusion changes them
            from visionloop.engines.graph import weights_fingerprint

            self.source_sha256 = weights_fingerprint(network)
        if options.fuse_bn:
            network = fuse_conv_bn(network, inplace=True)
        if options.channels_last:
            network = network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.dtype = _TORCH_DTYPES[options.dtype]
        self.device = torch.device(options.device)
        network = network.to(device=self.device, dtype=self.dtype)
        if options.compile:
            network = torch.compile(network, dynamic=False)  # type: ignore[assignment]
        self.network = network
        self._set_normalisation()
        return self

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> normalised float NCHW on the model's device.

        ``permute`` of a contiguous NHWC tensor is already channels_last in memory, so no copy
        is made to change layout; the only copy is the dtype conversion.
        """
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"expected uint8 images of shape (N, H, W, 3), got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).to(self.dtype)
        return (x - self._mean) * self._inv_std

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run one batch: uint8 NHWC images (through ``engine`` when one is attached), or float
        NCHW already normalised (always the torch network)."""
        return self.outputs_from(self.raw(batch))

    def raw(self, batch: torch.Tensor) -> torch.Tensor:
        """The network's raw output for one batch, as :meth:`forward` takes it."""
        if self.engine is not None and batch.dtype == torch.uint8:
            images = batch.numpy() if batch.device.type == "cpu" else batch.cpu().numpy()
            return torch.from_numpy(self.engine.run(np.asarray(images)))
        x = self.normalise(batch) if batch.dtype == torch.uint8 else batch.to(self.device)
        output: torch.Tensor = self.network(x)
        return output

    @abstractmethod
    def outputs_from(self, raw: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named output tensors (batch first) from the network's raw output."""

    @abstractmethod
    def postprocess(self, outputs: Mapping[str, torch.Tensor]) -> list[JSONDict]:
        """One JSON-ready dict per image, from one batch of CPU outputs."""

    def warmup(self, batch_sizes: Iterable[int]) -> None:
        """Run one forward pass per batch size, so the first real request pays no set-up."""
        for size in batch_sizes:
            dummy = torch.zeros((size, *self.input_spec.shape), dtype=torch.uint8)
            self.forward(dummy)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def describe(self) -> JSONDict:
        """Metadata for listings and the v2 model endpoint, with the engine that runs it."""
        info = describe(self.name, self.description, self.input_spec, self.outputs, self.classes,
                        self.weak)  # fmt: skip
        info["engine"] = self.engine_info()
        return info

    def engine_info(self) -> JSONDict:
        """What runs the forward pass: engine, precision, version, threads, artefact."""
        if self.engine is not None:
            return self.engine.describe()
        precision = "bf16" if self.dtype == torch.bfloat16 else "fp32"
        if self.dtype == torch.float16:
            precision = "fp16"
        return {"engine": "torch", "precision": precision, "version": torch.__version__,
                "device": str(self.device)}  # fmt: skip


def describe(
    name: str,
    description: str,
    spec: InputSpec,
    outputs: Iterable[OutputSpec],
    classes: Iterable[str],
    weak: Mapping[str, str] | None = None,
) -> JSONDict:
    """A model's metadata as JSON: what listings and the v2 model endpoint show (``weak``
    only when some class is)."""
    info: JSONDict = {
        "name": name,
        "description": description,
        "classes": list(classes),
        "input": {
            "shape": list(spec.shape),
            "dtype": "UINT8",
            "layout": spec.layout,
            "mean": list(spec.mean),
            "std": list(spec.std),
            "resize_short_side": spec.crop.short_side,
            "resample": spec.crop.resample,
        },
        "outputs": [{"name": o.name, "shape": list(o.shape), "dtype": o.dtype} for o in outputs],
    }
    if weak:
        info["weak"] = dict(weak)
    return info


# -- segmenters ------------------------------------------------------------------------------


def class_names(text: str | Sequence[str]) -> tuple[str, ...]:
    """Class names from ``"cat,animal,plane"`` or a sequence: stripped, non-empty, unique.

    Raises:
        ValueError: an empty name, a repeated one, or none at all.
    """
    names = tuple(n.strip() for n in (text.split(",") if isinstance(text, str) else text))
    if not names or any(not n for n in names):
        raise ValueError(f"classes must be comma-separated non-empty names, got {text!r}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"classes repeat {', '.join(repeated)}")
    return names


IMAGE = "image"  # the output a model that returns a picture declares: uint8 (H, W, 3)
MASKS = "masks"  # the output a model that segments declares: uint8 (len(classes), H, W)


@dataclass(frozen=True)
class Segmentation:
    """One batch through a :class:`Segmenter`. Channel ``i`` is ``classes[i]``."""

    probabilities: torch.Tensor  # (N, C, H, W) float32 in [0, 1], per class and pixel
    masks: torch.Tensor  # (N, C, H, W) bool: the model's own decision (its threshold)
    embeddings: torch.Tensor | None = None  # (N, D) float32, one per image, when asked for


@runtime_checkable
class Segmenter(Protocol):
    """What the labelling loop needs of a segmentation model (``catseg`` is one): its classes,
    the square input it takes, and per-class masks for a batch of images, with an embedding
    per image from the same pass when asked (what diversity sampling compares).

    Images are uint8 NHWC of ``input_spec.shape``, as :meth:`VisionModel.forward` takes them.
    """

    @property
    def name(self) -> str: ...

    @property
    def classes(self) -> tuple[str, ...]: ...

    @property
    def input_spec(self) -> InputSpec: ...

    def segment(self, images: torch.Tensor, embed: bool = False) -> Segmentation:
        """Probabilities and masks per class; ``embed``: also :attr:`Segmentation.embeddings`
        (deep features, pooled over the image; not normalised)."""
        ...


def as_segmenter(model: VisionModel) -> Segmenter:
    """``model`` as a :class:`Segmenter`, or a one-line ValueError that says it is not one."""
    if isinstance(model, Segmenter):
        return model
    outputs = ", ".join(o.name for o in model.outputs) or "none"
    raise ValueError(
        f"model {model.name!r} is not a segmenter (its outputs: {outputs}; no per-class "
        f"{MASKS}): selecting and pre-labelling need one, e.g. catseg"
    )

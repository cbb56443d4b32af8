"""Photos for calibration and checks, and the accuracy gate.

A folder of photos becomes uint8 model inputs through :func:`visionloop.imaging.prepare` (the
server's own size, pixel and decompression guards, EXIF and mode handling), in sorted order.
Its fingerprint is the sha256 of every file's name and bytes, so a card can say which photos
calibrated an artefact and a check can refuse a check set that overlaps them.

The gate compares an engine with the FP32 torch model on a check set, image by image: ImageNet
top-1 (the argmax of the raw output) and the model's own label (``catdog``'s cat / dog /
neither) must agree often enough, or the artefact is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

from visionloop import imaging

if TYPE_CHECKING:
    from visionloop.models.base import VisionModel

SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"})
MIN_TOP1 = 0.99
MIN_LABEL = 0.995


@dataclass(frozen=True)
class Photos:
    """Prepared model inputs from a folder, with what was skipped and a fingerprint."""

    folder: Path
    names: tuple[str, ...]
    images: npt.NDArray[np.uint8]  # (N, H, W, 3)
    digests: tuple[str, ...]  # sha256 of each file's bytes
    skipped: tuple[tuple[str, str], ...] = ()  # (name, why)

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for name, file_digest in zip(self.names, self.digests, strict=True):
            digest.update(f"{name}\0{file_digest}\n".encode())
        return digest.hexdigest()

    def describe(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "images": len(self.names),
            "skipped": len(self.skipped),
            "sha256": self.fingerprint,
        }


def read_photos(
    folder: Path, model: VisionModel, limits: imaging.ImageLimits | None = None
) -> Photos:
    """Every image file below ``folder`` (recursively, sorted), prepared for ``model``.

    A file that is not a readable image within the limits is skipped and listed, never fatal.

    Raises:
        ValueError: ``folder`` is not a folder, or holds no usable image.
    """
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder of photos")
    limits = limits or imaging.ImageLimits()
    names: list[str] = []
    arrays: list[npt.NDArray[np.uint8]] = []
    digests: list[str] = []
    skipped: list[tuple[str, str]] = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES):
        name = str(path.relative_to(folder))
        try:
            if path.stat().st_size > limits.max_bytes:
                raise imaging.ImageTooLarge(f"{path.stat().st_size} bytes > {limits.max_bytes}")
            data = path.read_bytes()
            arrays.append(imaging.prepare(data, model.input_spec.crop, limits))
        except (imaging.ImageError, OSError) as exc:
            skipped.append((name, str(exc)))
            continue
        names.append(name)
        digests.append(hashlib.sha256(data).hexdigest())
    if not arrays:
        raise ValueError(f"no usable photo in {folder} ({len(skipped)} files skipped)")
    return Photos(folder, tuple(names), np.stack(arrays), tuple(digests), tuple(skipped))


def overlap(a: Photos, b: Photos) -> int:
    """How many photos (by content) two sets share."""
    return len(set(a.digests) & set(b.digests))


Runner = Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.float32]]


def run_all(run: Runner, images: npt.NDArray[np.uint8], batch: int = 8) -> npt.NDArray[Any]:
    """Raw outputs for every image, in batches."""
    return np.concatenate([run(images[i : i + batch]) for i in range(0, len(images), batch)])


def torch_reference(model: VisionModel) -> Runner:
    """The FP32 torch network as a runner (what every engine is compared with)."""

    def run(images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        with torch.inference_mode():
            x = model.normalise(torch.from_numpy(images))
            return model.network(x).float().cpu().numpy()  # type: ignore[no-any-return]

    return run


def labels(model: VisionModel, raw: npt.NDArray[Any]) -> list[str]:
    """The model's own label per image (``catdog``: cat / dog / neither)."""
    found: list[str] = []
    for first in range(0, len(raw), 64):
        outputs = model.outputs_from(torch.from_numpy(raw[first : first + 64]))
        found += [str(r.get("label")) for r in model.postprocess(outputs)]
    return found


@dataclass
class Agreement:
    """How often an engine agrees with the FP32 torch model on a check set."""

    images: int
    top1: float  # argmax of the raw output (ImageNet top-1 for catdog; per pixel for masks)
    label: float  # the model's own label
    max_abs_diff: float  # largest raw-output difference
    min_top1: float = MIN_TOP1
    min_label: float = MIN_LABEL
    disagreements: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.top1 >= self.min_top1 and self.label >= self.min_label

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"gate {verdict} on {self.images} check photos: top-1 agreement {self.top1:.4f} "
            f"(>= {self.min_top1}), label agreement {self.label:.4f} (>= {self.min_label})"
        )


def agreement(
    model: VisionModel,
    reference: npt.NDArray[Any],
    candidate: npt.NDArray[Any],
    names: tuple[str, ...],
    min_top1: float = MIN_TOP1,
    min_label: float = MIN_LABEL,
) -> Agreement:
    """Compare raw outputs image by image (top-1 of dimension 1, and the model's label)."""
    ref_top, cand_top = reference.argmax(axis=1), candidate.argmax(axis=1)
    per_image_top1 = (ref_top == cand_top).reshape(len(reference), -1).mean(axis=1)
    ref_labels, cand_labels = labels(model, reference), labels(model, candidate)
    disagree = [
        {"photo": n, "top1": int(a.flat[0]), "engine_top1": int(b.flat[0]), "label": la,
         "engine_label": lb}
        for n, a, b, la, lb, t in zip(
            names, ref_top, cand_top, ref_labels, cand_labels, per_image_top1, strict=True
        )
        if t < 1.0 or la != lb
    ]  # fmt: skip
    return Agreement(
        images=len(reference),
        top1=float(per_image_top1.mean()),
        label=float(np.mean([a == b for a, b in zip(ref_labels, cand_labels, strict=True)])),
        max_abs_diff=float(np.abs(reference - candidate).max()),
        min_top1=min_top1,
        min_label=min_label,
        disagreements=disagree[:50],
    )

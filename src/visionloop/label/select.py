"""Choosing what to label: uncertainty, diversity, a mix, and mining a class the segmenter
never learned.

- ``uncertainty``: the segmenter's per-pixel binary entropy, averaged over classes and pixels.
- ``diversity``: k-center greedy on the segmenter's embeddings (catseg: its encoder's pooled
  deepest features): each pick is the image farthest from everything picked (and everything
  already labelled) so far.
- ``mix``: half by uncertainty, the rest by k-center around those.
- ``mine``: rank by the probability mass the ImageNet head of the ``catdog`` backbone puts on a
  group of ImageNet classes (e.g. all 398 animals), optionally minus another group (``cat``):
  "find the other animals among our photos" before the segmenter has ever seen one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from visionloop.imaging import ImageLimits, center_crop
from visionloop.label.prelabel import read_photo, square_input
from visionloop.models.base import Segmenter, VisionModel

__all__ = ["GROUPS", "METHODS", "group_indices", "kcenter", "mine_scores", "pick", "pool_scores"]

METHODS = ("uncertainty", "diversity", "mix")
# ImageNet-1k index ranges (inclusive). 0-397 are animals in the WordNet hierarchy.
GROUPS: dict[str, tuple[tuple[int, int], ...]] = {
    "animal": ((0, 397),),
    "dog": ((151, 268),),
    "cat": ((281, 285),),
    "bigcat": ((286, 293),),
    "bird": ((7, 24), (80, 100), (127, 146)),
    # airliner, warplane, wing (as visionloop.models.planecam reads planes); not 726, a
    # carpenter's plane, nor 812, a space shuttle
    "plane": ((404, 404), (895, 895), (908, 908)),
}


def group_indices(spec: str) -> list[int]:
    """ImageNet indices from group names and ranges: ``animal``, ``dog,bird``, ``151-268``."""
    out: set[int] = set()
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part in GROUPS:
            for low, high in GROUPS[part]:
                out.update(range(low, high + 1))
            continue
        low_s, _, high_s = part.partition("-")
        try:
            low, high = int(low_s), int(high_s or low_s)
        except ValueError:
            raise ValueError(
                f"unknown class group {part!r}: use {', '.join(GROUPS)} or ranges like 151-268"
            ) from None
        if not 0 <= low <= high <= 999:
            raise ValueError(f"ImageNet indices are 0-999, got {part!r}")
        out.update(range(low, high + 1))
    if not out:
        raise ValueError("no ImageNet classes given")
    return sorted(out)


@torch.inference_mode()
def pool_scores(
    model: Segmenter, paths: Sequence[Path], batch_size: int = 16
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float32]]:
    """Per image: mean per-pixel entropy (nats, over classes) and the L2-normalised
    embedding (the segmenter's, e.g. catseg's deepest encoder features, average-pooled)."""
    entropy, embeddings = [], []
    for start in range(0, len(paths), batch_size):
        batch = np.stack(
            [
                np.asarray(square_input(p, model.input_spec.height)[0])
                for p in paths[start : start + batch_size]
            ]
        )
        out = model.segment(torch.from_numpy(batch), embed=True)
        if out.embeddings is None:
            raise ValueError(f"model {model.name!r} gave no embeddings for diversity sampling")
        p = out.probabilities.clamp(1e-6, 1 - 1e-6)
        h = -(p * p.log() + (1 - p) * (1 - p).log())
        entropy.append(h.mean(dim=(1, 2, 3)).double().numpy())
        embeddings.append(torch.nn.functional.normalize(out.embeddings, dim=1).float().numpy())
    return np.concatenate(entropy), np.concatenate(embeddings)


def kcenter(
    embeddings: npt.NDArray[np.float32],
    k: int,
    centers: Sequence[int] = (),
    candidates: int | None = None,
) -> list[int]:
    """k-center greedy: ``k`` indices among the first ``candidates`` rows (default all), each
    the farthest from ``centers`` and the earlier picks (with no centres, the first is the
    farthest from the mean)."""
    count = len(embeddings) if candidates is None else candidates
    k = min(k, count - len({c for c in centers if c < count}))
    if k <= 0:
        return []
    if centers:
        distance = np.full(len(embeddings), np.inf)
        squares = (embeddings.astype(np.float64) ** 2).sum(1)
        chosen = list(centers)
        for start in range(0, len(chosen), 512):  # N x 512 at a time, not N x centres x dims
            block = embeddings[chosen[start : start + 512]].astype(np.float64)
            d2 = squares[:, None] + (block**2).sum(1)[None] - 2 * embeddings @ block.T
            distance = np.minimum(distance, np.sqrt(np.maximum(d2, 0)).min(1))
    else:
        distance = np.linalg.norm(embeddings - embeddings.mean(0), axis=1)
    distance[count:] = -1.0  # labelled rows are centres, never picks
    picks: list[int] = []
    for _ in range(k):
        index = int(np.argmax(distance))
        picks.append(index)
        distance = np.minimum(distance, np.linalg.norm(embeddings - embeddings[index], axis=1))
        distance[index] = -1.0
        distance[count:] = -1.0
    return picks


def pick(
    method: str,
    k: int,
    entropy: npt.NDArray[np.float64],
    embeddings: npt.NDArray[np.float32],
    labelled: Sequence[int] = (),
) -> list[tuple[int, float]]:
    """``k`` pool indices with a score (entropy, or distance rank for diversity). Rows of
    ``embeddings`` past the pool are labelled images; with ``labelled`` their indices, k-center
    picks away from them."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    count = len(entropy)  # the pool; embeddings may go on with the labelled images
    if method == "uncertainty":
        order = np.argsort(-entropy, kind="stable")[:k]
        return [(int(i), float(entropy[i])) for i in order]
    if method == "diversity":
        chosen = kcenter(embeddings, k, labelled, count)
        return [(i, float(k - n)) for n, i in enumerate(chosen)]
    first = [i for i, _ in pick("uncertainty", k // 2, entropy, embeddings)]
    rest = kcenter(embeddings, k - len(first), [*labelled, *first], count)
    return [(i, float(entropy[i])) for i in [*first, *rest]]


@torch.inference_mode()
def mine_scores(
    model: VisionModel,
    paths: Sequence[Path],
    wanted: Sequence[int],
    exclude: Sequence[int] = (),
    batch_size: int = 16,
) -> npt.NDArray[np.float64]:
    """P(any ``wanted`` ImageNet class) - P(any ``exclude`` class), per image, from a model
    with a ``probabilities`` output over ImageNet (the built-in ``catdog``)."""
    limits, crop = ImageLimits(), model.input_spec.crop
    scores = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        batch = np.stack([center_crop(read_photo(p, limits, crop.short_side), crop) for p in chunk])
        probabilities = model.forward(torch.from_numpy(batch))["probabilities"].float()
        score = probabilities[:, list(wanted)].sum(1)
        if exclude:
            score = score - probabilities[:, list(exclude)].sum(1)
        scores.append(score.double().numpy())
    return np.concatenate(scores)

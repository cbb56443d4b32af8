"""The masked multi-label loss: a class not annotated on an image contributes no loss there.

Multi-label segmentation has one sigmoid channel per class (a pixel may be both ``cat`` and
``animal``). With partial labels, ``annotated[b, c]`` says whether class ``c`` was labelled on
image ``b``; where it was not, that channel's pixels are neither positives nor negatives, they
are simply not counted. Treating them as background instead teaches the model that unlabelled
animals are not animals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

__all__ = ["masked_multilabel_bce", "supervision"]


def supervision(
    targets: torch.Tensor,
    annotated: torch.Tensor,
    *,
    hierarchy: Mapping[str, str] | None = None,
    classes: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which elements are supervised, and with what target.

    Args:
        targets: (B, C, H, W) in {0, 1}; values of unannotated classes are ignored.
        annotated: (B, C) bool.
        hierarchy: ``{child: parent}`` class names, e.g. ``{"cat": "animal"}``: on an image where
            the child is annotated and the parent is not, the child's positive pixels are
            parent positives too, and nothing else about the parent is assumed.
        classes: Channel names, needed with ``hierarchy``.

    Returns:
        ``(targets, mask)``, both (B, C, H, W) float; ``mask`` is 1 where an element counts.
    """
    if targets.dim() != 4 or annotated.shape != targets.shape[:2]:
        raise ValueError(
            f"need targets (B, C, H, W) and annotated (B, C), got {tuple(targets.shape)} and "
            f"{tuple(annotated.shape)}"
        )
    annotated = annotated.bool()
    mask = annotated[:, :, None, None].expand_as(targets).to(targets.dtype).clone()
    targets = torch.where(mask.bool(), targets, torch.zeros_like(targets))
    for child, parent in (hierarchy or {}).items():
        if classes is None:
            raise ValueError("hierarchy needs the class names (classes=...)")
        missing = {child, parent} - set(classes)
        if missing:
            raise ValueError(
                f"hierarchy names unknown classes {sorted(missing)}; have {list(classes)}"
            )
        c, p = classes.index(child), classes.index(parent)
        implied = annotated[:, c] & ~annotated[:, p]  # images: child labelled, parent not
        positive = (targets[:, c] > 0.5) & implied[:, None, None]
        mask[:, p] = torch.where(positive, torch.ones_like(mask[:, p]), mask[:, p])
        targets[:, p] = torch.where(positive, torch.ones_like(targets[:, p]), targets[:, p])
    return targets, mask


def masked_multilabel_bce(
    logits: torch.Tensor,
    targets: torch.Tensor,
    annotated: torch.Tensor,
    *,
    class_weights: Sequence[float] | torch.Tensor | None = None,
    dice_weight: float = 0.0,
    hierarchy: Mapping[str, str] | None = None,
    classes: Sequence[str] | None = None,
) -> torch.Tensor:
    """Per-channel BCE averaged over the supervised elements only, plus an optional Dice term.

    The BCE is ``sum(w_c * bce * mask) / sum(mask)``: a mean over supervised (image, channel,
    pixel) elements, not diluted by the ignored ones; ``class_weights`` (default 1) scale each
    class's share. The Dice term (``dice_weight`` > 0) is ``1 - soft Dice`` per (image, class)
    over the same mask, averaged over the pairs that have any supervised pixel. A batch with no
    supervised element gives a zero loss that still backpropagates (zeros).

    Args:
        logits: (B, C, H, W) raw scores.
        targets: (B, C, H, W) in {0, 1}.
        annotated: (B, C) bool: class c labelled on image b.
        hierarchy, classes: see :func:`supervision`.
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
    targets, mask = supervision(targets.float(), annotated, hierarchy=hierarchy, classes=classes)
    weights = torch.ones(logits.shape[1], device=logits.device, dtype=torch.float32)
    if class_weights is not None:
        weights = torch.as_tensor(class_weights, dtype=torch.float32, device=logits.device)
        if weights.shape != (logits.shape[1],):
            raise ValueError(f"need {logits.shape[1]} class weights, got {tuple(weights.shape)}")
    w = weights.view(1, -1, 1, 1)
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")
    count = mask.sum()
    loss = (w * bce * mask).sum() / count.clamp(min=1.0)
    if dice_weight > 0:
        probs = torch.sigmoid(logits.float()) * mask
        hits = targets * mask
        intersection = (probs * hits).sum(dim=(2, 3))
        total = probs.sum(dim=(2, 3)) + hits.sum(dim=(2, 3))
        dice = (2 * intersection + 1.0) / (total + 1.0)
        pairs = mask.sum(dim=(2, 3)) > 0
        if pairs.any():
            per_pair = (1 - dice) * weights.view(1, -1)
            loss = loss + dice_weight * per_pair[pairs].mean()
    return loss

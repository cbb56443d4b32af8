"""``visionloop train seg``: multi-label segmentation from partial labels.

AdamW with a cosine schedule (one warm-up epoch), mixed precision on CUDA, channels_last,
the masked loss of :mod:`.losses`, validation every epoch with per-class IoU and Dice counted
only on images where the class is annotated, early stopping on the mean IoU, and a run folder::

    <out>/config.json      the resolved configuration, git commit, dataset fingerprints
    <out>/metrics.jsonl    one line per epoch
    <out>/best.pt          the best network's state dict (serve it: --model catseg --weights)
    <out>/last.pt          model, optimiser, schedule, epoch: what ``resume`` continues from

The loop, the run folder, resume, MLflow and data parallelism are the training engine's
(:mod:`visionloop.train.engine`); this module says what one step and one evaluation are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from visionloop.models.catseg import CatSeg, SegNet
from visionloop.train.data import Augment, SegDataset
from visionloop.train.engine import Distributed, EngineConfig, Trainer, fit, load_scaler
from visionloop.train.losses import masked_multilabel_bce, supervision

__all__ = ["SegConfig", "SegTrainer", "evaluate", "train_seg"]


@dataclass
class SegConfig:
    data: Path
    out: Path
    classes: list[str] = field(default_factory=lambda: ["cat", "animal"])
    labels: Path | None = None  # another labels.csv for data (a partial split)
    val_data: Path | None = None  # a separate, fully labelled folder; else val_fraction
    val_fraction: float = 0.2
    size: int = 128
    epochs: int = 20
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    dice_weight: float = 0.0
    class_weights: list[float] | None = None
    hierarchy: dict[str, str] = field(default_factory=dict)
    patience: int = 5
    seed: int = 0
    device: str = "cpu"
    workers: int = 0
    pretrained: bool = True
    resume: bool = False
    max_batches: int | None = None  # per epoch, for smoke tests
    steps: int | None = None  # a budget of optimisation steps (stops mid-epoch if need be)
    warmup: float | None = None  # warm-up as a share of all steps; None: one epoch
    # The mistake the masked loss prevents, kept for the study: a class not annotated on an
    # image is trained as background there.
    unannotated_as_background: bool = False

    def __post_init__(self) -> None:
        unknown = {*self.hierarchy, *self.hierarchy.values()} - set(self.classes)
        if unknown:
            raise ValueError(f"hierarchy names classes not trained: {sorted(unknown)}")
        if not 0 < self.val_fraction < 1 and self.val_data is None:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.warmup is not None and not 0 <= self.warmup < 1:
            raise ValueError(f"warmup must be in [0, 1), got {self.warmup}")


def train_seg(
    config: SegConfig, on_epoch: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Train; returns the best epoch's metrics. Resumes from ``out/last.pt`` if asked (the
    run's trainer, configuration and data must match: :class:`~.engine.RunMismatch`)."""
    engine = EngineConfig(
        out=config.out, epochs=config.epochs, patience=config.patience, seed=config.seed,
        device=config.device, resume=config.resume, workers=config.workers,
        max_batches=config.max_batches, max_steps=config.steps,
    )  # fmt: skip
    return fit(SegTrainer(config), engine, on_epoch)


class SegTrainer(Trainer):
    """catseg (Lite0 + FPN) with the masked multi-label loss, judged by the mean IoU."""

    kind = "seg"
    monitor = "mean_iou"
    mode = "max"

    def __init__(self, config: SegConfig) -> None:
        self.settings = config
        self.train_data, self.val_data = _datasets(config)

    def config(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.settings).items()}

    def fingerprints(self) -> dict[str, Any]:
        return {
            "train_images": len(self.train_data), "val_images": len(self.val_data),
            "train_fingerprint": self.train_data.fingerprint(),
            "val_fingerprint": self.val_data.fingerprint(),
        }  # fmt: skip

    def train_set(self) -> SegDataset:
        return self.train_data

    @property
    def batch_size(self) -> int:
        return self.settings.batch_size

    def drop_last(self, examples: int, batch: int) -> bool:
        """A last training batch of one image breaks BatchNorm ("expected more than 1 value
        per channel"): drop it, as long as that leaves a batch."""
        return examples % batch == 1 and examples > batch

    def setup(self, dist: Distributed, steps: int, epoch_steps: int) -> None:
        config = self.settings
        network = SegNet(len(config.classes), pretrained=config.pretrained).to(dist.device)
        self.network = network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.trained = dist.wrap(self.network)
        self.model = CatSeg(self.network, size=config.size, classes=config.classes)
        self.model.device = dist.device
        self.model._set_normalisation()  # its mean and scale on the training device too
        self.optimiser = torch.optim.AdamW(
            self.network.parameters(), config.lr, weight_decay=config.weight_decay
        )
        warmup = epoch_steps if config.warmup is None else round(config.warmup * steps)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimiser, _cosine(steps, warmup=warmup)
        )
        self.amp = dist.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

    def start_epoch(self, epoch: int) -> None:
        self.train_data.epoch = epoch
        self.trained.train()

    def step(self, batch: Any, step: int) -> dict[str, torch.Tensor]:
        config, device = self.settings, self.model.device
        images, targets, annotated = batch
        x = self.model.normalise(images.to(device)).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, enabled=self.amp):
            logits = self.trained(x)
        if config.unannotated_as_background:
            annotated = torch.ones_like(annotated)
        loss = masked_multilabel_bce(
            logits.float(), targets.to(device), annotated.to(device),
            class_weights=config.class_weights, dice_weight=config.dice_weight,
            hierarchy=config.hierarchy, classes=config.classes,
        )  # fmt: skip
        self.optimiser.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        self.scaler.step(self.optimiser)
        self.scaler.update()
        self.schedule.step()
        return {"train_loss": loss.detach()}

    def evaluate(self) -> dict[str, float]:
        return evaluate(self.model, self.val_data, self.settings)

    def state(self) -> dict[str, Any]:
        return {
            "network": self.network.state_dict(), "optimiser": self.optimiser.state_dict(),
            "schedule": self.schedule.state_dict(), "scaler": self.scaler.state_dict(),
        }  # fmt: skip

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.network.load_state_dict(state["network"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.schedule.load_state_dict(state["schedule"])
        load_scaler(self.scaler, state.get("scaler"))

    def best_weights(self) -> dict[str, torch.Tensor]:
        return dict(self.network.state_dict())


def _datasets(config: SegConfig) -> tuple[SegDataset, SegDataset]:
    augment = Augment()
    train_set = SegDataset(
        config.data, config.classes, size=config.size, augment=augment,
        labels=config.labels, seed=config.seed,
    )  # fmt: skip
    if config.val_data is not None:
        return train_set, SegDataset(config.val_data, config.classes, size=config.size)
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(config.seed))
    cut = max(1, int(len(order) * config.val_fraction))
    val_set = SegDataset(
        config.data, config.classes, size=config.size, labels=config.labels, seed=config.seed
    )
    val_set.samples = [train_set.samples[i] for i in order[:cut].tolist()]
    train_set.samples = [train_set.samples[i] for i in order[cut:].tolist()]
    return train_set, val_set


def _cosine(total: int, warmup: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _loader(data: SegDataset, config: SegConfig) -> torch.utils.data.DataLoader[Any]:
    """In order; its own generator, so evaluating leaves the global random state alone."""
    return torch.utils.data.DataLoader(
        data, batch_size=config.batch_size, shuffle=False, num_workers=config.workers,
        generator=torch.Generator().manual_seed(config.seed + data.epoch),
    )  # fmt: skip


@torch.no_grad()
def evaluate(model: CatSeg, data: SegDataset, config: SegConfig) -> dict[str, float]:
    """Per-class IoU and Dice over the pixels of images where the class is annotated
    (dataset-level: intersections and unions summed over images), and their mean IoU."""
    network = model.network.eval()
    classes = len(config.classes)
    inter, union, sizes = torch.zeros(classes), torch.zeros(classes), torch.zeros(classes)
    for images, targets, annotated in _loader(data, config):
        x = model.normalise(images.to(model.device)).contiguous(memory_format=torch.channels_last)
        predicted = network(x).float().sigmoid().cpu() >= 0.5
        truth, mask = supervision(targets, annotated)  # no hierarchy: judge what was labelled
        counted = mask.bool()
        positive = truth.bool()
        inter += (predicted & positive & counted).sum(dim=(0, 2, 3)).float()
        union += ((predicted | positive) & counted).sum(dim=(0, 2, 3)).float()
        sizes += (
            (predicted & counted).sum(dim=(0, 2, 3)) + (positive & counted).sum(dim=(0, 2, 3))
        ).float()
    metrics: dict[str, float] = {}
    for i, name in enumerate(config.classes):
        metrics[f"iou_{name}"] = round(float(inter[i] / union[i]) if union[i] else 0.0, 5)
        metrics[f"dice_{name}"] = round(float(2 * inter[i] / sizes[i]) if sizes[i] else 0.0, 5)
    metrics["mean_iou"] = round(sum(metrics[f"iou_{c}"] for c in config.classes) / classes, 5)
    return metrics

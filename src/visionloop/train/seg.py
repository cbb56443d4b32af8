"""``visionloop train seg``: multi-label segmentation from partial labels.

AdamW with a cosine schedule (one warm-up epoch), mixed precision on CUDA, channels_last,
the masked loss of :mod:`.losses`, validation every epoch with per-class IoU and Dice counted
only on images where the class is annotated, early stopping on the mean IoU, and a run folder::

    <out>/config.json      the resolved configuration, git commit, dataset fingerprints
    <out>/metrics.jsonl    one line per epoch
    <out>/best.pt          the best network's state dict (serve it: --model catseg --weights)
    <out>/last.pt          model, optimiser, schedule, epoch: what ``resume`` continues from

Logs to MLflow too when it is installed.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from visionloop.models.catseg import CatSeg, SegNet
from visionloop.train.data import Augment, SegDataset
from visionloop.train.losses import masked_multilabel_bce, supervision

__all__ = ["SegConfig", "evaluate", "train_seg"]


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
    # The mistake the masked loss prevents, kept for the study: a class not annotated on an
    # image is trained as background there.
    unannotated_as_background: bool = False

    def __post_init__(self) -> None:
        unknown = {*self.hierarchy, *self.hierarchy.values()} - set(self.classes)
        if unknown:
            raise ValueError(f"hierarchy names classes not trained: {sorted(unknown)}")
        if not 0 < self.val_fraction < 1 and self.val_data is None:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")


def train_seg(
    config: SegConfig, on_epoch: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Train; returns the best epoch's metrics. Resumes from ``out/last.pt`` if asked."""
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    train_set, val_set = _datasets(config)
    network = SegNet(len(config.classes), pretrained=config.pretrained).to(device)
    network = network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    model = CatSeg(network, size=config.size, classes=config.classes)
    optimiser = torch.optim.AdamW(network.parameters(), config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * _batches_per_epoch(train_set, config)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, _cosine(steps, warmup=steps // config.epochs)
    )
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    config.out.mkdir(parents=True, exist_ok=True)
    start, best, stale = 0, {"mean_iou": -1.0}, 0
    if config.resume and (config.out / "last.pt").is_file():
        state = torch.load(config.out / "last.pt", map_location=device, weights_only=True)
        network.load_state_dict(state["network"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        start, best, stale = state["epoch"] + 1, state["best"], state["stale"]
    _write_config(config, train_set, val_set, resumed_at=start)
    mlflow = _mlflow(config)
    for epoch in range(start, config.epochs):
        started = time.perf_counter()
        train_set.epoch = epoch
        loss = _train_epoch(model, train_set, config, optimiser, schedule, scaler, amp, epoch)
        metrics = {"epoch": epoch, "train_loss": loss, **evaluate(model, val_set, config)}
        metrics["seconds"] = round(time.perf_counter() - started, 2)
        improved = metrics["mean_iou"] > best["mean_iou"]
        if improved:
            best, stale = metrics, 0
            torch.save(network.state_dict(), config.out / "best.pt")
        else:
            stale += 1
        with (config.out / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        torch.save(
            {"network": network.state_dict(), "optimiser": optimiser.state_dict(),
             "schedule": schedule.state_dict(), "epoch": epoch, "best": best, "stale": stale},
            config.out / "last.pt",
        )  # fmt: skip
        if mlflow is not None:
            mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, float)}, epoch)
        if on_epoch is not None:
            on_epoch(metrics)
        if stale >= config.patience:
            break
    if mlflow is not None:
        mlflow.end_run()
    return best


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


def _drop_last(data: SegDataset, config: SegConfig) -> bool:
    """A last training batch of one image breaks BatchNorm ("expected more than 1 value per
    channel"): drop it, as long as that leaves a batch."""
    return len(data) % config.batch_size == 1 and len(data) > config.batch_size


def _batches_per_epoch(data: SegDataset, config: SegConfig) -> int:
    batches = math.ceil(len(data) / config.batch_size) - _drop_last(data, config)
    return min(batches, config.max_batches) if config.max_batches else batches


def _cosine(total: int, warmup: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _loader(data: SegDataset, config: SegConfig, shuffle: bool) -> torch.utils.data.DataLoader[Any]:
    generator = torch.Generator().manual_seed(config.seed + data.epoch)
    return torch.utils.data.DataLoader(
        data, batch_size=config.batch_size, shuffle=shuffle, num_workers=config.workers,
        generator=generator, drop_last=shuffle and _drop_last(data, config),
    )  # fmt: skip


def _train_epoch(
    model: CatSeg,
    data: SegDataset,
    config: SegConfig,
    optimiser: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    amp: bool,
    epoch: int,
) -> float:
    from rich.progress import Progress

    network = model.network.train()
    total, count = 0.0, 0
    limit = _batches_per_epoch(data, config)
    # enable_grad: whatever the caller's mode, training needs gradients
    with torch.enable_grad(), Progress(transient=True) as progress:
        task = progress.add_task(f"epoch {epoch}", total=limit)
        for index, (images, targets, annotated) in enumerate(_loader(data, config, True)):
            if index >= limit:
                break
            device = model.device
            x = model.normalise(images.to(device)).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, enabled=amp):
                logits = network(x)
            if config.unannotated_as_background:
                annotated = torch.ones_like(annotated)
            loss = masked_multilabel_bce(
                logits.float(), targets.to(device), annotated.to(device),
                class_weights=config.class_weights, dice_weight=config.dice_weight,
                hierarchy=config.hierarchy, classes=config.classes,
            )  # fmt: skip
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
            scaler.step(optimiser)
            scaler.update()
            schedule.step()
            total += float(loss.detach()) * len(images)
            count += len(images)
            progress.advance(task)
    network.eval()
    return round(total / max(1, count), 5)


@torch.no_grad()
def evaluate(model: CatSeg, data: SegDataset, config: SegConfig) -> dict[str, float]:
    """Per-class IoU and Dice over the pixels of images where the class is annotated
    (dataset-level: intersections and unions summed over images), and their mean IoU."""
    network = model.network.eval()
    classes = len(config.classes)
    inter, union, sizes = torch.zeros(classes), torch.zeros(classes), torch.zeros(classes)
    for images, targets, annotated in _loader(data, config, False):
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


def _write_config(
    config: SegConfig, train_set: SegDataset, val_set: SegDataset, resumed_at: int
) -> None:
    resolved = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}
    resolved.update(
        git_commit=_git_commit(),
        torch=torch.__version__,
        train_images=len(train_set),
        val_images=len(val_set),
        train_fingerprint=train_set.fingerprint(),
        val_fingerprint=val_set.fingerprint(),
        resumed_at_epoch=resumed_at,
    )
    (config.out / "config.json").write_text(json.dumps(resolved, indent=2))


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=5,
            cwd=Path(__file__).parent,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def _mlflow(config: SegConfig) -> Any:
    try:
        import mlflow
    except ImportError:
        return None
    mlflow.start_run(run_name=config.out.name)
    mlflow.log_params({k: str(v) for k, v in asdict(config).items()})
    return mlflow

"""BatchNorm and domain shift, shown on a small CNN in about a minute on a CPU.

A synthetic two-domain task: tell horizontal from vertical stripes (random frequency and phase).
The *source* domain is cool-toned and high-contrast; the *target* domain (a "new camera") is
warm-toned, brighter and low-contrast. The same small BatchNorm CNN is used throughout.

(a) Trained on the source, evaluated on the target before and after ``recalibrate_bn`` on
    *unlabelled* target images (no label, no gradient: only the running statistics change).
(b) "100k yellow, then 100k red": the same network learns yellow vs red images (stripes of any
    orientation on top, as a distraction), once from shuffled data and once from class-ordered
    data (one pass: every yellow batch, then every red batch); both evaluated on shuffled test
    images; then the ordered one after recalibration on shuffled training images. Over several
    seeds, because the ordered run's outcome is erratic (that is the pitfall).
(c) ``bn_drift`` of the source-trained model on source vs target batches (the server's drift
    gauge), and on target batches after recalibration.

Run: .venv/bin/python examples/batchnorm_domain_shift.py [--seed 0] [--json out/bn_demo.json]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from visionloop.bn import bn_drift, recalibrate_bn

SIZE = 24


@dataclass(frozen=True)
class Domain:
    name: str
    base: tuple[float, float, float]  # mean colour
    contrast: float  # stripe amplitude
    noise: float


SOURCE = Domain("source", (0.35, 0.45, 0.6), 0.3, 0.08)
TARGET = Domain("target", (0.85, 0.6, 0.3), 0.1, 0.05)


def images(domain: Domain, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images (N, 3, SIZE, SIZE) and labels: 0 horizontal stripes, 1 vertical."""
    labels = torch.randint(0, 2, (n,), generator=generator)
    frequency = 2 + 3 * torch.rand(n, 1, generator=generator)
    phase = 2 * math.pi * torch.rand(n, 1, generator=generator)
    coords = torch.arange(SIZE).float() / SIZE
    wave = torch.sin(2 * math.pi * frequency * coords + phase)  # (n, SIZE)
    rows = wave[:, :, None].expand(n, SIZE, SIZE)  # varies down the image: horizontal stripes
    cols = wave[:, None, :].expand(n, SIZE, SIZE)
    pattern = torch.where(labels[:, None, None] == 0, rows, cols)
    base = torch.tensor(domain.base).view(1, 3, 1, 1)
    noise = domain.noise * torch.randn(n, 3, SIZE, SIZE, generator=generator)
    return base + domain.contrast * pattern[:, None] + noise, labels


def colours(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` yellow (0) or red (1) images with stripes of either orientation."""
    x, _ = images(SOURCE, n, generator)
    labels = torch.randint(0, 2, (n,), generator=generator)
    yellow, red = torch.tensor([0.85, 0.75, 0.2]), torch.tensor([0.85, 0.3, 0.2])
    tint = torch.where(labels[:, None] == 0, yellow, red)[:, :, None, None]
    return x - torch.tensor(SOURCE.base).view(1, 3, 1, 1) + tint, labels


def network() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 2),
    )  # fmt: skip


def train(
    x: torch.Tensor, y: torch.Tensor, *, ordered: bool, seed: int, epochs: int = 2
) -> nn.Module:
    torch.manual_seed(seed)
    model = network()
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        order = torch.argsort(y, stable=True) if ordered else torch.randperm(len(y))
        model.train()
        for batch in order.split(64):
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


def mean_drift(model: nn.Module, x: torch.Tensor) -> float:
    scores = [bn_drift(model, batch).score for batch in x.split(64)]
    return sum(scores) / len(scores)


def _spread(values: list[float]) -> str:
    return f"{sum(values) / len(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=4096, help="training images")
    parser.add_argument("--repeats", type=int, default=5, help="seeds for (b)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    g = torch.Generator().manual_seed(args.seed)
    src_x, src_y = images(SOURCE, args.train, g)
    src_test_x, src_test_y = images(SOURCE, 1024, g)
    tgt_unlabelled, _ = images(TARGET, 1024, g)  # labels thrown away
    tgt_test_x, tgt_test_y = images(TARGET, 1024, g)

    shuffled = train(src_x, src_y, ordered=False, seed=args.seed)
    source_acc = accuracy(shuffled, src_test_x, src_test_y)
    target_before = accuracy(shuffled, tgt_test_x, tgt_test_y)
    drift_source = mean_drift(shuffled, src_test_x)
    drift_target = mean_drift(shuffled, tgt_test_x)
    adapted = train(src_x, src_y, ordered=False, seed=args.seed)  # same seed: same weights
    recalibrate_bn(adapted, tgt_unlabelled.split(64))
    target_after = accuracy(adapted, tgt_test_x, tgt_test_y)
    drift_target_after = mean_drift(adapted, tgt_test_x)

    col_shuffled, col_ordered, col_recalibrated = [], [], []
    for seed in range(args.seed, args.seed + args.repeats):  # fragile: so over several seeds
        gb = torch.Generator().manual_seed(seed)
        col_x, col_y = colours(args.train, gb)
        col_test_x, col_test_y = colours(1024, gb)
        shuffled_model = train(col_x, col_y, ordered=False, seed=seed, epochs=1)
        col_shuffled.append(accuracy(shuffled_model, col_test_x, col_test_y))
        ordered = train(col_x, col_y, ordered=True, seed=seed, epochs=1)
        col_ordered.append(accuracy(ordered, col_test_x, col_test_y))
        recalibrate_bn(ordered, col_x[torch.randperm(len(col_x), generator=gb)].split(64))
        col_recalibrated.append(accuracy(ordered, col_test_x, col_test_y))

    figures = {
        "seed": args.seed,
        "a_source_accuracy": source_acc,
        "a_target_accuracy_before": target_before,
        "a_target_accuracy_after_recalibration": target_after,
        "b_shuffled_accuracy": col_shuffled,
        "b_class_ordered_accuracy": col_ordered,
        "b_class_ordered_then_recalibrated_accuracy": col_recalibrated,
        "c_drift_source": drift_source,
        "c_drift_target": drift_target,
        "c_drift_target_after_recalibration": drift_target_after,
        "seconds": time.perf_counter() - started,
    }
    print(
        f"""| experiment | figure |
| --- | ---: |
| (a) source-trained, accuracy on source | {source_acc:.3f} |
| (a) same model on the target domain | {target_before:.3f} |
| (a) after recalibrate_bn on 1024 unlabelled target images | {target_after:.3f} |
| (b) yellow vs red, one pass over shuffled data: accuracy | {_spread(col_shuffled)} |
| (b) yellow vs red, one pass, all yellow then all red: accuracy | {_spread(col_ordered)} |
| (b) the class-ordered model recalibrated on shuffled images | {_spread(col_recalibrated)} |
| (c) drift score, source batches | {drift_source:.3f} |
| (c) drift score, target batches | {drift_target:.3f} |
| (c) drift score, target batches after recalibration | {drift_target_after:.3f} |

seed {args.seed}, {args.train} training images; (b) mean [min, max] over seeds \
{args.seed}-{args.seed + args.repeats - 1}; {figures["seconds"]:.0f} s"""
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

"""A small trainer for the engine's tests: a conv net (no BatchNorm) regressing a fixed random
target from random images, Adam, an EMA copy; its loss can be made to blow up at a chosen step.

Run as a script it trains into ``sys.argv[1]`` (``torchrun`` runs it as N processes)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionloop.train.engine import EMA, Distributed, EngineConfig, Trainer, fit


class Toy(Trainer):
    kind = "toy"
    monitor = "val_loss"
    mode = "min"

    def __init__(self, examples: int = 24, batch: int = 8, lr: float = 1e-2,
                 explode_at: int | None = None) -> None:  # fmt: skip
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(examples, 3, 8, 8, generator=generator)
        self.y = self.x.mean(dim=1, keepdim=True) * 2 + 0.5
        self.batch, self.lr, self.explode_at = batch, lr, explode_at

    def config(self) -> dict[str, Any]:
        return {"batch": self.batch, "lr": self.lr}

    def fingerprints(self) -> dict[str, Any]:
        return {"examples": len(self.x)}

    def train_set(self) -> Any:
        return torch.utils.data.TensorDataset(self.x, self.y)

    @property
    def batch_size(self) -> int:
        return self.batch

    def setup(self, dist: Distributed, steps: int, epoch_steps: int) -> None:
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 1))
        self.trained = dist.wrap(self.net)
        self.optimiser = torch.optim.Adam(self.net.parameters(), self.lr)
        self.ema = EMA(self.net, 0.9)

    def step(self, batch: Any, step: int) -> dict[str, torch.Tensor]:
        x, y = batch
        loss = nn.functional.mse_loss(self.trained(x), y)
        self.optimiser.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimiser.step()
        self.ema.update(self.net)
        if self.explode_at is not None and step >= self.explode_at:
            return {"loss": torch.tensor(float("nan"))}
        return {"loss": loss.detach()}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        return {"val_loss": float(nn.functional.mse_loss(self.ema.module(self.x), self.y))}

    def state(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "optimiser": self.optimiser.state_dict(),
                "ema": self.ema.state_dict()}  # fmt: skip

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.ema.load_state_dict(state["ema"])

    def best_weights(self) -> dict[str, torch.Tensor]:
        return dict(self.ema.module.state_dict())


if __name__ == "__main__":
    torch.manual_seed(0)
    fit(Toy(), EngineConfig(out=Path(sys.argv[1]), epochs=3, patience=10, seed=3))

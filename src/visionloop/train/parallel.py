"""The parts of the training engine that deal with many copies of a network: the moving
average of its weights (:class:`EMA`), this process's place in a ``torchrun`` job
(:class:`Distributed`) and the sampler that splits each epoch among the processes
(:class:`EpochSampler`). :mod:`visionloop.train.engine` runs the loop with them."""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["EMA", "Distributed", "EpochSampler"]


class EMA:
    """An exponential moving average of a module's weights **and** buffers (``decay`` 0.999:
    the copy follows the last ~1000 steps). Float buffers are averaged like weights (BatchNorm
    statistics, spectral norm's vectors); integer buffers (batch counters) are copied.

    ``warmup``: the decay of update ``n`` is ``min(decay, (1 + n) / (10 + n))``, so a copy made
    from a random start follows the first steps closely instead of keeping ~74 % of its random
    weights after 300 steps (0.999 ** 300); short runs need it."""

    def __init__(self, module: nn.Module, decay: float = 0.999, warmup: bool = False) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup, self.updates = decay, warmup, 0
        self.module = copy.deepcopy(_unwrapped(module)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        decay = self.decay
        if self.warmup:
            decay = min(decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        source = _unwrapped(module).state_dict()
        for name, value in self.module.state_dict().items():
            new = source[name].detach()
            if value.dtype.is_floating_point:
                value.lerp_(new.to(value.dtype), 1.0 - decay)
            else:
                value.copy_(new)

    def state_dict(self) -> dict[str, Any]:
        """For a checkpoint: the averaged module's state and the update count."""
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


class Distributed:
    """This process's place in a ``torchrun`` job (rank 0 of 1 without one)."""

    def __init__(self, device: str) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        base = torch.device(device)
        if base.type == "cuda" and self.world > 1:
            base = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(base)
        self.device = base
        self.started = False
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if base.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend)
            self.started = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` under DistributedDataParallel in a job, else itself."""
        if self.world == 1:
            return module
        if self.device.type == "cuda":  # one set of BatchNorm statistics over the global batch
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)  # type: ignore[no-untyped-call]
            return nn.parallel.DistributedDataParallel(module, device_ids=[self.device.index])
        # gloo has no SyncBatchNorm: each process normalises with its own batch's statistics
        return nn.parallel.DistributedDataParallel(module)

    def per_process(self, batch_size: int) -> int:
        if batch_size % self.world:
            raise ValueError(
                f"the batch size ({batch_size}) must divide among the {self.world} processes"
            )
        return batch_size // self.world

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Means over the processes (the epoch's losses as one process would report them)."""
        if self.world == 1 or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return {k: float(v) / self.world for k, v in zip(keys, t.tolist(), strict=True)}

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any process (every process must call it)."""
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0])
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item() > 0)

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` on every process (its decisions: BatchNorm statistics differ
        per process, so their evaluations may too)."""
        if self.world == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.started:
            torch.distributed.destroy_process_group()
            self.started = False


class EpochSampler(torch.utils.data.Sampler[int]):
    """Each epoch a permutation of ``range(n)`` from a generator seeded ``seed + epoch``
    (after one draw, as a shuffling DataLoader with that generator makes); a process takes
    every ``world``-th index from its ``rank`` (the permutation padded by its first indices to
    a multiple of ``world``), so the processes' batches together are one process's batch."""

    def __init__(self, n: int, world: int = 1, rank: int = 0, seed: int = 0) -> None:
        self.n, self.world, self.rank, self.seed, self.epoch = n, world, rank, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.n / self.world)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        torch.empty((), dtype=torch.int64).random_(generator=generator)
        order = torch.randperm(self.n, generator=generator).tolist()
        order += order[: len(self) * self.world - self.n]
        return iter(order[self.rank :: self.world])


def _unwrapped(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module

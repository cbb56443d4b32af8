"""One training engine for every trainer (``train seg``, ``train gan``): the run folder, its
config and data fingerprints, resume, early stopping, divergence, EMA, mixed precision on CUDA,
MLflow when asked for (``MLFLOW_TRACKING_URI``), and data-parallel training through
``torchrun`` (gloo on the CPU, NCCL on GPUs).

A trainer (:class:`Trainer`) says what one optimisation step is, how to evaluate, and what its
state is; :func:`fit` runs the epochs. The run folder::

    <out>/config.json      the trainer, its resolved configuration, the data fingerprints,
                           git commit, torch version, world size; a resume must match it
    <out>/metrics.jsonl    one line per epoch: the step losses' means, the evaluation, seconds
    <out>/best.pt          the weights to serve (a state dict), from the best evaluation
    <out>/last.pt          everything a resume continues from (weights, optimisers, schedules,
                           EMA, epoch, best, patience count)
    <out>/diverged.json    only when a loss went non-finite or past the limit: the step and
                           the losses; best.pt and last.pt are the last good epoch's

**Data parallel.** ``torchrun --nproc-per-node N -m visionloop train ...`` starts N processes;
each takes every N-th example of the epoch's permutation (``DistributedSampler``: the same
permutation as one process with the same seed) in batches of ``batch_size / N``, gradients are
averaged by ``DistributedDataParallel``: the same global batch as one process. Only rank 0
writes the run folder, logs and reports epochs; every rank evaluates, and rank 0's numbers
decide the best epoch and stopping for all (BatchNorm statistics differ per process on the
CPU, where gloo has no SyncBatchNorm; on GPUs BatchNorm is synchronised). A loss that goes bad
on any process stops every process at that step.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from visionloop.train.parallel import EMA, Distributed, EpochSampler

__all__ = [
    "EMA",
    "Distributed",
    "Diverged",
    "EngineConfig",
    "EpochSampler",
    "RunMismatch",
    "Trainer",
    "fit",
    "git_commit",
    "load_scaler",
]

# Settings that may change between a run and its resume without changing what it computes.
VOLATILE = frozenset(
    {"out", "resume", "workers", "epochs", "patience", "device", "max_batches", "steps"}
)


class RunMismatch(ValueError):
    """A resume into a run folder made by another trainer or another configuration."""


class Diverged(RuntimeError):
    """A loss went non-finite or past the limit; the last good checkpoint (if an epoch
    finished) is kept."""

    def __init__(
        self, step: int, epoch: int, losses: Mapping[str, float], out: Path,
        kept_epoch: int | None = None,
    ) -> None:  # fmt: skip
        shown = ", ".join(f"{k}={v:.4g}" for k, v in losses.items()) or "on another process"
        kept = (
            f"the last good checkpoint (epoch {kept_epoch}) is kept in {out / 'last.pt'}"
            if kept_epoch is not None
            else "no epoch had finished, so no checkpoint was written"
        )
        super().__init__(f"training diverged at step {step} (epoch {epoch}): {shown}; {kept}")
        self.step, self.epoch, self.losses = step, epoch, dict(losses)
        self.kept_epoch = kept_epoch


@dataclass
class EngineConfig:
    out: Path
    epochs: int = 20
    patience: int = 5  # epochs without a better monitored metric
    seed: int = 0
    device: str = "cpu"
    resume: bool = False
    workers: int = 0
    divergence_limit: float = 1e4  # a step loss above this (or non-finite) stops the run
    max_batches: int | None = None  # per epoch, for smoke tests
    # A budget of optimisation steps over the whole run: training stops after this many even
    # mid-epoch (that epoch is evaluated and checkpointed as usual); schedules span
    # min(epochs x batches, max_steps). Studies use it to give every arm the same budget.
    max_steps: int | None = None


class Trainer(ABC):
    """What :func:`fit` needs of a trainer. ``setup`` builds networks and optimisers (wrapping
    the trained ones with ``dist.wrap``); ``step`` runs one optimisation step on a batch and
    returns its losses; ``evaluate`` returns metrics including ``monitor``."""

    kind: str
    monitor: str
    mode: Literal["max", "min"] = "max"

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """The resolved configuration (JSON values): what a resume must match."""

    @abstractmethod
    def fingerprints(self) -> dict[str, Any]:
        """What identifies the data (and sizes), written to config.json and matched too."""

    @abstractmethod
    def train_set(self) -> torch.utils.data.Dataset[Any]: ...

    @property
    @abstractmethod
    def batch_size(self) -> int:
        """The global batch (split among processes)."""

    def drop_last(self, examples: int, batch: int) -> bool:
        """Whether to drop an epoch's last, short batch (``examples`` per process, in
        batches of ``batch``)."""
        return False

    @abstractmethod
    def setup(self, dist: Distributed, steps: int, epoch_steps: int) -> None:
        """Build networks, optimisers and schedules for ``steps`` optimisation steps."""

    @abstractmethod
    def step(self, batch: Any, step: int) -> dict[str, torch.Tensor]:
        """One optimisation step; the losses (detached or not) to log and watch."""

    @abstractmethod
    def evaluate(self) -> dict[str, float]: ...

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """Everything a resume needs (state dicts)."""

    @abstractmethod
    def load_state(self, state: Mapping[str, Any]) -> None: ...

    @abstractmethod
    def best_weights(self) -> dict[str, torch.Tensor]:
        """What best.pt holds: the state dict to serve (e.g. the EMA generator)."""

    def start_epoch(self, epoch: int) -> None:  # noqa: B027 (optional hook)
        """Called before each epoch (e.g. to seed augmentation)."""


def fit(
    trainer: Trainer, engine: EngineConfig, on_epoch: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Train for ``engine.epochs`` (or until ``patience`` epochs pass without a better
    ``trainer.monitor``); returns the best epoch's metrics.

    Raises:
        RunMismatch: ``resume`` into a folder of another trainer or configuration.
        Diverged: a loss went non-finite or past ``divergence_limit``.
    """
    dist = Distributed(engine.device)
    try:
        return _fit(trainer, engine, dist, on_epoch)
    finally:
        dist.close()


def _fit(
    trainer: Trainer,
    engine: EngineConfig,
    dist: Distributed,
    on_epoch: Callable[[dict[str, Any]], None] | None,
) -> dict[str, Any]:
    torch.manual_seed(engine.seed)
    out = engine.out
    data = trainer.train_set()
    sampler = EpochSampler(len(data), dist.world, dist.rank, engine.seed)  # type: ignore[arg-type]
    per_process = dist.per_process(trainer.batch_size)
    drop, batches, total = _steps(trainer, engine, len(sampler), per_process)
    trainer.setup(dist, total, batches)
    record = _record(trainer, engine, dist)
    start, step, best, stale = _start(trainer, engine, dist, record)
    tracker = _Tracker(out, record) if dist.main else None
    kept = start - 1 if start else None  # the epoch last.pt holds
    failed = True
    try:
        for epoch in range(start, engine.epochs):
            if step >= total:  # a resume of a run that had spent its step budget
                break
            started = time.perf_counter()
            sampler.set_epoch(epoch)
            trainer.start_epoch(epoch)
            loader = torch.utils.data.DataLoader(
                data,
                batch_size=per_process,
                sampler=sampler,
                num_workers=engine.workers,
                drop_last=drop,
                generator=torch.Generator().manual_seed(engine.seed + epoch),
            )  # fmt: skip (its own generator: the global random state is the model's alone)
            losses, step = _epoch(
                trainer, loader, min(batches, total - step), epoch, step, engine, dist, kept
            )
            metrics: dict[str, Any] = {"epoch": epoch, **dist.mean(losses)}
            metrics |= trainer.evaluate()
            metrics["seconds"] = round(time.perf_counter() - started, 2)
            metrics = dist.share(metrics)
            improved = _improves(trainer, metrics[trainer.monitor], best.get(trainer.monitor))
            best, stale = (metrics, 0) if improved else (best, stale + 1)
            if dist.main:
                state = {"epoch": epoch, "step": step, "best": best, "stale": stale}
                _keep(trainer, out, metrics, improved, state, tracker, on_epoch)
            kept = epoch
            if stale >= engine.patience or step >= total:
                break
        failed = False
    except Diverged as exc:
        if dist.main:
            (out / "diverged.json").write_text(
                json.dumps({"step": exc.step, "epoch": exc.epoch, "losses": exc.losses}) + "\n"
            )
        raise
    finally:
        if tracker is not None:
            tracker.finish(out, failed)
    return best


def _improves(trainer: Trainer, value: float, previous: float | None) -> bool:
    """Whether ``value`` of the monitored metric beats the best so far."""
    if previous is None:
        return True
    return value > previous if trainer.mode == "max" else value < previous


def _steps(
    trainer: Trainer, engine: EngineConfig, samples: int, per_process: int
) -> tuple[bool, int, int]:
    """Whether to drop the last short batch, batches per epoch, and optimiser steps in all."""
    drop = trainer.drop_last(samples, per_process)
    batches = math.ceil(samples / per_process) - int(drop)
    if engine.max_batches:
        batches = min(batches, engine.max_batches)
    batches = max(1, batches)
    total = engine.epochs * batches
    if engine.max_steps is not None:
        if engine.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {engine.max_steps}")
        total = min(total, engine.max_steps)
    return drop, batches, total


def _start(
    trainer: Trainer, engine: EngineConfig, dist: Distributed, record: dict[str, Any]
) -> tuple[int, int, dict[str, Any], int]:
    """Where the run starts (epoch, step, best metrics, epochs without improvement): from
    ``last.pt`` when resuming, else from nothing, with the run folder cleared of an earlier
    run's files; the config written either way."""
    out = engine.out
    start, step, best, stale = 0, 0, {trainer.monitor: None}, 0
    last = out / "last.pt"
    if engine.resume and last.is_file():
        _check_resume(out, record)
        try:
            state = torch.load(last, map_location=dist.device, weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
            raise RunMismatch(f"cannot resume from {last}: {exc}") from None
        trainer.load_state(state)
        start, step = state["epoch"] + 1, state.get("step", 0)
        best, stale = state["best"], state["stale"]
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        if start == 0:  # a fresh run: nothing of an earlier run in this folder survives
            for name in ("metrics.jsonl", "diverged.json", "last.pt", "best.pt"):
                (out / name).unlink(missing_ok=True)
        (out / "config.json").write_text(
            json.dumps({**record, "resumed_at_epoch": start}, indent=2) + "\n"
        )
    return start, step, best, stale


def _keep(
    trainer: Trainer,
    out: Path,
    metrics: dict[str, Any],
    improved: bool,
    state: dict[str, Any],
    tracker: _Tracker | None,
    on_epoch: Callable[[dict[str, Any]], None] | None,
) -> None:
    """What the main process keeps of an epoch: the best weights when it improved, its
    metrics line, ``last.pt`` (``state``: epoch, step, best, stale), the tracker, the hook."""
    if improved:
        _save(trainer.best_weights(), out / "best.pt")
    with (out / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(metrics) + "\n")
    _save({**trainer.state(), "trainer": trainer.kind, **state}, out / "last.pt")
    if tracker is not None:
        tracker.epoch(metrics, epoch=state["epoch"])
    if on_epoch is not None:
        on_epoch(metrics)


def _epoch(
    trainer: Trainer,
    loader: torch.utils.data.DataLoader[Any],
    batches: int,
    epoch: int,
    step: int,
    engine: EngineConfig,
    dist: Distributed,
    kept: int | None,
) -> tuple[dict[str, float], int]:
    totals: dict[str, float] = {}
    count = 0
    with torch.enable_grad(), _progress(dist.main, f"epoch {epoch}", batches) as advance:
        for index, batch in enumerate(loader):
            if index >= batches:
                break
            losses = {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
                      for k, v in trainer.step(batch, step).items()}  # fmt: skip
            bad = any(not math.isfinite(v) or abs(v) > engine.divergence_limit
                      for v in losses.values())  # fmt: skip
            if dist.any(bad):  # every process stops together: none waits in a collective
                raise Diverged(step, epoch, losses if bad else {}, engine.out, kept)
            for k, v in losses.items():
                totals[k] = totals.get(k, 0.0) + v
            count += 1
            step += 1
            advance()
    return {k: round(v / max(1, count), 5) for k, v in totals.items()}, step


@contextlib.contextmanager
def _progress(show: bool, label: str, total: int) -> Iterator[Callable[[], None]]:
    if not show:
        yield lambda: None
        return
    from rich.progress import Progress

    with Progress(transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda: progress.advance(task)


def _record(trainer: Trainer, engine: EngineConfig, dist: Distributed) -> dict[str, Any]:
    return {
        "trainer": trainer.kind,
        **trainer.config(),
        **trainer.fingerprints(),
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "world_size": dist.world,
    }


def _check_resume(out: Path, record: Mapping[str, Any]) -> None:
    """Refuse a resume whose trainer, configuration or data differ from the run's."""
    try:
        before = json.loads((out / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise RunMismatch(f"{out / 'config.json'} cannot be read to resume: {exc}") from None
    if before.get("trainer", "seg") != record["trainer"]:
        raise RunMismatch(
            f"{out} is a {before.get('trainer', 'seg')!r} run, not a {record['trainer']!r} one: "
            "resume it with its own trainer, or train into a new folder"
        )
    ignored = VOLATILE | {"git_commit", "torch", "world_size", "resumed_at_epoch", "trainer"}
    keys = (set(before) | set(record)) - ignored
    differ = sorted(k for k in keys if before.get(k) != record.get(k))
    if differ:
        shown = "; ".join(f"{k}: {before.get(k)!r} then, {record.get(k)!r} now" for k in differ)
        raise RunMismatch(f"cannot resume {out}: the configuration differs ({shown})")


def load_scaler(scaler: torch.amp.GradScaler, state: Mapping[str, Any] | None) -> None:
    """Restore a GradScaler unless there is nothing to restore: a run saved without mixed
    precision (CPU) resumed with it (CUDA), or the other way, starts with a fresh scale."""
    if state and scaler.is_enabled():
        scaler.load_state_dict(dict(state))


def _save(obj: Any, path: Path) -> None:
    """Write beside ``path`` and rename: a run killed mid-save leaves the previous file."""
    partial = path.with_name(f".{path.name}.partial")
    torch.save(obj, partial)
    os.replace(partial, path)


def git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=5,
            cwd=Path(__file__).parent,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


class _Tracker:
    """MLflow, when it is installed and ``MLFLOW_TRACKING_URI`` names a store (a file folder,
    SQLite or a server: asked for, never a stray ``mlruns`` folder in the working directory):
    the configuration as params, each epoch's numbers as metrics, the run folder's config.json
    and best.pt as artefacts at the end; a failed run is marked FAILED."""

    def __init__(self, out: Path, record: Mapping[str, Any]) -> None:
        self.mlflow = None
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            return
        try:
            import mlflow
        except ImportError:
            return
        self.mlflow = mlflow
        mlflow.start_run(run_name=out.name)
        mlflow.log_params({k: str(v)[:500] for k, v in record.items()})

    def epoch(self, metrics: Mapping[str, Any], epoch: int) -> None:
        if self.mlflow is not None:
            numbers = {k: float(v) for k, v in metrics.items()
                       if isinstance(v, int | float) and k != "epoch"}  # fmt: skip
            self.mlflow.log_metrics(numbers, step=epoch)

    def finish(self, out: Path, failed: bool = False) -> None:
        if self.mlflow is None:
            return
        for name in ("config.json", "best.pt"):
            if (out / name).is_file():
                self.mlflow.log_artifact(str(out / name))
        self.mlflow.end_run(status="FAILED" if failed else "FINISHED")
        self.mlflow = None

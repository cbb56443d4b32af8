"""BatchNorm tools shared by every model: fusion, re-estimation, and a drift score.

At inference a BatchNorm is an affine map per channel with frozen statistics, so it can be
folded into the convolution (or linear layer) that feeds it:

    y = gamma * (W * x + b - mean) / sqrt(var + eps) + beta
      = (s * W) * x + (s * (b - mean) + beta),   with s = gamma / sqrt(var + eps)

The fused model computes the same function with one fewer pass over every activation.

The same running statistics are BatchNorm's weak point: a new camera or domain shifts the
statistics of every layer's input. :func:`recalibrate_bn` re-estimates them on unlabelled images
of the new domain; :func:`bn_drift` measures how far a batch's statistics are from them.
"""

from __future__ import annotations

import copy
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import torch
from torch import nn

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_FOLDABLE = (*_CONV_TYPES, nn.Linear)
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
Foldable = nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear
BatchNorm = nn.modules.batchnorm._BatchNorm

__all__ = [
    "TRACE_GUARD",
    "DriftReport",
    "FusionReport",
    "RecalibrationReport",
    "bn_drift",
    "fold_bn",
    "fuse",
    "fuse_conv_bn",
    "recalibrate_bn",
]


# -- fusion ----------------------------------------------------------------------------------


@dataclass
class FusionReport:
    """What :func:`fuse` did: the pairs it folded, and every BatchNorm it left, with why."""

    method: str  # "fx" (traced the model's forward) or "sequential" (module order)
    fused: list[tuple[str, str]] = field(default_factory=list)  # (conv or linear, batchnorm)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (batchnorm, reason)
    note: str = ""  # why fx was not used, when it was not

    def __str__(self) -> str:
        note = f" ({self.note})" if self.note else ""
        lines = [f"fused {len(self.fused)} pair(s) by {self.method}{note}"]
        lines += [f"  left {bn}: {reason}" for bn, reason in self.skipped]
        return "\n".join(lines)


def fuse_conv_bn(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """:func:`fuse`, returning only the model."""
    return fuse(model, inplace=inplace)[0]


def fuse(model: nn.Module, *, inplace: bool = False) -> tuple[nn.Module, FusionReport]:
    """Fold every BatchNorm fed only by a conv (1d/2d/3d, grouped, depthwise, with or without
    bias) or a linear layer into that layer, and replace it by ``nn.Identity``.

    Pairs are found structurally: from the graph of ``forward`` when the model traces with
    ``torch.fx`` (a pair is fused only if the layer's output feeds nothing but the BatchNorm
    and neither module is called twice), otherwise from module order inside ``nn.Sequential``
    containers. A BatchNorm that is shared, follows anything else, or keeps no running
    statistics is left alone and named in the report. Module paths stay stable.

    Args:
        model: A model in eval mode (fusion freezes the running statistics).
        inplace: Modify ``model`` itself instead of a deep copy.

    Raises:
        ValueError: the model is in training mode.
    """
    if model.training:
        raise ValueError("fusing BatchNorm needs a model in eval mode; call model.eval() first")
    fused = model if inplace else copy.deepcopy(model)
    report = _plan(fused)
    modules = dict(fused.named_modules())
    for layer_name, bn_name in report.fused:
        layer, bn = modules[layer_name], modules[bn_name]
        assert isinstance(layer, _FOLDABLE)
        assert isinstance(bn, BatchNorm)
        fold_bn(layer, bn)
        _replace(fused, bn_name, nn.Identity())
    return fused, report


class TraceGuard:
    """Keeps ``torch.fx`` tracing apart from modules running in other threads.

    ``torch.fx.symbolic_trace`` patches ``torch.nn.Module.__call__`` (and ``__getattr__``) for
    the whole process while it traces: a module that runs in another thread meanwhile goes
    through the tracer, and both fail (seen when a server loads a new model version while it
    serves: the serving forward raises ``NameError: module is not installed as a submodule``,
    the trace ``TraceError``). Tracing holds this guard exclusively; code that runs modules in
    a thread while a trace may start (the server's executors, warm-up and drift tap) holds it
    shared. A waiting trace goes before new runs, so it is not starved by a busy server; it
    lasts milliseconds (Lite0: about 20 ms). Not reentrant: never trace while holding it.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running = 0
        self._tracing = False
        self._waiting = 0

    @contextmanager
    def running(self) -> Iterator[None]:
        with self._cond:
            while self._tracing or self._waiting:
                self._cond.wait()
            self._running += 1
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                if not self._running:
                    self._cond.notify_all()

    @contextmanager
    def tracing(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._tracing or self._running:
                self._cond.wait()
            self._waiting -= 1
            self._tracing = True
        try:
            yield
        finally:
            with self._cond:
                self._tracing = False
                self._cond.notify_all()


TRACE_GUARD = TraceGuard()


def _plan(model: nn.Module) -> FusionReport:
    try:
        with TRACE_GUARD.tracing():
            graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # any Python the tracer cannot follow
        report = _plan_sequential(model)
        report.note = f"torch.fx could not trace it: {type(exc).__name__}: {str(exc)[:120]}"
        return report
    return _plan_fx(model, graph)


def _plan_fx(model: nn.Module, graph: torch.fx.Graph) -> FusionReport:
    modules = dict(model.named_modules())
    calls = Counter(str(n.target) for n in graph.nodes if n.op == "call_module")
    report = FusionReport("fx")
    seen: set[str] = set()
    for node in graph.nodes:
        bn = modules.get(str(node.target)) if node.op == "call_module" else None
        if not isinstance(bn, _BN_TYPES) or str(node.target) in seen:
            continue
        name = str(node.target)
        seen.add(name)
        producer = node.args[0] if node.args else None
        layer = (
            modules.get(str(producer.target))
            if isinstance(producer, torch.fx.Node) and producer.op == "call_module"
            else None
        )
        reason = _why_not(bn, layer, calls[name])
        if reason is None and isinstance(producer, torch.fx.Node):
            if calls[str(producer.target)] > 1:
                reason = f"{producer.target} is called {calls[str(producer.target)]} times"
            elif len(producer.users) > 1:
                reason = f"the output of {producer.target} is also used elsewhere"
        if reason is None and isinstance(producer, torch.fx.Node):
            report.fused.append((str(producer.target), name))
        else:
            report.skipped.append((name, reason or "unreachable"))
    return report


def _plan_sequential(model: nn.Module) -> FusionReport:
    uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    report = FusionReport("sequential")
    paired: set[str] = set()
    for prefix, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        for a, b in pairwise(module._modules.items()):
            (layer_key, layer), (bn_key, bn) = a, b
            if not isinstance(bn, _BN_TYPES) or layer is None:
                continue
            name = f"{prefix}.{bn_key}" if prefix else bn_key
            reason = _why_not(bn, layer, uses[id(bn)])
            if reason is None and uses[id(layer)] > 1:
                reason = "the layer before it is shared"
            if reason is None:
                layer_name = f"{prefix}.{layer_key}" if prefix else layer_key
                report.fused.append((layer_name, name))
                paired.add(name)
            else:
                report.skipped.append((name, reason))
    listed = paired | {bn for bn, _ in report.skipped}
    for name, module in model.named_modules():
        if isinstance(module, _BN_TYPES) and name not in listed:
            report.skipped.append((name, "not right after a conv or linear in an nn.Sequential"))
    return report


def _why_not(bn: BatchNorm, layer: nn.Module | None, bn_calls: int) -> str | None:
    """Why ``bn`` cannot be folded into ``layer`` (None: it can)."""
    if bn_calls > 1:
        return f"shared: used {bn_calls} times"
    if bn.running_mean is None or bn.running_var is None:
        return "keeps no running statistics (track_running_stats=False)"
    if not isinstance(layer, _FOLDABLE):
        kind = type(layer).__name__ if layer is not None else "a function or input"
        return f"follows {kind}, not a conv or linear layer"
    channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if channels != bn.num_features:
        return f"{channels} channels in, BatchNorm has {bn.num_features}"
    return None


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    parent._modules[child] = new


@torch.no_grad()
def fold_bn(layer: Foldable, bn: BatchNorm) -> None:
    """Rewrite ``layer``'s weight and bias so that ``layer(x) == bn(layer_before(x))`` in eval
    mode. Works for any conv (grouped and depthwise included: the scale is per output channel)
    and for linear layers. The arithmetic is done in float64, so fusion adds no rounding.

    Raises:
        ValueError: ``bn`` keeps no running statistics, so it has nothing frozen to fold.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{bn} has no running statistics (track_running_stats=False)")
    weight = layer.weight.double()
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(mean)
    bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(mean)

    scale = gamma / torch.sqrt(var + bn.eps)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    layer.weight.copy_((weight * scale.reshape(shape)).to(layer.weight.dtype))
    new_bias = ((bias - mean) * scale + beta).to(layer.weight.dtype)
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias, requires_grad=layer.weight.requires_grad)
    else:
        layer.bias.copy_(new_bias)


# -- re-estimation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RecalibrationReport:
    layers: int
    batches: int
    images: int


def recalibrate_bn(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    *,
    forward: Callable[[torch.Tensor], Any] | None = None,
    progress: bool = False,
    total: int | None = None,
) -> RecalibrationReport:
    """Re-estimate every BatchNorm's running statistics on unlabelled target-domain images.

    Statistics are reset, then accumulated as a plain cumulative average over all ``batches``
    (``momentum=None``), with only the BatchNorm layers in training mode, everything else in
    eval mode, and no gradients: no weight changes. Modes and momenta are restored after.
    Recalibrate *before* fusing (a fused model has no BatchNorm left).

    Args:
        model: The unfused model.
        batches: Model inputs (what ``forward`` takes), e.g. normalised NCHW float tensors.
        forward: Runs one batch (default: ``model(batch)``).
        progress: Show a progress bar (``total`` batches, if known).

    Raises:
        ValueError: no BatchNorm with running statistics, or no batch at all; the model is
            left unchanged.
    """
    layers = [m for m in model.modules() if isinstance(m, BatchNorm) and m.track_running_stats]
    if not layers:
        raise ValueError("the model has no BatchNorm with running statistics (fused already?)")
    iterator = iter(batches)
    first = next(iterator, None)
    if first is None:
        raise ValueError("no images to recalibrate on")
    run = forward or model
    modes = {m: m.training for m in model.modules()}
    momenta = {bn: bn.momentum for bn in layers}
    count, images = 0, 0
    try:
        model.eval()
        for bn in layers:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over every batch seen
            bn.train()
        with torch.no_grad(), _progress(progress, total) as advance:
            for batch in _chain(first, iterator):
                run(batch)
                count += 1
                images += len(batch)
                advance()
    finally:
        for module, training in modes.items():
            module.training = training
        for bn, momentum in momenta.items():
            bn.momentum = momentum
    return RecalibrationReport(len(layers), count, images)


def _chain(first: torch.Tensor, rest: Iterable[torch.Tensor]) -> Iterable[torch.Tensor]:
    yield first
    yield from rest


class _progress:
    """A Rich progress bar when asked for, else nothing."""

    def __init__(self, show: bool, total: int | None) -> None:
        self.show, self.total = show, total
        self._bar: Any = None

    def __enter__(self) -> Callable[[], None]:
        if not self.show:
            return lambda: None
        from rich.progress import Progress

        self._bar = Progress()
        self._bar.start()
        task = self._bar.add_task("recalibrating BatchNorm", total=self.total)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


# -- drift -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftReport:
    """Per-layer distance between a batch's channel statistics and the running statistics:
    the symmetric KL divergence of per-channel Gaussians, averaged over channels. ``score``
    is the mean over layers: about 0 for data like the training data, growing with shift."""

    layers: dict[str, float]
    score: float


def bn_drift(
    model: nn.Module,
    batch: torch.Tensor,
    *,
    forward: Callable[[torch.Tensor], Any] | None = None,
) -> DriftReport:
    """Run ``batch`` through the (unfused, eval-mode) model and compare, at every BatchNorm,
    the input's per-channel mean and variance with the running ones. Nothing is updated.

    Use batches of several images (8 or more): the statistics of one image are noisy.

    Raises:
        ValueError: the model has no BatchNorm with running statistics.
    """
    layers = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, BatchNorm) and m.running_mean is not None and m.running_var is not None
    }
    if not layers:
        raise ValueError("the model has no BatchNorm with running statistics (fused already?)")
    distances: dict[str, float] = {}

    def tap(name: str, bn: BatchNorm) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            distances[name] = _symmetric_kl(args[0], bn)

        return hook

    handles = [bn.register_forward_pre_hook(tap(name, bn)) for name, bn in layers.items()]
    try:
        with torch.no_grad():
            (forward or model)(batch)
    finally:
        for handle in handles:
            handle.remove()
    score = sum(distances.values()) / len(distances) if distances else 0.0
    return DriftReport(distances, score)


def _symmetric_kl(x: torch.Tensor, bn: BatchNorm) -> float:
    assert bn.running_mean is not None
    assert bn.running_var is not None
    dims = [d for d in range(x.dim()) if d != 1]
    # E[x] and E[x^2] reduce fastest on the CPU (var_mean is ~2.5x slower on NCHW); the
    # per-channel results are combined in float64.
    x = x.detach()
    mean = x.mean(dim=dims).double()
    var = (x.square().mean(dim=dims).double() - mean**2).clamp(min=0.0) + bn.eps
    run_mean, run_var = bn.running_mean.double(), bn.running_var.double() + bn.eps
    gap = (mean - run_mean) ** 2
    # KL(p||q) + KL(q||p) for Gaussians, halved: 0 when equal, symmetric in the two.
    sym = 0.25 * (var / run_var + run_var / var - 2 + gap * (1 / var + 1 / run_var))
    return float(sym.mean())

"""A fake model at the seam: deterministic, slow on demand, failing on demand, and it records
which images reached it. Images are solid colours; the red value is the image's marker."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Mapping

import torch
from PIL import Image
from torch import nn

from visionloop.imaging import CenterCrop
from visionloop.models.base import InputSpec, JSONDict, OutputSpec, VisionModel

FAIL_MARKER = 13


class Probe(nn.Module):
    """Returns each image's mean colour; records markers; sleeps; raises on FAIL_MARKER."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.seen: list[int] = []
        self.batch_sizes: list[int] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check(x[:, 0, 0, 0].round().int().tolist())
        return x.mean(dim=(2, 3))

    def check(self, markers: list[int]) -> None:
        """Wait at the gate, record, sleep, and fail on FAIL_MARKER."""
        if self.gate is not None:
            self.entered.set()
            self.gate.wait(timeout=30)
        self.seen.extend(m for m in markers if m)
        self.batch_sizes.append(len(markers))
        time.sleep(self.delay_s)
        if FAIL_MARKER in markers:
            raise RuntimeError("boom: the fake model fails on marker 13")


class Mean(nn.Module):
    """What the probe computes, without its side effects: exportable to ONNX."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class ProbedEngine:
    """A real engine (ONNX Runtime or OpenVINO, running :class:`Mean`) with the probe's gate,
    records, delay and failure in front of it: the contract suite runs through each engine."""

    def __init__(self, inner, probe: Probe) -> None:
        self.inner, self.probe = inner, probe
        self.name, self.precision = inner.name, inner.precision

    def run(self, images):
        self.probe.check([int(m) for m in images[:, 0, 0, 0]])
        return self.inner.run(images)

    def describe(self):
        return self.inner.describe()


class FakeModel(VisionModel):
    name = "fake"
    description = "test double"
    input_spec = InputSpec(crop=CenterCrop(8, 8, 8), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    outputs = (OutputSpec("mean", (3,)),)

    def __init__(self, delay_s: float = 0.0) -> None:
        self.probe = Probe(delay_s)
        super().__init__(self.probe)

    def outputs_from(self, raw: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"mean": raw.float()}

    def postprocess(self, outputs: Mapping[str, torch.Tensor]) -> list[JSONDict]:
        return [{"label": str(round(m[0])), "mean": m} for m in outputs["mean"].tolist()]


def fake_on(engine: str, cache_dir, delay_s: float = 0.0) -> FakeModel:
    """A FakeModel whose forward pass runs on ``engine`` (torch: the probe network itself)."""
    from visionloop.engines import build
    from visionloop.settings import ModelSettings

    model = FakeModel(delay_s)
    if engine == "torch":
        return model
    exportable = FakeModel()
    exportable.network = Mean().eval()
    settings = ModelSettings(engine=engine, cache_dir=cache_dir)
    model.engine = ProbedEngine(build(exportable, engine, "fp32", settings), model.probe)
    return model


def solid_png(marker: int, size: tuple[int, int] = (16, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (marker, 50, 100)).save(buffer, format="PNG")
    return buffer.getvalue()


def slow_fake() -> FakeModel:
    """Registry factory for subprocess tests: ``--model tests.serving.fakes:slow_fake``."""
    return FakeModel(delay_s=0.2)


class Offset(nn.Module):
    """Each image's mean colour plus a learnt offset: the weights say which version it is."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(3))
        self.delay_s = delay_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay_s)
        return x.mean(dim=(2, 3)) + self.offset


class VersionedModel(FakeModel):
    """A FakeModel whose answers carry its weights: label = marker + offset[0]. A repository
    version holds ``versioned_weights(v)`` (offset 1000 v), so an answer names the version
    that computed it."""

    name = "versioned"

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__()
        self.network = Offset(delay_s)


def versioned() -> VersionedModel:
    """Registry factory: ``architecture = "tests.serving.fakes:versioned"``."""
    return VersionedModel()


def versioned_slow() -> VersionedModel:
    """As :func:`versioned`, 20 ms per batch: a capacity of 50 batches a second."""
    return VersionedModel(delay_s=0.02)


def versioned_weights(version: int) -> dict[str, torch.Tensor]:
    return {"offset": torch.tensor([1000.0 * version, 0.0, 0.0])}

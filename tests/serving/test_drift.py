"""The BatchNorm drift tap: near zero for traffic like the calibration data, higher under a
domain shift, never in a request's way, and exported to /metrics by a running server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import httpx
import numpy as np
import pytest
import torch
from torch import nn

from visionloop.bn import recalibrate_bn
from visionloop.imaging import CenterCrop
from visionloop.models.base import InputSpec, JSONDict, OutputSpec, VisionModel
from visionloop.serving.drift import DriftTap
from visionloop.serving.metrics import Metrics


class TinyBN(VisionModel):
    name = "tiny"
    description = "a conv and a BatchNorm"
    input_spec = InputSpec(crop=CenterCrop(8, 8, 8), mean=(0.0,) * 3, std=(255.0,) * 3)
    outputs = (OutputSpec("mean", (4,)),)

    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))

    def outputs_from(self, raw: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"mean": raw.mean(dim=(2, 3))}

    def postprocess(self, outputs: Mapping[str, torch.Tensor]) -> list[JSONDict]:
        return [{} for _ in outputs["mean"]]


def photos(mean: float, spread: float, count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        np.clip(rng.normal(mean, spread, (8, 8, 3)), 0, 255).astype(np.uint8) for _ in range(count)
    ]


def calibrated() -> TinyBN:
    model = TinyBN()
    images = photos(128, 30, 64, seed=0)
    recalibrate_bn(model.network, [model.normalise(torch.from_numpy(np.stack(images)))])
    return model


async def measure(tap: DriftTap, images: list[np.ndarray]) -> float:
    before = tap.measurements
    tap.offer(images)
    deadline = time.monotonic() + 10
    while tap.measurements == before:
        assert time.monotonic() < deadline, "no measurement"
        await asyncio.sleep(0.01)
    assert tap.score is not None
    return tap.score


async def test_drift_is_low_in_domain_and_high_after_a_shift():
    metrics = Metrics()
    in_domain = DriftTap(calibrated(), 1.0, metrics, batch=16, smoothing=1.0)
    shifted = DriftTap(calibrated(), 1.0, Metrics(), batch=16, smoothing=1.0)
    low = await measure(in_domain, photos(128, 30, 16, seed=1))
    high = await measure(shifted, photos(60, 70, 16, seed=1))
    in_domain.close()
    shifted.close()
    assert low < 0.05
    assert high > 10 * low
    assert metrics.bn_drift.labels(model="tiny")._value.get() == pytest.approx(low)
    assert metrics.bn_drift_images.labels(model="tiny")._value.get() == 16


async def test_only_a_fraction_is_sampled_and_a_busy_tap_drops_samples():
    tap = DriftTap(calibrated(), 0.25, Metrics(), batch=8, seed=3)
    for _ in range(40):
        tap.offer(photos(128, 30, 4, seed=2))  # 160 images offered, never blocking
        await asyncio.sleep(0.02)  # time for a measurement to finish
    tap.close()
    assert 1 <= tap.measurements <= 160 * 0.25 / 8 + 2


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="fraction"):
        DriftTap(TinyBN(), 0.0, Metrics())
    with pytest.raises(ValueError, match="batch"):
        DriftTap(TinyBN(), 0.5, Metrics(), batch=1)


def test_a_running_server_exports_the_drift_gauge(serve, catdog, sample_bytes):
    server = serve(model=catdog, drift_sample=1.0, max_batch_size=4)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for _ in range(3):
            for name, data in sample_bytes.items():
                kind = "image/webp" if name.endswith("webp") else "image/png"
                answer = http.post(
                    "/v1/models/catdog/predict", content=data, headers={"content-type": kind}
                )
                assert answer.status_code == 200
    deadline = time.monotonic() + 30
    while server.metric("visionloop_bn_drift_images_total") < 8:
        assert time.monotonic() < deadline, "the tap measured nothing"
        time.sleep(0.05)
    assert server.metric("visionloop_bn_drift{") > 0

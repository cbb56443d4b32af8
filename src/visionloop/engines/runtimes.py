"""The engines of the table (:mod:`.kinds`): torch (the model's own network), ONNX Runtime and
OpenVINO.

Each takes the staged uint8 NHWC batch and returns the raw output as float32 numpy. ONNX
Runtime's ``InferenceSession.run`` is thread-safe; OpenVINO's infer requests are not, so each
calling thread (one per executor) gets its own request on the one compiled model.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

from visionloop.engines.base import EngineError, Precision
from visionloop.engines.graph import INPUT_NAME
from visionloop.engines.kinds import require

if TYPE_CHECKING:
    from visionloop.models.base import VisionModel


class TorchEngine:
    """The model's prepared torch network (eager, or ``torch.compile`` if the settings ask)."""

    name: str = "torch"

    def __init__(self, model: VisionModel) -> None:
        self.model = model
        self.precision: Precision = "bf16" if model.dtype == torch.bfloat16 else "fp32"

    def run(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        with torch.inference_mode():
            raw = self.model.network(self.model.normalise(torch.from_numpy(images)))
        return raw.float().cpu().numpy()  # type: ignore[no-any-return]

    def describe(self) -> dict[str, Any]:
        return {
            "engine": "torch",
            "precision": self.precision,
            "version": torch.__version__,
            "device": str(self.model.device),
            "threads": torch.get_num_threads(),
        }


class OnnxRuntimeEngine:
    """ONNX Runtime, CPU (or CUDA where the GPU build and a GPU are there)."""

    name: str = "onnxruntime"

    def __init__(
        self, path: Path, precision: Precision, threads: int = 0, device: str = "cpu"
    ) -> None:
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        providers: list[Any] = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise EngineError(
                    f"device {device!r} asked for, but this onnxruntime has no CUDA provider "
                    "(install onnxruntime-gpu)"
                )
            index = int(device.partition(":")[2] or 0)
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise EngineError(f"onnxruntime cannot load {path}: {exc}") from exc
        self.precision = precision
        self.path = path
        self.threads = threads
        self.version = str(ort.__version__)

    def run(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        out = self.session.run(None, {INPUT_NAME: np.ascontiguousarray(images)})[0]
        return np.asarray(out, dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "precision": self.precision,
            "version": self.version,
            "providers": self.session.get_providers(),
            "threads": self.threads or os.cpu_count(),
            "file": str(self.path),
        }


def openvino_device(device: str) -> str:
    """torch-style device -> OpenVINO's: cpu -> CPU, cuda/gpu[:i] -> GPU[.i]."""
    kind, _, index = device.partition(":")
    if kind == "cpu":
        return "CPU"
    if kind in ("cuda", "gpu"):
        return f"GPU.{index}" if index else "GPU"
    raise EngineError(f"openvino cannot run on device {device!r}")


def openvino_supports_bf16(device: str = "CPU") -> bool:
    """Whether OpenVINO would really run bf16 here (AVX512_BF16 or AMX on a CPU); without
    them the hint is silently fp32."""
    ov = require("openvino")
    try:
        capabilities = ov.Core().get_property(device, "OPTIMIZATION_CAPABILITIES")
    except Exception:  # no such device
        return False
    return "BF16" in capabilities


class OpenVinoEngine:
    """OpenVINO, reading the ONNX serving graph or an IR (``.xml``) made by export."""

    name: str = "openvino"

    def __init__(
        self, path: Path, precision: Precision, threads: int = 0, device: str = "cpu"
    ) -> None:
        ov = require("openvino")
        core = ov.Core()
        target = openvino_device(device)
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if target == "CPU":
            # Pinning binds each computing thread to a core OpenVINO picks, the same one for
            # every compiled model: two models or executors would share one core while the
            # others idle (benchmarks/results/openvino_pinning.json: 0.93x of one alone).
            config["ENABLE_CPU_PINNING"] = False
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if precision == "bf16":
            if not openvino_supports_bf16(target):
                raise EngineError(
                    f"precision bf16 asked for, but OpenVINO's {target} here has no bf16 "
                    "(needs AVX512_BF16 or AMX); use fp32"
                )
            config["INFERENCE_PRECISION_HINT"] = "bf16"
        elif precision == "fp32":
            config["INFERENCE_PRECISION_HINT"] = "f32"  # never a silent bf16 on AMX machines
        try:
            self.compiled = core.compile_model(core.read_model(str(path)), target, config)
        except Exception as exc:  # OpenVINO raises RuntimeError and its own types
            raise EngineError(f"openvino cannot load {path}: {exc}") from exc
        self.precision = precision
        self.path = path
        self.device = target
        self.version = str(ov.get_version())
        self._local = threading.local()

    def _request(self) -> Any:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def run(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        result = self._request().infer({0: np.ascontiguousarray(images)})
        # The request reuses its output buffer on the next call: copy before handing it on.
        return np.array(result[0], dtype=np.float32, copy=True)

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "precision": self.precision,
            "version": self.version,
            "device": self.device,
            "threads": int(self.compiled.get_property("INFERENCE_NUM_THREADS")),
            "inference_precision": _type_name(
                self.compiled.get_property("INFERENCE_PRECISION_HINT")
            ),
            "file": str(self.path),
        }


def _type_name(value: Any) -> str:
    """OpenVINO's element type as its short name (f32, bf16)."""
    to_string = getattr(value, "to_string", None)
    return str(to_string()) if callable(to_string) else str(value)

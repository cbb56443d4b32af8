"""int8 post-training quantisation, calibrated on a folder of unlabelled photos.

Two tools, one per format: NNCF for OpenVINO IR (its default PTQ: per-channel symmetric
weights, activation ranges from the calibration photos, fast bias correction) and ONNX Runtime's
static quantisation for ONNX (QDQ, per-channel weights, MinMax ranges). Neither is trusted: the
artefact is only written if it passes the accuracy gate on a check set disjoint from these
photos (:mod:`visionloop.engines.artifact`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from visionloop.engines.base import MissingEngine
from visionloop.engines.check import Photos
from visionloop.engines.graph import INPUT_NAME


def _require(package: str) -> Any:
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError:
        raise MissingEngine(
            f"int8 export needs the {package} package: pip install 'visionloop[export]'"
        ) from None


def quantize_openvino(model: Any, calibration: Photos) -> Any:
    """NNCF post-training quantisation of an OpenVINO model."""
    nncf = _require("nncf")
    logging.getLogger("nncf").setLevel(logging.WARNING)
    images = calibration.images
    dataset = nncf.Dataset([images[i : i + 1] for i in range(len(images))])
    return nncf.quantize(model, dataset, subset_size=len(images))


def quantize_onnx(source: Path, target: Path, calibration: Photos) -> None:
    """ONNX Runtime static quantisation (QDQ, per-channel int8 weights, uint8 activations)."""
    _require("onnx")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self, images: np.ndarray) -> None:
            self.batches = iter([{INPUT_NAME: images[i : i + 1]} for i in range(len(images))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    prepared = source.with_name("prepared.onnx")
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(target),
        Reader(calibration.images),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    prepared.unlink()

"""NNCF post-training int8 settings for Lite0, judged by the export's gate on the check photos.

    .venv/bin/python benchmarks/int8_variants.py --out benchmarks/results/int8_variants.json

Each variant quantises the same OpenVINO model on the calibration photos and is compared with
the FP32 torch model on the check photos (ImageNet top-1 and cat/dog/neither agreement, as the
gate does). Variants: NNCF's defaults (what ``visionloop export --precision int8`` uses), the
depthwise convolutions (``GroupConvolution``) left in fp32, MinMax activation ranges without
fast bias correction, and the ``mixed`` preset (asymmetric activations).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nncf
import openvino as ov
from nncf.quantization.range_estimator import RangeEstimatorParametersSet

from visionloop.engines.check import agreement, read_photos, run_all, torch_reference
from visionloop.engines.graph import onnx_bytes
from visionloop.models import create
from visionloop.settings import ModelSettings

VARIANTS: dict[str, dict[str, Any]] = {
    "nncf defaults (export)": {},
    "depthwise left in fp32": {"ignored_scope": nncf.IgnoredScope(types=["GroupConvolution"])},
    "minmax ranges, full bias correction": {
        "fast_bias_correction": False,
        "advanced_parameters": nncf.AdvancedQuantizationParameters(
            activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX
        ),
    },
    "mixed preset": {"preset": nncf.QuantizationPreset.MIXED},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=Path(".photos"))
    parser.add_argument("--out", type=Path, default=Path("out/int8_variants.json"))
    args = parser.parse_args()
    model = create("catdog").prepare(ModelSettings(engine="torch"))
    calibration = read_photos(args.photos / "calibration", model)
    check = read_photos(args.photos / "check", model)
    reference = run_all(torch_reference(model), check.images)
    core = ov.Core()
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "model.onnx"
        path.write_bytes(onnx_bytes(model))
        source = core.read_model(str(path))
    dataset = nncf.Dataset([calibration.images[i : i + 1] for i in range(len(calibration.images))])
    results = {}
    for name, options in VARIANTS.items():
        started = time.perf_counter()
        quantised = nncf.quantize(source, dataset, subset_size=len(calibration.images), **options)
        made_s = time.perf_counter() - started
        request = core.compile_model(quantised, "CPU").create_infer_request()

        def run(images: Any, request: Any = request) -> Any:
            return request.infer({0: images})[0].copy()

        found = agreement(model, reference, run_all(run, check.images), check.names)
        results[name] = {"top1": found.top1, "label": found.label, "passed": found.passed,
                         "seconds_to_make": round(made_s, 1)}  # fmt: skip
        print(f"{name}: top-1 {found.top1:.4f}, label {found.label:.4f}, "
              f"{'passed' if found.passed else 'refused'}", flush=True)  # fmt: skip
    out = {"command": "python " + " ".join(sys.argv), "when": time.strftime("%Y-%m-%d %H:%M:%S"),
           "photos": {"calibration": calibration.describe(), "check": check.describe()},
           "variants": results}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

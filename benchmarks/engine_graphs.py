"""What each engine makes of the exported serving graph: which ops are left after its own
optimisation (is ReLU6 fused into the convolutions, are the SAME pads folded?).

    .venv/bin/python benchmarks/engine_graphs.py --out benchmarks/results/engine_graphs.json

ONNX Runtime: the optimised graph it saves with ``SessionOptions.optimized_model_filepath``
(all optimisations, CPU). OpenVINO: the layer types of ``compiled.get_runtime_model()`` on CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import onnx
import onnxruntime as ort
import openvino as ov

from visionloop.engines.graph import onnx_bytes
from visionloop.models import create
from visionloop.settings import ModelSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="catdog")
    parser.add_argument("--out", type=Path, default=Path("out/engine_graphs.json"))
    args = parser.parse_args()
    model = create(args.model).prepare(ModelSettings(engine="torch"))
    with tempfile.TemporaryDirectory() as work:
        exported, optimised = Path(work) / "model.onnx", Path(work) / "optimised.onnx"
        exported.write_bytes(onnx_bytes(model))
        graph = onnx.load(str(exported)).graph
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(optimised)
        ort.InferenceSession(str(exported), options, providers=["CPUExecutionProvider"])
        ort_graph = onnx.load(str(optimised)).graph
        core = ov.Core()
        runtime = core.compile_model(core.read_model(str(exported)), "CPU").get_runtime_model()
    conv_activations = Counter(
        next((a.s.decode() for a in n.attribute if a.name == "activation"), "none")
        for n in ort_graph.node
        if n.op_type == "Conv"
    )
    ov_layers = Counter(op.get_rt_info()["layerType"].astype(str) for op in runtime.get_ops())
    result = {
        "command": "python " + " ".join(sys.argv),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "versions": {"onnxruntime": ort.__version__, "openvino": ov.get_version()},
        "exported_ops": dict(Counter(n.op_type for n in graph.node).most_common()),
        "onnxruntime_optimised_ops": dict(Counter(n.op_type for n in ort_graph.node).most_common()),
        "onnxruntime_conv_activations": dict(conv_activations),
        "openvino_runtime_layers": dict(ov_layers.most_common()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for key in ("exported_ops", "onnxruntime_conv_activations", "openvino_runtime_layers"):
        print(key, result[key])
    print("onnxruntime Pad nodes left:", result["onnxruntime_optimised_ops"].get("Pad", 0))


if __name__ == "__main__":
    main()

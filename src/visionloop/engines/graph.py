"""The serving graph: uint8 NHWC in, the network's raw output out, as one ONNX file.

Normalisation (``(pixel - mean) / std``) and the change of layout are part of the graph, so the
host hands over the staged uint8 batch as it is. The batch dimension is dynamic; height and
width are the model's input size. What the engines make of it (``benchmarks/engine_graphs.py``
on catdog, ONNX Runtime 1.31 and OpenVINO 2026.4): both fuse ReLU6 (``Clip``) into 33 of the 49
convolutions; OpenVINO also folds the 5 TF "SAME" ``Pad`` nodes into its convolutions, while
ONNX Runtime keeps them as separate nodes.
"""

from __future__ import annotations

import copy
import hashlib
import io
import warnings
from typing import TYPE_CHECKING

import torch
from torch import nn

from visionloop.engines.base import EngineError

if TYPE_CHECKING:
    from visionloop.models.base import VisionModel

INPUT_NAME = "images"
OUTPUT_NAME = "raw"
OPSET = 17


class ServingGraph(nn.Module):
    """``network((x - mean) / std)`` for uint8 NHWC ``x``."""

    mean: torch.Tensor
    inv_std: torch.Tensor

    def __init__(self, network: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        inv = 1.0 / torch.tensor(std, dtype=torch.float64)
        self.register_buffer("inv_std", inv.to(torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).to(torch.float32)
        out: torch.Tensor = self.network((x - self.mean) * self.inv_std)
        return out


def export_network(network: nn.Module) -> nn.Module:
    """A float32 CPU copy of the network to export (the served one may be compiled, on a GPU
    or in bf16); it is not changed."""
    base = getattr(network, "_orig_mod", network)  # torch.compile's wrapper
    return copy.deepcopy(base).eval().to(device="cpu", dtype=torch.float32)


def onnx_bytes(model: VisionModel) -> bytes:
    """The model's serving graph as ONNX (weights inside, one file).

    Raises:
        EngineError: the network cannot be exported (an unsupported operation, say).
    """
    spec = model.input_spec
    graph = ServingGraph(export_network(model.network), spec.mean, spec.std).eval()
    example = torch.zeros((2, *spec.shape), dtype=torch.uint8)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            # The TorchScript exporter: sub-second for Lite0 where the dynamo one takes ~15 s,
            # and its graph is what ONNX Runtime and OpenVINO fuse best.
            torch.onnx.export(
                graph,
                (example,),
                buffer,  # type: ignore[arg-type]  # a file object works; the stub says path
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
    except Exception as exc:  # torch raises many kinds for unsupported graphs
        raise EngineError(f"cannot export model {model.name!r} to ONNX: {exc}") from exc
    return buffer.getvalue()


def weights_fingerprint(network: nn.Module) -> str:
    """sha256 over the network's state dict (names, shapes and float32 values on the CPU).

    Fusion changes the tensors, so callers hash the network as loaded, before
    :meth:`~visionloop.models.base.VisionModel.prepare` (which records it as
    ``source_sha256``): an artefact's card names the weights it was made from."""
    digest = hashlib.sha256()
    base = getattr(network, "_orig_mod", network)
    for name, tensor in sorted(base.state_dict().items()):
        value = tensor.detach().to("cpu")
        if value.is_floating_point():
            value = value.to(torch.float32)
        digest.update(name.encode())
        digest.update(str(tuple(value.shape)).encode())
        digest.update(value.contiguous().numpy().tobytes())
    return digest.hexdigest()

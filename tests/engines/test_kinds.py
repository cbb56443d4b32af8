"""Engines are a table: the three built-ins, an engine registered there is served, exported and
loaded from its artefact by name (library and CLI), and an unknown name is one clear line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from pydantic import ValidationError
from typer.testing import CliRunner

from tests.conftest import DATA, EXPECTED
from visionloop import imaging
from visionloop.cli import app
from visionloop.engines import ENGINES, EngineError, available_engines, build
from visionloop.engines.artifact import FORMATS, export, read_card
from visionloop.engines.base import GraphKind, Precision
from visionloop.engines.check import Photos
from visionloop.engines.graph import INPUT_NAME
from visionloop.models import create, load
from visionloop.plugins import UnknownName
from visionloop.settings import ModelSettings

runner = CliRunner()


class BasicOrtEngine:
    """ONNX Runtime with its basic graph optimisations only (no fusions, no layout changes):
    what a graph that the extended ones break would serve with."""

    name = "ort-basic"

    def __init__(self, path: Path, precision: Precision, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, ["CPUExecutionProvider"])
        self.precision = precision
        self.path = path

    def run(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        out = self.session.run(None, {INPUT_NAME: np.ascontiguousarray(images)})[0]
        return np.asarray(out, dtype=np.float32)

    def describe(self) -> dict[str, object]:
        return {"engine": self.name, "precision": self.precision, "file": str(self.path)}


class BasicOrt:
    """``ort-basic``: fp32 only; its artefact keeps the serving graph as ``graph.onnx``."""

    needs = ("onnxruntime", "serve")
    precisions: tuple[Precision, ...] = ("fp32",)
    export_format = "ort-basic"
    files = ("graph.onnx",)

    def open(self, path: Path, precision: Precision, threads: int = 0, device: str = "cpu"):
        if device != "cpu":
            raise EngineError(f"ort-basic runs on the CPU only, not {device!r}")
        return BasicOrtEngine(path, precision, threads)

    def write(self, folder: Path, precision: Precision, calibration: Photos | None) -> None:
        (folder / "model.onnx").rename(folder / "graph.onnx")

    def version(self) -> str:
        import onnxruntime

        return str(onnxruntime.__version__)

    def refusal(self, precision: Precision) -> str | None:
        return None


@pytest.fixture
def basic(monkeypatch) -> BasicOrt:
    kind = BasicOrt()
    monkeypatch.setitem(ENGINES, "ort-basic", kind)
    return kind


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    crop = create("catdog").input_spec.crop
    return np.stack(
        [imaging.prepare((DATA / n).read_bytes(), crop, imaging.ImageLimits()) for n in EXPECTED]
    )


def labels(model, photos: np.ndarray) -> list[str]:
    return [r["label"] for r in model.postprocess(model.forward(torch.from_numpy(photos)))]


def test_the_table_holds_torch_and_the_two_graph_engines():
    assert list(ENGINES) == ["torch", "onnxruntime", "openvino"]
    assert not isinstance(ENGINES["torch"], GraphKind)  # the model's own network, no files
    assert dict(FORMATS) == {"onnx": "onnxruntime", "openvino": "openvino"}
    assert available_engines() == ["torch", "onnxruntime", "openvino"]


def test_a_registered_engine_is_a_setting_and_serves_by_name(basic, photos):
    assert ModelSettings(engine="ort-basic").engine == "ort-basic"
    assert "ort-basic" in available_engines()
    model = load(ModelSettings(engine="ort-basic"))
    info = model.engine_info()
    assert (info["engine"], info["precision"], info["selected_by"]) == (
        "ort-basic", "fp32", "settings",
    )  # fmt: skip
    assert labels(model, photos) == list(EXPECTED.values())
    torch_model = create("catdog").prepare(ModelSettings(engine="torch"))
    with pytest.raises(
        EngineError, match=r"^bf16 is not offered for engine 'ort-basic': use openvino$"
    ):
        build(torch_model, "ort-basic", "bf16", ModelSettings())


def test_a_registered_engine_exports_and_serves_its_artefact(basic, photos, tmp_path):
    model = create("catdog").prepare(ModelSettings(engine="torch"))
    result = export(model, "ort-basic", "fp32", tmp_path / "art")
    assert result.folder == tmp_path / "art"
    assert sorted(p.name for p in result.folder.iterdir()) == ["card.json", "graph.onnx"]
    card = read_card(result.folder)
    assert (card["engine"], card["precision"], list(card["files"])) == (
        "ort-basic", "fp32", ["graph.onnx"],
    )  # fmt: skip
    assert card["made_with"]["ort-basic"] == basic.version()
    served = load(ModelSettings(artifact=result.folder))
    assert served.engine_info()["engine"] == "ort-basic"
    assert served.engine_info()["artifact"] == str(result.folder)
    assert labels(served, photos) == list(EXPECTED.values())
    cli = runner.invoke(app, ["export", "catdog", str(tmp_path / "cli"), "--format", "ort-basic"])
    assert cli.exit_code == 0, cli.output
    assert read_card(tmp_path / "cli")["engine"] == "ort-basic"


def test_an_unknown_engine_is_one_line_listing_the_known_ones(tmp_path):
    message = "engine must be one of auto, torch, onnxruntime, openvino, got 'tensorrt'"
    with pytest.raises(ValidationError) as raised:
        ModelSettings(engine="tensorrt")
    assert message in str(raised.value)
    model = create("catdog").prepare(ModelSettings(engine="torch"))
    with pytest.raises(UnknownName, match=r"^engine must be one of torch, onnxruntime, openvino"):
        build(model, "tensorrt", "fp32", ModelSettings())
    result = runner.invoke(app, ["serve", "--engine", "tensorrt", "--port", "1"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert message in result.output
    with pytest.raises(ValueError, match=r"^format must be one of onnx, openvino, got 'trt'$"):
        export(model, "trt", "fp32", tmp_path / "trt")

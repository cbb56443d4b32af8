"""visionloop export: artefact folders verified against torch, an accuracy gate that can refuse,
and loading that refuses, naming the file, anything that does not fit the model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import DATA, EXPECTED
from visionloop import imaging
from visionloop.cli import app
from visionloop.engines.artifact import ArtifactError, export, load_engine, read_card
from visionloop.engines.check import read_photos
from visionloop.models import create, load
from visionloop.settings import ModelSettings

runner = CliRunner()


@pytest.fixture(scope="module")
def model():
    return create("catdog").prepare(ModelSettings(engine="torch"))


@pytest.fixture(scope="module")
def check(model):
    return read_photos(DATA, model)


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory, model, check) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("artefacts")
    made = {}
    for fmt in ("onnx", "openvino"):
        result = export(model, fmt, "fp32", root / fmt, check=check)
        assert result.folder == root / fmt
        made[fmt] = root / fmt
    return made


def copy_of(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / folder.name
    shutil.copytree(folder, target)
    return target


def blank_photos(folder: Path, count: int = 8) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (256, 256), (i * 4, i * 4, i * 4)).save(folder / f"blank{i}.png")
    return folder


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_an_exported_artefact_serves_the_same_answers(fmt, artefacts, sample_bytes):
    card = read_card(artefacts[fmt])
    assert card["model"] == "catdog"
    assert card["precision"] == "fp32"
    assert card["input"]["shape"] == [-1, 224, 224, 3]
    assert card["classes"] == ["cat", "dog", "neither"]
    assert card["gate"]["passed"] is True
    assert card["accuracy"]["top1"] == 1.0
    assert card["accuracy"]["check"]["images"] == 4
    served = load(ModelSettings(artifact=artefacts[fmt]))
    info = served.engine_info()
    assert info["engine"] == {"onnx": "onnxruntime", "openvino": "openvino"}[fmt]
    assert info["artifact"] == str(artefacts[fmt])
    assert info["gate"] == "passed"
    crop = served.input_spec.crop
    batch = np.stack(
        [imaging.prepare(sample_bytes[n], crop, imaging.ImageLimits()) for n in EXPECTED]
    )
    results = served.postprocess(served.forward(torch.from_numpy(batch)))
    assert [r["label"] for r in results] == list(EXPECTED.values())


def test_the_gate_refuses_int8_calibrated_on_blank_images(model, check, tmp_path):
    calibration = read_photos(blank_photos(tmp_path / "blank"), model)
    out = tmp_path / "int8"
    result = export(model, "openvino", "int8", out, calibration=calibration, check=check)
    assert result.folder is None
    assert not out.exists()  # nothing written
    assert result.agreement is not None
    assert not result.agreement.passed
    assert result.card["gate"] == {"passed": False, "forced": False, "min_top1": 0.99,
                                   "min_label": 0.995}  # fmt: skip
    forced = export(
        model, "openvino", "int8", out, calibration=calibration, check=check, force=True
    )
    assert forced.folder == out
    card = read_card(out)
    assert card["gate"]["forced"] is True
    assert card["calibration"]["images"] == 8
    assert load(ModelSettings(artifact=out)).engine_info()["gate"] == "forced"


def test_export_into_a_new_nested_folder(model, check, tmp_path):
    out = tmp_path / "new" / "nested" / "fp32"
    assert export(model, "onnx", "fp32", out, check=check).folder == out
    assert sorted(p.name for p in out.parent.iterdir()) == ["fp32"]  # no staging left behind
    assert read_card(out)["gate"]["passed"] is True


def test_the_cli_exit_code_says_the_gate_refused(tmp_path):
    blank = blank_photos(tmp_path / "blank")
    out = tmp_path / "refused"
    result = runner.invoke(app, ["export", "catdog", str(out), "--precision", "int8",
                                 "--calibration", str(blank), "--check", str(DATA),
                                 "--report", str(tmp_path / "report.json")])  # fmt: skip
    assert result.exit_code == 1, result.output
    assert torch.is_grad_enabled()  # export must not switch autograd off for the process
    assert "gate FAILED" in result.output
    assert not out.exists()
    assert json.loads((tmp_path / "report.json").read_text())["gate"]["passed"] is False


def test_photo_sets_that_overlap_or_are_missing_are_refused(model, check, tmp_path):
    with pytest.raises(ValueError, match="shares 4 photos"):
        export(model, "openvino", "int8", tmp_path / "a", calibration=check, check=check)
    with pytest.raises(ValueError, match="needs --calibration"):
        export(model, "openvino", "int8", tmp_path / "b", check=check)
    with pytest.raises(ValueError, match="ONNX Runtime has no bf16"):
        export(model, "onnx", "bf16", tmp_path / "c", check=check)
    with pytest.raises(ValueError, match="not a folder"):
        read_photos(tmp_path / "nowhere", model)


def test_an_unreadable_photo_is_skipped_not_fatal(model, tmp_path):
    folder = blank_photos(tmp_path / "mixed", 2)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    photos = read_photos(folder, model)
    assert len(photos.names) == 2
    assert [name for name, _ in photos.skipped] == ["broken.jpg"]


def test_a_missing_or_altered_file_is_named(artefacts, model, tmp_path):
    missing = copy_of(artefacts["openvino"], tmp_path / "m")
    (missing / "model.bin").unlink()
    with pytest.raises(ArtifactError, match=r"model\.bin is missing"):
        load_engine(missing, model)
    altered = copy_of(artefacts["onnx"], tmp_path / "a")
    with (altered / "model.onnx").open("r+b") as handle:
        handle.seek(1000)
        handle.write(b"\x00\x01\x02")
    with pytest.raises(ArtifactError, match=r"model\.onnx does not match the sha256"):
        load_engine(altered, model)
    with pytest.raises(ArtifactError, match=r"card\.json is missing"):
        load_engine(tmp_path, model)
    broken = copy_of(artefacts["onnx"], tmp_path / "j")
    (broken / "card.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_engine(broken, model)


def test_a_card_for_another_model_or_weights_is_refused(artefacts, model, tmp_path):
    other = copy_of(artefacts["onnx"], tmp_path / "o")
    card = json.loads((other / "card.json").read_text())
    card["model"] = "catseg"
    card["input"]["shape"] = [-1, 256, 256, 3]
    (other / "card.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match=r"it is for model 'catseg'.*its input is"):
        load_engine(other, model)
    weights = tmp_path / "other.pt"
    network = create("catdog").network
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in network.state_dict().items()}
    torch.save(state, weights)
    with pytest.raises(ArtifactError, match="made from other weights"):
        load(ModelSettings(artifact=artefacts["onnx"], weights=weights))


def test_serve_with_a_bad_artefact_is_one_line_and_never_starts(artefacts, tmp_path):
    broken = copy_of(artefacts["openvino"], tmp_path / "b")
    (broken / "model.xml").unlink()
    result = runner.invoke(app, ["serve", "--artifact", str(broken), "--port", "1"])
    assert result.exit_code == 2
    assert "model.xml is missing" in result.output
    assert result.output.count("\n") == 1
    result = runner.invoke(
        app, ["predict", "--artifact", str(tmp_path), str(DATA / "cat_chelsea.png")]
    )
    assert result.exit_code == 2
    assert "card.json is missing" in result.output


def test_predict_runs_an_artefact(artefacts):
    result = runner.invoke(app, ["predict", "--json", "--artifact", str(artefacts["openvino"]),
                                 *(str(DATA / n) for n in EXPECTED)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [p["label"] for p in json.loads(result.output)] == list(EXPECTED.values())

"""The CLI: predict prints answers (table or JSON), reports bad files, and lists models."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tests.conftest import DATA, EXPECTED
from visionloop.cli import app

runner = CliRunner()


def test_predict_json_gives_the_expected_labels():
    files = [str(DATA / name) for name in EXPECTED]
    result = runner.invoke(app, ["predict", "--json", "--batch-size", "3", *files])
    assert result.exit_code == 0, result.output
    answers = json.loads(result.stdout)
    assert [a["label"] for a in answers] == list(EXPECTED.values())
    first = answers[0]
    assert set(first) == {"file", "label", "scores", "imagenet_top_k", "timing_ms"}
    assert set(first["scores"]) == {"cat", "dog", "neither"}
    assert set(first["timing_ms"]) == {"decode", "model"}


def test_predict_table_names_each_file_and_label():
    # Wide enough that a long checkout path is not folded across lines of the table.
    path = str(DATA / "cat_chelsea.png")
    result = runner.invoke(app, ["predict", path], env={"COLUMNS": str(len(path) + 80)})
    assert result.exit_code == 0, result.output
    assert path in result.stdout
    assert "cat" in result.stdout


def test_a_bad_file_is_reported_and_the_others_still_answered(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not a photo")
    result = runner.invoke(
        app, ["predict", "--json", str(bad), str(DATA / "dog_german_shepherd.webp")]
    )
    assert result.exit_code == 1
    answers = json.loads(result.stdout)
    assert answers[0]["error_type"] == "NotAnImage"
    assert answers[0]["error"].startswith("not an image")
    assert answers[1]["label"] == "dog"


def test_a_missing_file_is_reported(tmp_path):
    result = runner.invoke(app, ["predict", "--json", str(tmp_path / "nope.jpg")])
    assert result.exit_code == 1
    assert json.loads(result.stdout)[0]["error_type"] == "FileNotFoundError"


def test_unknown_model_is_a_clear_error():
    result = runner.invoke(app, ["predict", "--model", "zebra", str(DATA / "cat_chelsea.png")])
    assert result.exit_code == 2
    assert "unknown model 'zebra'; registered: catdog" in result.output


def test_models_lists_catdog():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    assert "catdog" in result.stdout


def test_bn_fuse_reports_pairs_parameters_speed_and_difference():
    result = runner.invoke(app, ["bn", "fuse", str(DATA), "--min-run-time", "0.2"])
    assert result.exit_code == 0, result.output
    assert "fused 49 pair(s)" in result.stdout
    assert "speed-up" in result.stdout
    assert "4,652,008" in result.stdout  # unfused parameter count of Lite0


def test_bn_recalibrate_writes_weights_that_serve_and_lower_drift(tmp_path):
    out = tmp_path / "recalibrated.pt"
    before = runner.invoke(app, ["bn", "drift", "--json", "--batch-size", "4", str(DATA)])
    result = runner.invoke(
        app, ["bn", "recalibrate", str(DATA), "--out", str(out), "--batch-size", "4"]
    )
    assert result.exit_code == 0, result.output
    after = runner.invoke(
        app, ["bn", "drift", "--json", "--batch-size", "4", "--weights", str(out), str(DATA)]
    )
    assert json.loads(after.stdout)["score"] < json.loads(before.stdout)["score"]
    photo = str(DATA / "cat_chelsea.png")
    served = runner.invoke(app, ["predict", "--json", photo], env={"VISIONLOOP_WEIGHTS": str(out)})
    assert served.exit_code == 0, served.output
    shipped = runner.invoke(app, ["predict", "--json", photo])
    assert shipped.exit_code == 0, shipped.output
    (with_new,), (with_shipped,) = json.loads(served.stdout), json.loads(shipped.stdout)
    # The recalibrated weights are the ones that answered: their scores differ from the shipped
    # weights' (4 photos are too few statistics to keep the label; that is not the point here).
    assert with_shipped["label"] == "cat"
    assert with_new["scores"] != with_shipped["scores"]
    assert abs(sum(with_new["scores"].values()) - 1) < 1e-4


def test_bn_commands_refuse_bad_weights_and_empty_input(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a state dict")
    result = runner.invoke(app, ["bn", "drift", "--weights", str(bad), str(DATA)])
    assert result.exit_code == 2
    assert "cannot read weights" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["bn", "drift", str(empty)])
    assert result.exit_code == 2
    assert "no readable image" in result.stderr


def test_a_bad_setting_is_one_clear_line_not_a_traceback():
    result = runner.invoke(app, ["worker", "--drift-sample", "2"])
    assert result.exit_code == 2
    assert "drift_sample: Input should be less than or equal to 1" in result.stderr
    assert "Traceback" not in result.output


def test_weights_trained_for_other_classes_are_served_with_their_class_names(tmp_path):
    """A catseg trained for cat, animal and plane (`train seg --classes`): `--weights` with
    `--classes` answers the three; without them it is one line naming the fix."""
    import torch

    from tests.cli_checks import assert_one_line_error
    from visionloop.models.catseg import SegNet

    weights = tmp_path / "best.pt"
    torch.save(SegNet(3, pretrained=False).state_dict(), weights)
    photo = str(DATA / "cat_chelsea.png")
    args = ["predict", "--json", "--model", "catseg", "--weights", str(weights), photo]
    result = runner.invoke(app, [*args, "--classes", "cat,animal,plane"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)[0]["areas"]) == {"cat", "animal", "plane"}
    assert_one_line_error(runner.invoke(app, args), "need them named, in training order")

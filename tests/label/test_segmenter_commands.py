"""The label commands take any Segmenter by name, and refuse anything else in one line before
the store is touched: a classifier has classes, but no masks to select or pre-label with."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from visionloop.cli import app

runner = CliRunner()


def label(tmp_path, *args: str):
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    return runner.invoke(app, ["label", *args, "--db", db])


@pytest.mark.parametrize(
    ("command", "model", "name"),
    [
        (["select", "--k", "2"], "catdog", "catdog"),  # a classifier, with classes
        (["prelabel"], "tests.serving.fakes:FakeModel", "fake"),  # no classes at all
    ],
)
def test_a_model_that_is_not_a_segmenter_is_a_one_line_error(tmp_path, command, model, name):
    result = label(tmp_path, *command, "--model", model)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    message = " ".join(result.output.split())
    assert f"error: model '{name}' is not a segmenter" in message
    assert result.output.count("error:") == 1
    assert not (tmp_path / "labels.db").exists()  # refused before the store was opened


@pytest.mark.parametrize("command", [["select", "--k", "2"], ["prelabel"]])
def test_an_unknown_model_is_a_one_line_error(tmp_path, command):
    result = label(tmp_path, *command, "--model", "zebra")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "unknown model 'zebra'" in " ".join(result.output.split())

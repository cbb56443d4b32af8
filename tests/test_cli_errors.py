"""One error context for every command (visionloop.cli.common): an expected error is one line
``error: ...`` on stderr and its exit code, never a traceback; text from the user or the outside
(a path, a name, an exception's message) is printed verbatim, Rich markup and all."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tests.conftest import DATA
from visionloop.cli import app
from visionloop.cli.common import CommandError, errors, one_line
from visionloop.serving.batcher import POLICIES

runner = CliRunner()
MARKUP = "[bold]x[/bold]"  # Rich would print a bold 'x' and drop the tags
CLOSE = "[/]"  # Rich would refuse it: "closing tag '[/]' has nothing to close"
CLI = Path(__file__).parents[1] / "src" / "visionloop" / "cli"


def one_error_line(result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ")
    return line


def test_an_expected_error_is_one_line_with_its_exit_code(capsys):
    with pytest.raises(typer.Exit) as exited, errors(ValueError):
        raise ValueError(f"bad {MARKUP}\nsecond line")
    assert exited.value.exit_code == 2
    assert capsys.readouterr().err == f"error: bad {MARKUP}\n"
    with pytest.raises(typer.Exit) as exited, errors():
        raise CommandError(f"failed {CLOSE}", code=1)
    assert exited.value.exit_code == 1
    assert capsys.readouterr().err == f"error: failed {CLOSE}\n"


def test_the_innermost_context_that_expects_an_error_reports_it(capsys):
    with pytest.raises(typer.Exit) as exited, errors(ValueError), errors(KeyError, code=1):
        raise KeyError("k")
    assert exited.value.exit_code == 1
    assert capsys.readouterr().err == "error: 'k'\n"


def test_exits_and_unexpected_errors_pass_through(capsys):
    with pytest.raises(typer.Exit) as exited, errors(RuntimeError):
        raise typer.Exit(1)  # an Exit is a RuntimeError to Python, not an error to report
    assert exited.value.exit_code == 1
    with pytest.raises(TypeError), errors(ValueError):
        raise TypeError("a bug keeps its traceback")
    assert capsys.readouterr().err == ""


def test_a_dataloader_workers_error_is_its_last_line():
    wrapped = ValueError(
        "Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent "
        'call last):\n  File "x.py", line 1\nDatasetError: a.png: corrupt PNG\n'
    )
    assert one_line(wrapped) == "a.png: corrupt PNG"
    assert one_line(ValueError("")) == "ValueError"


def test_worker_prints_a_bad_setting_verbatim():
    result = runner.invoke(app, ["worker", "--policy", MARKUP])
    known = ", ".join(POLICIES)
    assert one_error_line(result, 2) == (
        f"error: policy: Value error, policy must be one of {known}, got '{MARKUP}'"
    )


def test_predict_prints_an_unknown_model_and_a_file_name_verbatim(tmp_path):
    result = runner.invoke(app, ["predict", "--model", CLOSE, str(DATA / "cat_chelsea.png")])
    assert one_error_line(result, 2).startswith(f"error: unknown model '{CLOSE}'")
    missing = str(tmp_path / f"{MARKUP}.jpg")
    result = runner.invoke(app, ["predict", missing], env={"COLUMNS": str(2 * len(missing) + 80)})
    assert result.exit_code == 1
    assert missing in result.stdout  # the table's file column and the error


def test_bench_prints_a_folder_without_images_and_a_missing_file_verbatim(tmp_path):
    empty = tmp_path / MARKUP
    empty.mkdir(parents=True)
    result = runner.invoke(app, ["bench", "load", "http://127.0.0.1:9/x", "--images", str(empty)])
    assert one_error_line(result, 2).endswith(f") in {empty}")
    missing = tmp_path / CLOSE / "rows.json"
    result = runner.invoke(app, ["bench", "plot", str(missing), "--out", str(tmp_path / "p.png")])
    assert one_error_line(result, 2).endswith(f"No such file or directory: '{missing}'")


def test_bn_prints_an_unknown_model_and_a_skipped_file_verbatim(tmp_path):
    result = runner.invoke(app, ["bn", "drift", "--model", MARKUP, str(DATA)])
    assert one_error_line(result, 2).startswith(f"error: unknown model '{MARKUP}'")
    folder = tmp_path / MARKUP
    folder.mkdir(parents=True)
    (folder / "notes.jpg").write_text("not a photo")
    (folder / "cat.png").write_bytes((DATA / "cat_chelsea.png").read_bytes())
    result = runner.invoke(app, ["bn", "drift", "--top", "1", str(folder)])
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith(f"skipped {folder / 'notes.jpg'}: ")


def test_data_compose_prints_a_bad_folder_verbatim(tmp_path):
    cutouts = tmp_path / MARKUP
    args = ["data", "compose", str(tmp_path / "out"), "--cutouts", str(cutouts)]
    result = runner.invoke(app, [*args, "--backgrounds", str(tmp_path)])
    assert one_error_line(result, 2) == (
        f"error: {cutouts}: not a folder of <class>/ cut-out folders"
    )


def test_train_seg_prints_a_bad_dataset_verbatim(tmp_path):
    data = tmp_path / f"{CLOSE}data"
    result = runner.invoke(app, ["train", "seg", "--data", str(data), "--out", str(tmp_path)])
    assert CLOSE in one_error_line(result, 2)


def test_label_add_prints_a_missing_folder_and_a_skipped_file_verbatim(tmp_path):
    db = ["--db", f"sqlite:///{tmp_path / 'labels.db'}"]
    missing = tmp_path / MARKUP
    result = runner.invoke(app, ["label", "add", str(missing), *db])
    assert one_error_line(result, 2) == f"error: {missing}: no such file or folder"
    folder = tmp_path / CLOSE
    folder.mkdir(parents=True)
    (folder / "notes.jpg").write_text("not a photo")
    result = runner.invoke(app, ["label", "add", str(folder), *db])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"skipped {folder / 'notes.jpg'}: not a readable image")


def test_export_prints_an_unknown_model_and_format_verbatim(tmp_path):
    result = runner.invoke(app, ["export", MARKUP, str(tmp_path / "out")])
    assert one_error_line(result, 2).startswith(f"error: unknown model '{MARKUP}'")
    result = runner.invoke(app, ["export", "catdog", str(tmp_path / "out"), "--format", CLOSE])
    assert one_error_line(result, 2).endswith(f", got '{CLOSE}'")


def imports(module: Path) -> set[str]:
    """The visionloop modules ``module`` imports; ``from visionloop.cli.x import y`` names the
    module ``visionloop.cli.x.y`` if there is one (a file or a package), else ``x`` itself."""
    names = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("visionloop.cli")
        ):
            folder = CLI.joinpath(*node.module.split(".")[2:])
            for alias in node.names:
                sub = (folder / f"{alias.name}.py").exists() or (folder / alias.name).is_dir()
                names.add(f"{node.module}.{alias.name}" if sub else node.module)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return {name for name in names if name.startswith("visionloop")}


def module_name(path: Path) -> str:
    parts = path.relative_to(CLI.parents[1]).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_command_modules_do_not_import_each_other_in_a_cycle():
    graph = {module_name(m): imports(m) for m in CLI.rglob("*.py")}
    assert "visionloop.cli.label.qc" in graph  # the label package's modules are walked too
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join((*path, module))}"
        if module not in done:
            for target in graph.get(module, ()):
                visit(target, (*path, module))
            done.add(module)

    for module in graph:
        visit(module, ())


def test_nothing_outside_the_cli_package_imports_it():
    outside = [
        module_name(m)
        for m in CLI.parent.rglob("*.py")
        if CLI not in m.parents and m.name != "__main__.py"
        and any(n.split(".")[:2] == ["visionloop", "cli"] for n in imports(m))
    ]  # fmt: skip
    assert outside == []

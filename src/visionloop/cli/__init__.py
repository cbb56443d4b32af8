"""The ``visionloop`` command line: one Typer app, its commands in the modules of this package.

:mod:`~visionloop.cli.serve` (predict, models, serve, worker), :mod:`~visionloop.cli.bn`,
:mod:`~visionloop.cli.train` (train, data), :mod:`~visionloop.cli.label`,
:mod:`~visionloop.cli.export`, :mod:`~visionloop.cli.bench` and :mod:`~visionloop.cli.repo`.
They share
:mod:`~visionloop.cli.common` (the consoles, verbatim output, the one error context) and
:mod:`~visionloop.cli.options` (flags several take, and the rule from flags to settings); none
imports another command module or this one, and nothing outside this package imports it.
"""

from __future__ import annotations

import typer

from visionloop.cli import bench, bn, export, label, repo, serve, train

__all__ = ["app"]

app = typer.Typer(
    name="visionloop",
    help="Serve, tune, train and label a computer-vision model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(serve.predict)
app.command("models")(serve.list_models)
app.command()(serve.serve)
app.command()(serve.worker)
app.add_typer(bn.app, name="bn")
app.add_typer(train.train_app, name="train")
app.add_typer(train.data_app, name="data")
app.add_typer(label.app, name="label")
app.command("export")(export.export)
app.add_typer(bench.app, name="bench")
app.add_typer(repo.app, name="repo")


def main() -> None:  # pragma: no cover - console entry
    app()

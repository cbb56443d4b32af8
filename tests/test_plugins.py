"""The plug-in tables: an unknown name is one line listing the known ones, and every CLI flag
that takes a plug-in name offers exactly what its table holds."""

from __future__ import annotations

import re

import pytest
import typer

from visionloop import plugins
from visionloop.cli import app
from visionloop.engines import ENGINES
from visionloop.engines.artifact import FORMATS as EXPORT_FORMATS
from visionloop.label.formats import FORMATS
from visionloop.label.quality import AGGREGATORS
from visionloop.serving.batcher import POLICIES
from visionloop.serving.startup import TRANSPORTS


def test_lookup_gives_the_entry_and_an_unknown_name_lists_the_known_ones():
    table = {"a": 1, "b-c": 2}
    assert plugins.lookup(table, "b-c", "thing") == 2
    with pytest.raises(plugins.UnknownName) as raised:
        plugins.lookup(table, "d", "thing")
    assert str(raised.value) == "thing must be one of a, b-c, got 'd'"
    assert isinstance(raised.value, ValueError)  # callers that catch ValueError still do


def option_help(*path: str, option: str) -> str:
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]  # a group's subcommands
    (param,) = [p for p in command.params if f"--{option}" in p.opts]
    return param.help or ""


def named(help_text: str, name: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", help_text) is not None


@pytest.mark.parametrize(
    ("path", "option", "table"),
    [
        (("serve",), "policy", POLICIES),
        (("worker",), "policy", POLICIES),
        (("serve",), "transport", TRANSPORTS),
        (("serve",), "engine", ENGINES),
        (("worker",), "engine", ENGINES),
        (("predict",), "engine", ENGINES),
        (("export",), "format", EXPORT_FORMATS),
        (("label", "make-batch"), "format", FORMATS),
        (("label", "export"), "format", FORMATS),
        (("label", "ingest"), "format", FORMATS),
        (("label", "qc"), "aggregator", AGGREGATORS),
    ],
)
def test_cli_help_names_every_entry_of_the_table(path, option, table):
    text = option_help(*path, option=option)
    assert [name for name in table if not named(text, name)] == [], text

"""Checks shared by the tests of command-line errors."""

from __future__ import annotations

from typing import Any


def assert_one_line_error(result: Any, expected: str, code: int = 2) -> None:
    """A CliRunner result that failed with ``code`` and said one line on stderr, containing
    ``expected``, without a traceback."""
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert expected in lines[0]
    assert "Traceback" not in result.output

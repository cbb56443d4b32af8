"""What every command shares: the consoles, verbatim output, and one error context.

An expected error (bad input, a failed check) is one line ``error: <message>`` on stderr and an
exit code, never a traceback: 2 for bad input or usage, 1 for a check that failed (an export
refused by its accuracy gate, an engine that failed at export). Text that comes from the user or
the outside (paths, names, exception messages) is printed verbatim: Rich would read ``[bold]``
or ``[/]`` in it as markup and swallow it, so it is escaped or printed with markup off (and the
consoles replace no ``:emoji:`` codes).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

__all__ = [
    "CommandError",
    "console",
    "err_console",
    "errors",
    "escape",
    "fail",
    "messages",
    "one_line",
    "say",
    "warn",
]

console = Console(emoji=False)
err_console = Console(stderr=True, soft_wrap=True, emoji=False)  # an error: one line at any width

# Typer's own ways out, never reported as errors: Exit and Abort are RuntimeErrors, so a block
# that expects RuntimeError would catch them; a bad flag value is Typer's usage error.
_PASS_THROUGH = (typer.Exit, typer.Abort, typer.BadParameter)


class CommandError(Exception):
    """An expected failure a command reports as ``error: <message>`` and exit ``code``.

    Raise it inside :func:`errors`; any other exception there that the block does not expect
    keeps its traceback (it is a bug, not the user's input)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def one_line(exc: BaseException) -> str:
    """The error itself, on one line: the message's first non-blank line (the type's name when it
    has none). A DataLoader worker's error arrives as the worker's whole traceback, whose last
    line is the exception and its message: that line's message is the error."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[1].startswith("Original Traceback"):
        return lines[-1].split(": ", 1)[-1]
    return lines[0] if lines else type(exc).__name__


def messages(exc: BaseException) -> list[str]:
    """What to print for ``exc``: a settings error is one line per bad field (``field: why``),
    anything else :func:`one_line`."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return [
            f"{'.'.join(str(part) for part in error['loc']) or exc.title}: {error['msg']}"
            for error in exc.errors()
        ]
    return [one_line(exc)]


def fail(*lines: str, code: int = 2) -> typer.Exit:
    """Print each of ``lines`` as ``error: <line>`` on stderr, verbatim; the exit to raise
    (``raise fail(...)``)."""
    for line in lines:
        err_console.print(f"[red]error:[/red] {escape(line)}")
    return typer.Exit(code)


@contextmanager
def errors(*expected: type[BaseException], code: int = 2) -> Iterator[None]:
    """The error context: a :class:`CommandError` (with its own code) or an exception of one of
    the ``expected`` types raised in the block becomes ``error: <message>`` on stderr and exit
    ``code`` (2, bad input, unless told), without a traceback. ``typer.Exit`` and Click's usage
    errors pass through; so does anything not expected. Nested blocks: the innermost that
    expects an exception reports it."""
    try:
        yield
    except _PASS_THROUGH:
        raise
    except CommandError as exc:
        raise fail(*messages(exc), code=exc.code) from None
    except expected as exc:
        raise fail(*messages(exc), code=code) from None


def say(text: str) -> None:
    """Print ``text`` on stdout as it is (no markup)."""
    console.print(text, markup=False)


def warn(text: str, tag: str = "") -> None:
    """Print ``text`` on stderr as it is, after ``tag`` in yellow if one is given (``skipped``)."""
    err_console.print(f"[yellow]{escape(tag)}[/yellow] {escape(text)}" if tag else escape(text))

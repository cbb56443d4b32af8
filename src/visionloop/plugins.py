"""The one rule every kind of plug-in follows: a small protocol, and one ``name -> implementation``
table that settings, CLI help and dispatch all read.

The tables: batching policies (:data:`visionloop.serving.batcher.POLICIES`), transports
(:data:`visionloop.serving.startup.TRANSPORTS`), engines
(:data:`visionloop.engines.kinds.ENGINES`), label task formats
(:data:`visionloop.label.formats.FORMATS`) and crowd aggregators
(:data:`visionloop.label.quality.AGGREGATORS`). Adding one is a class and a line in its table;
tests may add an entry for their duration (``monkeypatch.setitem``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")

__all__ = ["UnknownName", "check", "lookup"]


class UnknownName(ValueError):
    """A name that is not in its table. The message lists the names that are."""


def check(table: Mapping[str, object], name: str, what: str) -> str:
    """``name`` if ``table`` has it, else :class:`UnknownName`:
    ``<what> must be one of a, b, got 'c'``."""
    if name not in table:
        raise UnknownName(f"{what} must be one of {', '.join(table)}, got {name!r}")
    return name


def lookup(table: Mapping[str, T], name: str, what: str) -> T:
    """``table[name]``, or :class:`UnknownName` naming the known entries (see :func:`check`)."""
    return table[check(table, name, what)]

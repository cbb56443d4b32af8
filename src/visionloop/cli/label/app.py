"""The ``visionloop label`` group: its Typer app, the ``--db`` option, the check for the label
extra, and the error context every label command uses."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Annotated, Any

import typer

from visionloop.cli.common import errors, fail

app = typer.Typer(help="Label cheaply: select, pre-label, batch with honeypots, ingest, QC.")

Db = Annotated[
    str, typer.Option(envvar="VISIONLOOP_LABEL_DB", help="SQLAlchemy URL of the label store.")
]
DEFAULT_DB = "sqlite:///labels.db"
LABEL_MODULES = ("sqlalchemy", "pycocotools", "crowdkit", "scipy", "pandas", "httpx")


@app.callback()
def _needs_label_extra() -> None:
    """Every label command needs the `label` extra: say so in one line, not a traceback."""
    import importlib.util

    missing = [m for m in LABEL_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise fail(
            f"{', '.join(missing)} missing: the label commands need the label extra "
            "(pip install 'visionloop[label]'; make test installs it)"
        )


def label_errors() -> AbstractContextManager[None]:
    """The error context for the label loop: bad input, files, the store, a pre-label server."""
    import httpx
    from sqlalchemy.exc import SQLAlchemyError

    return errors(ValueError, OSError, RuntimeError, SQLAlchemyError, httpx.HTTPError)


def open_store_at(db: str) -> Any:
    from visionloop.label.store import open_store

    return open_store(db)

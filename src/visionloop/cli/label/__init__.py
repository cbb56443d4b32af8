"""``visionloop label ...``: the labelling loop from the command line.

Every command takes ``--db`` (a SQLAlchemy URL; ``VISIONLOOP_LABEL_DB``, default
``sqlite:///labels.db``). Errors are one line and exit 2. :mod:`.app` holds the group, the
option and the error context; :mod:`.loop` the commands that run the loop (status, add,
select, mine, prelabel, make-batch, export, ingest); :mod:`.qc` judging the crowd (qc, timing,
simulate).
"""

from __future__ import annotations

from visionloop.cli.label import loop, qc  # noqa: F401 (their commands register on the app)
from visionloop.cli.label.app import app

__all__ = ["app"]

"""Fixture plumbing: a throwaway PostgreSQL cluster on a free loopback port.

``.ci/run`` installs the Debian package and sets ``VISIONLOOP_REQUIRE_POSTGRES=1``, so in CI a
missing server, or a missing ``psycopg`` driver, fails the tests instead of skipping them.
PostgreSQL refuses to run as root: when the tests run as root, the cluster runs as the
``postgres`` system user.
"""

from __future__ import annotations

import glob
import importlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest


def _binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def missing(what: str) -> NoReturn:
    """Fail when CI requires PostgreSQL (``VISIONLOOP_REQUIRE_POSTGRES=1``), skip otherwise."""
    if os.environ.get("VISIONLOOP_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{what} (VISIONLOOP_REQUIRE_POSTGRES=1: required, not skipped)")
    pytest.skip(what)


def need_psycopg() -> None:
    try:
        importlib.import_module("psycopg")
    except ImportError:
        missing("psycopg is not installed (pip install 'psycopg[binary]')")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL of a fresh database on a private cluster (trust auth, loopback)."""
    need_psycopg()
    binaries = _binaries()
    if binaries is None:
        missing("PostgreSQL is not installed (apt-get install -y postgresql)")
    root = Path(tempfile.mkdtemp(prefix="vl_pg_"))
    data, port = root / "data", _free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    run = [*as_user, str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
    subprocess.run(run, check=True, capture_output=True)
    options = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off"
    start = [*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-o", options,
             "-l", str(root / "log"), "-w", "start"]  # fmt: skip
    subprocess.run(start, check=True, capture_output=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "PostgreSQL did not start"
                time.sleep(0.1)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        stop = [*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]
        subprocess.run(stop, check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)

"""Fixture plumbing: a real ``redis-server`` on a free loopback port, no persistence.

``.ci/run`` installs the Debian package and sets ``VISIONLOOP_REQUIRE_REDIS=1``, so in CI a
missing server, or a missing ``redis`` client package (the ``redis`` extra), fails the tests
instead of skipping them; on a dev machine without them they skip. The client is imported when
a test asks for a server, so that its absence cannot break the collection of every other test.
"""

from __future__ import annotations

import importlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

if TYPE_CHECKING:
    import redis


def missing(what: str) -> NoReturn:
    """Fail when CI requires Redis (``VISIONLOOP_REQUIRE_REDIS=1``), skip otherwise."""
    if os.environ.get("VISIONLOOP_REQUIRE_REDIS") == "1":
        pytest.fail(f"{what} (VISIONLOOP_REQUIRE_REDIS=1: required, not skipped)")
    pytest.skip(what)


def need_redis() -> None:
    try:
        importlib.import_module("redis")
    except ImportError:
        missing("the redis package is not installed (pip install 'visionloop[redis]')")
    if shutil.which("redis-server") is None:
        missing("redis-server is not installed (apt-get install -y redis-server)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process that a test may stop and start again on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        args = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert self.process.poll() is None, "redis-server exited"
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)
        client.close()
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def client(self) -> redis.Redis:
        import redis

        return redis.Redis.from_url(self.url)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server for one test (so tests never see each other's keys)."""
    need_redis()
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()

"""Fixture plumbing: a real server on a free loopback port, in a thread of the test process
(so a prepared model can be shared between servers instead of loading once per test)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest
import uvicorn

from tests.serving.fakes import FakeModel
from visionloop.serving import http
from visionloop.serving.api import create_app
from visionloop.settings import ImagingSettings, ModelSettings, ServeSettings


class LiveServer:
    def __init__(self, app) -> None:
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # The server `visionloop serve` runs: h11 with the header deadline of the app's settings.
        header_timeout = app.state.visionloop.settings.header_timeout_s
        config = http.config(app, header_timeout, log_level="warning", timeout_graceful_shutdown=10)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})

    @property
    def state(self):
        return self.app.state.visionloop

    def start(self, wait_ready: bool = True) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        while wait_ready and httpx.get(f"{self.url}/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "model did not become ready"
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    def metric(self, name: str) -> float:
        """Sum of a metric's samples whose line starts with ``name`` (labels included)."""
        text = httpx.get(f"{self.url}/metrics").text
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)
        )


ServerFactory = Callable[..., LiveServer]


@pytest.fixture
def serve() -> Iterator[ServerFactory]:
    """Start servers with given settings and model; all are stopped after the test."""
    servers: list[LiveServer] = []

    def start(model=None, wait_ready=True, imaging=None, **settings) -> LiveServer:
        model = model if model is not None else FakeModel()
        # Tests of the deadline's mechanics use deadlines of tens of ms; the event loop of a
        # test process (shared with the test's threads) may run that late now and then, and
        # the reserve would then refuse what the test means to queue. tests/serving/test_lag.py
        # turns it on.
        settings.setdefault("lag_reserve", False)
        app = create_app(
            ServeSettings(**settings),
            ModelSettings(model=model.name),
            imaging or ImagingSettings(),
            model=model,
        )
        server = LiveServer(app)
        servers.append(server)
        return server.start(wait_ready)

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def serve_repository() -> Iterator[Callable[..., LiveServer]]:
    """Start servers of a model repository folder (``start(root, token=None, **settings)``);
    all are stopped after the test."""
    servers: list[LiveServer] = []

    def start(root, token: str | None = None, **settings) -> LiveServer:
        settings.setdefault("lag_reserve", False)  # as in serve: deadline mechanics, not lag
        app = create_app(
            ServeSettings(model_repository=root, api_token=token, **settings), ModelSettings()
        )
        server = LiveServer(app)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@contextmanager
def client(server: LiveServer, timeout: float = 30.0) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=timeout) as c:
        yield c

"""Transports are a table: a transport registered by name is what the app starts, with what
create_app was given; an unknown name is one clear line from the settings and the CLI."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from tests.cli_checks import assert_one_line_error
from tests.live_server import LiveServer, client
from tests.serving.fakes import FakeModel, solid_png
from visionloop.cli import app
from visionloop.serving.api import create_app
from visionloop.serving.startup import TRANSPORTS, InProcess, RedisReplica
from visionloop.settings import ModelSettings, RedisSettings, ServeSettings


class Counted(InProcess):
    """The in-process transport, counting its starts."""

    def __init__(self) -> None:
        self.starts = 0

    async def start(self, state, model, redis_settings):
        self.starts += 1
        await super().start(state, model, redis_settings)


class Parked:
    """Never serves: notes what it was given and reports why it is not ready."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, object, object]] = []

    async def start(self, state, model, redis_settings):
        self.calls.append((state, model, redis_settings))
        state.load_error = "parked by the test"


def test_the_table_holds_the_two_built_in_transports():
    assert list(TRANSPORTS) == ["memory", "redis"]
    assert isinstance(TRANSPORTS["memory"], InProcess)
    assert isinstance(TRANSPORTS["redis"], RedisReplica)
    assert ServeSettings().transport == "memory"


def test_a_registered_transport_is_the_one_the_app_starts(monkeypatch, serve):
    counted = Counted()
    monkeypatch.setitem(TRANSPORTS, "counted", counted)
    server = serve(transport="counted")
    with client(server) as c:
        response = c.post("/v1/models/fake/predict", content=solid_png(20))
    assert response.status_code == 200
    assert response.json()["label"] == "20"
    assert counted.starts == 1


def test_a_transport_gets_what_create_app_was_given_and_its_failure_is_a_503(monkeypatch):
    parked = Parked()
    monkeypatch.setitem(TRANSPORTS, "parked", parked)
    model = FakeModel()
    redis = RedisSettings(url="redis://127.0.0.1:1/0")
    web = create_app(
        ServeSettings(transport="parked", lag_reserve=False),
        ModelSettings(model=model.name),
        model=model,
        redis_settings=redis,
    )
    server = LiveServer(web).start(wait_ready=False)
    try:
        deadline = time.monotonic() + 10
        while not parked.calls:
            assert time.monotonic() < deadline, "the transport was not started"
            time.sleep(0.01)
        assert parked.calls == [(web.state.visionloop, model, redis)]
        with client(server) as c:
            response = c.post("/v1/models/fake/predict", content=solid_png(20))
            ready = c.get("/v2/health/ready")
    finally:
        server.stop()
    assert response.status_code == 503
    assert "failed to load: parked by the test" in response.json()["error"]
    assert ready.status_code == 503


def test_an_unknown_transport_is_one_line_listing_the_known_ones():
    with pytest.raises(ValidationError) as raised:
        ServeSettings(transport="pigeon")
    assert "transport must be one of memory, redis, got 'pigeon'" in str(raised.value)
    result = CliRunner().invoke(app, ["serve", "--transport", "pigeon"])
    assert_one_line_error(result, "transport must be one of memory, redis, got 'pigeon'")

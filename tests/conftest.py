"""Shared fixtures: the bundled sample images and the built-in model, loaded once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.live_server import serve, serve_repository  # noqa: F401  (fixtures: real servers)
from tests.postgres_server import postgres_url  # noqa: F401  (fixture: a real PostgreSQL)
from tests.redis_server import redis_server  # noqa: F401  (fixture: a real redis-server)
from visionloop.models.catdog import CatDog
from visionloop.models.efficientnet_lite import efficientnet_lite0

DATA = Path(__file__).parent / "data"
EXPECTED = {
    "cat_chelsea.png": "cat",
    "dog_german_shepherd.webp": "dog",
    "neither_astronaut.png": "neither",
    "neither_coffee.png": "neither",
}


@pytest.fixture(scope="session", autouse=True)
def engine_cache(tmp_path_factory) -> Path:
    """In-process engine conversions go to a folder of this test session, not ~/.cache."""
    import os

    folder = tmp_path_factory.mktemp("engine-cache")
    os.environ["VISIONLOOP_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def sample_bytes() -> dict[str, bytes]:
    """The four sample photos, by file name."""
    return {name: (DATA / name).read_bytes() for name in EXPECTED}


@pytest.fixture(scope="session")
def lite0():
    """EfficientNet-Lite0 with the packaged ImageNet weights (eval mode, unfused)."""
    return efficientnet_lite0()


@pytest.fixture(scope="session")
def catdog() -> CatDog:
    """The built-in model as served: fused, channels_last."""
    from visionloop.settings import ModelSettings

    model = CatDog()
    model.prepare(ModelSettings())
    return model

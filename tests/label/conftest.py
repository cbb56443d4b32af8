"""Shared by the labelling tests: a small world of synthetic pool and gold images."""

from __future__ import annotations

import pytest

from visionloop.train.synth import synthesize


@pytest.fixture
def world(tmp_path, monkeypatch):
    """24 pool images, 16 gold ones, and a SQLite label store, all under ``tmp_path``."""
    synthesize(tmp_path / "pool", 24, size=48, seed=1)
    synthesize(tmp_path / "gold", 16, size=48, seed=2)
    monkeypatch.setenv("VISIONLOOP_LABEL_DB", f"sqlite:///{tmp_path / 'labels.db'}")
    return tmp_path

"""The label store: created and versioned, submissions counted once even when ingests race."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from visionloop.label.store import Decision, Submission, Task, open_store

RLE = {"cat": {"size": [2, 2], "counts": [0, 4]}}


@pytest.fixture
def store(tmp_path):
    return open_store(f"sqlite:///{tmp_path / 'labels.db'}")


def a_task(store) -> int:
    image = store.add_image("images/a.png", 64, 48)
    assert store.add_image("images/a.png", 64, 48) == image  # paths are unique
    with store.session() as s:
        task = Task(image_id=image, batch="b1", kind="honeypot", gold=RLE, spoil={"erase": 1})
        s.add(task)
        s.flush()
        return task.id


def count(store) -> int:
    with store.session() as s:
        return int(s.scalar(select(func.count()).select_from(Submission)) or 0)


def test_schema_is_versioned_and_reopening_keeps_data(store, tmp_path):
    assert store.version() == 3
    task = a_task(store)
    assert store.submit(task, "ann", RLE, seconds=3.5)
    again = open_store(f"sqlite:///{tmp_path / 'labels.db'}")
    assert again.version() == 3
    assert count(again) == 1


def test_a_submission_ingested_twice_counts_once(store):
    task = a_task(store)
    assert store.submit(task, "ann", RLE)
    assert not store.submit(task, "ann", {"cat": {"size": [2, 2], "counts": [4]}})
    with store.session() as s:
        (only,) = s.scalars(select(Submission)).all()
        assert only.masks == RLE  # the first stands


def test_racing_ingests_neither_lose_nor_double_count(store):
    task = a_task(store)
    jobs = [(task, f"ann{i % 5}") for i in range(40)]  # 5 annotators, each 8 times
    with ThreadPoolExecutor(8) as pool:
        accepted = list(pool.map(lambda job: store.submit(job[0], job[1], RLE), jobs))
    assert sum(accepted) == 5
    assert count(store) == 5


def test_unknown_task_and_annotator_are_clear_errors(store):
    with pytest.raises(ValueError, match="no task 99"):
        store.submit(99, "ann", RLE)
    with pytest.raises(ValueError, match="no annotator 'ghost'"):
        store.ban("ghost", "lazy")
    assert count(store) == 0


def test_a_version_1_database_is_migrated_in_place(tmp_path):
    """A store made by the first schema (no pool columns, no decisions) gains them, data kept."""
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE visionloop_meta (key VARCHAR(64) PRIMARY KEY, value VARCHAR(256));
            INSERT INTO visionloop_meta VALUES ('schema_version', '1');
            CREATE TABLE images (id INTEGER PRIMARY KEY, path VARCHAR(1024) UNIQUE,
                width INTEGER, height INTEGER);
            CREATE TABLE tasks (id INTEGER PRIMARY KEY, image_id INTEGER REFERENCES images(id),
                batch VARCHAR(128), kind VARCHAR(16), prelabel JSON, gold JSON, spoil JSON,
                retired_at DATETIME);
            CREATE TABLE annotators (id INTEGER PRIMARY KEY, name VARCHAR(256) UNIQUE,
                banned_at DATETIME, ban_reason VARCHAR(1024));
            CREATE TABLE submissions (id INTEGER PRIMARY KEY, task_id INTEGER, annotator_id
                INTEGER, masks JSON, seconds FLOAT, received_at DATETIME, verdict VARCHAR(16),
                reason VARCHAR(1024), CONSTRAINT one_per_task UNIQUE (task_id, annotator_id));
            INSERT INTO images VALUES (1, 'a.png', 4, 3);
            INSERT INTO tasks VALUES (1, 1, 'b1', 'normal', NULL, NULL, NULL, NULL);
            """
        )
    store = open_store(f"sqlite:///{path}")
    assert store.version() == 3
    with store.session() as s:
        task = s.get(Task, 1)
        assert task.copies == 1
        assert task.image_id == 1
        s.add(Decision(kind="ban", reason="test"))
    when = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)
    assert store.submit(1, "ann", RLE, answered_at=when)  # v3: the answer's own time
    with store.session() as s:
        assert s.scalars(select(Submission.answered_at)).one().replace(tzinfo=UTC) == when


def test_racing_adds_of_one_image_give_one_row(store):
    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _: store.add_image("images/same.png", 4, 3), range(16)))
    assert len(ids) == 1


def test_postgresql_works_as_well_as_sqlite(postgres_url):
    """A team's store: the same schema, migrations and race-safety on PostgreSQL."""
    from sqlalchemy import text

    store = open_store(postgres_url)
    with store.engine.begin() as connection:  # a clean slate: the cluster is per session
        connection.execute(text("TRUNCATE submissions, decisions, tasks, annotators, images"))
    assert store.version() == 3
    task = a_task(store)
    jobs = [(task, f"ann{i % 5}") for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        accepted = list(pool.map(lambda job: store.submit(job[0], job[1], RLE), jobs))
    assert sum(accepted) == 5
    assert count(store) == 5
    when = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)
    assert store.submit(task, "timed", RLE, answered_at=when)
    with store.session() as s:
        stored = s.scalar(select(Submission.answered_at).where(Submission.answered_at.is_not(None)))
    assert stored == when
    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _: store.add_image("images/same.png", 4, 3), range(16)))
    assert len(ids) == 1
    assert open_store(postgres_url).version() == 3  # reopening migrates nothing


def fixture_outcome(fixture, *args) -> tuple[str, str]:
    """Run a generator fixture's setup: ``failed``, ``skipped`` or ``ran``, and the message."""
    setup = fixture.__wrapped__(*args)
    try:
        next(setup)
    except pytest.fail.Exception as exc:
        return "failed", str(exc)
    except pytest.skip.Exception as exc:
        return "skipped", str(exc)
    setup.close()  # it started a real server: stop it
    return "ran", ""


@pytest.mark.parametrize("required", [True, False])
def test_ci_that_requires_postgresql_fails_without_the_driver(monkeypatch, required):
    from tests import postgres_server

    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg now raises ImportError
    if required:
        monkeypatch.setenv("VISIONLOOP_REQUIRE_POSTGRES", "1")
    else:
        monkeypatch.delenv("VISIONLOOP_REQUIRE_POSTGRES", raising=False)
    outcome, message = fixture_outcome(postgres_server.postgres_url)
    assert outcome == ("failed" if required else "skipped")
    assert "psycopg is not installed" in message


@pytest.mark.parametrize("required", [True, False])
def test_ci_that_requires_redis_fails_without_the_client(monkeypatch, tmp_path, required):
    from tests import redis_server

    monkeypatch.setitem(sys.modules, "redis", None)
    if required:
        monkeypatch.setenv("VISIONLOOP_REQUIRE_REDIS", "1")
    else:
        monkeypatch.delenv("VISIONLOOP_REQUIRE_REDIS", raising=False)
    outcome, message = fixture_outcome(redis_server.redis_server, tmp_path)
    assert outcome == ("failed" if required else "skipped")
    assert "redis package is not installed" in message

"""The label store: images, tasks (with pre-labels, honeypot gold and the spoiling applied),
annotators, submissions, decisions and bans. SQLite by default, any SQLAlchemy URL for a team.

Masks are stored as COCO uncompressed RLE JSON. A submission is unique per (task, annotator):
ingesting the same export twice, or from two processes at once, never counts it twice.
The schema carries a version; :func:`open_store` applies the migrations a database lacks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

__all__ = ["Annotator", "Decision", "Image", "Store", "Submission", "Task", "open_store"]

SCHEMA_VERSION = 3


class Base(DeclarativeBase):
    pass


def _now() -> datetime:
    return datetime.now(UTC)


class Image(Base):
    """A pool image. ``prelabel``: the model's label; ``gold``: a trusted label (honeypot
    material); ``selected``: the method that picked it for annotation, with its ``score``."""

    __tablename__ = "images"
    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(String(1024), unique=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    prelabel: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    gold: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    selected: Mapped[str | None] = mapped_column(String(64), nullable=True)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)


class Task(Base):
    """One image to annotate. ``kind``: ``normal``, ``honeypot`` (``gold`` is the trusted
    answer, ``prelabel`` the spoiled one, ``spoil`` what was done) or ``overlap``."""

    __tablename__ = "tasks"
    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    batch: Mapped[str] = mapped_column(String(128), index=True)
    kind: Mapped[str] = mapped_column(String(16), default="normal")
    prelabel: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    gold: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    spoil: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    copies: Mapped[int] = mapped_column(Integer, default=1)  # annotators wanted


class Annotator(Base):
    __tablename__ = "annotators"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)
    banned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ban_reason: Mapped[str | None] = mapped_column(String(1024), nullable=True)


class Submission(Base):
    __tablename__ = "submissions"
    __table_args__ = (UniqueConstraint("task_id", "annotator_id", name="one_per_task"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    masks: Mapped[dict[str, Any]] = mapped_column(JSON)  # class -> COCO RLE
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    # when the annotator submitted it, as the tool recorded (Label Studio's created_at)
    answered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    verdict: Mapped[str | None] = mapped_column(String(16), nullable=True)  # accepted/rejected
    reason: Mapped[str | None] = mapped_column(String(1024), nullable=True)


class Decision(Base):
    """What QC decided and why: ``ban``, ``retire`` (a honeypot) - the audit trail."""

    __tablename__ = "decisions"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    annotator_id: Mapped[int | None] = mapped_column(ForeignKey("annotators.id"), nullable=True)
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id"), nullable=True)
    reason: Mapped[str] = mapped_column(String(1024))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class _Meta(Base):
    __tablename__ = "visionloop_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


def _v1(engine: Engine) -> None:
    tables = [Base.metadata.tables[n] for n in ("images", "tasks", "annotators", "submissions")]
    Base.metadata.create_all(engine, tables=tables)  # today's columns; v2 adds what is missing


def _v2(engine: Engine) -> None:
    """Pool columns on images (prelabel, gold, selection), task copies, the decisions log."""
    added = {
        "images": ("prelabel JSON", "gold JSON", "selected VARCHAR(64)", "score FLOAT"),
        "tasks": ("copies INTEGER NOT NULL DEFAULT 1",),
    }
    have = inspect(engine)
    with engine.begin() as connection:
        for table, columns in added.items():
            existing = {c["name"] for c in have.get_columns(table)}
            for column in columns:
                if column.split()[0] not in existing:
                    connection.execute(text(f"ALTER TABLE {table} ADD COLUMN {column}"))
    Base.metadata.create_all(engine, tables=[Base.metadata.tables["decisions"]])


def _v3(engine: Engine) -> None:
    """When each submission was made, as the annotation tool recorded it."""
    kind = "TIMESTAMP WITH TIME ZONE" if engine.dialect.name == "postgresql" else "DATETIME"
    if "answered_at" not in {c["name"] for c in inspect(engine).get_columns("submissions")}:
        with engine.begin() as connection:
            connection.execute(text(f"ALTER TABLE submissions ADD COLUMN answered_at {kind}"))


# Ordered migrations: version -> what brings a database from version - 1 to it.
MIGRATIONS: dict[int, Callable[[Engine], None]] = {1: _v1, 2: _v2, 3: _v3}


@dataclass
class Store:
    engine: Engine
    sessions: sessionmaker[Session]

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions.begin() as session:
            yield session

    def add_image(self, path: str, width: int, height: int) -> int:
        """The image's id, adding it if new (paths are unique)."""
        return self._get_or_add(
            select(Image).where(Image.path == path),
            lambda: Image(path=path, width=width, height=height),
        )

    def annotator(self, name: str) -> int:
        """The annotator's id, adding them if new."""
        return self._get_or_add(
            select(Annotator).where(Annotator.name == name), lambda: Annotator(name=name)
        )

    def _get_or_add(self, query: Any, make: Callable[[], Image | Annotator]) -> int:
        """Read the row, or add it; safe when two writers race to add the same one."""
        for _ in range(2):
            try:
                with self.session() as s:
                    found = s.scalar(query)
                    if found is not None:
                        return int(found.id)
                    row = make()
                    s.add(row)
                    s.flush()
                    return row.id
            except IntegrityError:
                continue  # added by another writer meanwhile: read it
        raise RuntimeError(f"could not add {make()!r}")

    def submit(
        self,
        task_id: int,
        annotator: str,
        masks: dict[str, Any],
        seconds: float | None = None,
        answered_at: datetime | None = None,
    ) -> bool:
        """Record a submission; False if this annotator already submitted this task (the
        first one stands: an export ingested twice is not counted twice)."""
        person = self.annotator(annotator)
        try:
            with self.session() as s:
                if s.get(Task, task_id) is None:
                    raise ValueError(f"no task {task_id}")
                s.add(
                    Submission(
                        task_id=task_id,
                        annotator_id=person,
                        masks=masks,
                        seconds=seconds,
                        answered_at=answered_at,
                    )
                )
        except IntegrityError:
            return False
        return True

    def ban(self, annotator: str, reason: str) -> None:
        with self.session() as s:
            person = s.scalar(select(Annotator).where(Annotator.name == annotator))
            if person is None:
                raise ValueError(f"no annotator {annotator!r}")
            person.banned_at, person.ban_reason = _now(), reason

    def version(self) -> int:
        with self.session() as s:
            value = s.scalar(select(_Meta.value).where(_Meta.key == "schema_version"))
            return int(value) if value is not None else 0


def open_store(url: str = "sqlite:///labels.db") -> Store:
    """Open (creating or migrating as needed) the store at a SQLAlchemy URL."""
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    sessions = sessionmaker(engine, expire_on_commit=False)
    store = Store(engine, sessions)
    _Meta.__table__.create(engine, checkfirst=True)  # type: ignore[attr-defined]
    current = store.version()
    for version in sorted(v for v in MIGRATIONS if v > current):
        MIGRATIONS[version](engine)
        with store.session() as s:
            s.merge(_Meta(key="schema_version", value=str(version)))
    return store


def _sqlite_pragmas(connection: Any, _: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the one writer
    cursor.execute("PRAGMA busy_timeout=10000")  # concurrent writers wait instead of failing
    cursor.close()

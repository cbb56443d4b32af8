"""The model repository folder: many models, each with numbered versions and its own settings.

    DIR/
      catdog/
        config.toml          # this model's serving settings (ModelConfig)
        1/                   # a version: what `visionloop export` writes (card.json + files),
        2/                   #   and/or weights.pt, a state dict of the architecture's network
      catseg/
        config.toml
        1/

A version folder holds ``card.json`` (an artefact from ``visionloop export``, checked against
its sha256 and the model before it serves), ``weights.pt`` (a state dict, read with
``weights_only=True``), or both (an artefact made from those weights); and optionally
``version.toml``, whose ``architecture`` overrides the model's for that version (a version
that adds a class) and whose ``classes`` name the classes its weights were trained for. Version
names are positive integers, as in Triton; anything else in a model's folder is ignored.

Everything here reads and writes the folder only; :mod:`visionloop.serving.fleet` loads what it
describes. A model whose folder or config cannot be read is reported with its reason; it never
stops the other models from being listed (and served).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from visionloop import plugins
from visionloop.engines.kinds import ENGINES
from visionloop.serving.batcher import POLICIES

CONFIG = "config.toml"
VERSION_CONFIG = "version.toml"
WEIGHTS = "weights.pt"
CARD = "card.json"
MAX_CONFIG_BYTES = 64 * 1024
# A model's name is a path segment and a metric label: keep it plain.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

PolicyName = Annotated[str, AfterValidator(lambda name: plugins.check(POLICIES, name, "policy"))]
EngineChoice = Annotated[
    str, AfterValidator(lambda name: plugins.check({"auto": None, **ENGINES}, name, "engine"))
]


class RepositoryError(ValueError):
    """A repository, model folder, config or version that cannot be used; the message says
    which file and why."""


class VersionPolicy(BaseModel):
    """Which versions are loaded: the newest ``latest`` (Triton's default, 1), or exactly
    ``specific``."""

    model_config = ConfigDict(extra="forbid")

    latest: int | None = Field(default=None, ge=1)
    specific: list[int] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_rule(self) -> VersionPolicy:
        if self.latest is not None and self.specific is not None:
            raise ValueError("version_policy takes latest or specific, not both")
        if self.specific is not None and any(v < 1 for v in self.specific):
            raise ValueError("version_policy.specific lists positive version numbers")
        return self

    def select(self, available: list[int]) -> list[int]:
        """The versions of ``available`` this policy loads, newest last."""
        if self.specific is not None:
            return sorted(v for v in set(self.specific) if v in available)
        return sorted(available)[-(self.latest or 1) :]


class ModelConfig(BaseModel):
    """``DIR/<model>/config.toml``: how one model of the repository is served. Unknown keys
    are an error (a typo must not be silently ignored); every field has a default."""

    model_config = ConfigDict(extra="forbid")

    architecture: str | None = Field(
        default=None,
        description="Registry name or module:factory of the network the versions hold "
        "(default: the model's folder name).",
    )
    engine: EngineChoice = "auto"
    precision: Literal["fp32", "bf16", "int8"] | None = None
    device: str = "cpu"
    max_batch_size: int = Field(default=8, ge=1)
    max_delay_ms: float = Field(default=10.0, ge=0)
    max_queue: int = Field(default=64, ge=1)
    timeout_ms: float = Field(default=5000.0, gt=0)
    policy: PolicyName = "adaptive"
    instances: int = Field(default=1, ge=1, description="Executors, each with its own thread(s).")
    threads: int = Field(
        default=0,
        ge=0,
        description="Compute threads per executor; 0: the server shares its cores out evenly "
        "between the repository's models.",
    )
    memory_mb: float | None = Field(
        default=None,
        gt=0,
        description="What one loaded version is expected to take, checked against the server's "
        "memory budget before loading (default: what this model took when last loaded).",
    )
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)


@dataclass(frozen=True)
class ModelEntry:
    """One model folder as read: its config (or why it cannot be used) and its versions."""

    name: str
    folder: Path
    config: ModelConfig | None
    error: str | None
    versions: tuple[int, ...]

    def version_dir(self, version: int) -> Path:
        return self.folder / str(version)


class Repository:
    """A model repository folder (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def check(self) -> None:
        if not self.root.is_dir():
            raise RepositoryError(f"model repository {self.root} is not a folder")

    def names(self) -> list[str]:
        """Model folder names, sorted (hidden folders and plain files ignored)."""
        self.check()
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )

    def scan(self) -> dict[str, ModelEntry]:
        """Every model folder, each read on its own: one bad folder (a name that is not a
        model name included) never hides the others."""
        found = {}
        for name in self.names():
            try:
                found[name] = self.entry(name)
            except RepositoryError as exc:
                found[name] = ModelEntry(name, self.root / name, None, str(exc), ())
        return found

    def entry(self, name: str) -> ModelEntry:
        """One model folder. Raises :class:`LookupError` if there is none."""
        check_name(name)
        folder = self.root / name
        if not folder.is_dir():
            raise LookupError(f"no model {name!r} in the repository {self.root}")
        versions = tuple(
            sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and _is_version(p.name))
        )
        try:
            config = read_config(folder / CONFIG)
        except RepositoryError as exc:
            return ModelEntry(name, folder, None, str(exc), versions)
        return ModelEntry(name, folder, config, None, versions)

    def add_version(
        self,
        name: str,
        source: Path,
        version: int | None = None,
        config: ModelConfig | None = None,
        architecture: str | None = None,
        classes: Sequence[str] | None = None,
    ) -> int:
        """Copy ``source`` (an export folder, or a ``weights.pt`` file or a folder holding one)
        into ``DIR/name/<version>/`` (default: one past the newest) and return the version.

        The copy is written beside the target and renamed into place, so a server that reads
        the folder meanwhile sees the whole version or none of it. A new model folder gets
        ``config`` (or the defaults) as its config.toml. ``architecture``, when the version's
        network is not the model's, and ``classes``, when its weights were trained for other
        classes than the architecture's, are written to the version's version.toml.

        Raises:
            RepositoryError: bad name, source without card.json or weights.pt, existing version.
        """
        check_name(name)
        self.check()
        source = Path(source)
        _check_source(source)
        folder = self.root / name
        folder.mkdir(exist_ok=True)
        if not (folder / CONFIG).exists():
            write_config(folder / CONFIG, config or ModelConfig())
        existing = self.entry(name).versions
        version = version if version is not None else (max(existing, default=0) + 1)
        if version < 1:
            raise RepositoryError(f"versions are positive integers, got {version}")
        target = folder / str(version)
        if target.exists():
            raise RepositoryError(f"{target} already exists: versions are never overwritten")
        try:
            own = VersionConfig(architecture=architecture,
                                classes=list(classes) if classes is not None else None)  # fmt: skip
        except ValidationError as exc:
            raise RepositoryError(f"bad version settings: {_problems(exc)}") from None
        lines = [f"{k} = {_toml(v)}" for k, v in own.model_dump().items() if v is not None]
        staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=folder))
        try:
            if source.is_dir():
                shutil.copytree(source, staging, dirs_exist_ok=True)
            else:
                shutil.copyfile(source, staging / WEIGHTS)
            if lines:
                (staging / VERSION_CONFIG).write_text("\n".join(lines) + "\n", encoding="utf-8")
            os.replace(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return version


class VersionConfig(BaseModel):
    """``DIR/<model>/<version>/version.toml`` (optional): what one version sets apart from its
    model's config.toml: its architecture (``catseg`` 2 is a ``catseg_plane``: a version may
    add a class while the model keeps its name, routes and rollout) and the classes its weights
    were trained for (``catseg`` 3, trained with a plane class)."""

    model_config = ConfigDict(extra="forbid")

    architecture: str | None = Field(
        default=None,
        description="Registry name or module:factory of this version's network (default: "
        "the model's).",
    )
    classes: list[str] | None = Field(
        default=None,
        description="The classes this version's weights were trained for, in channel order "
        "(train seg --classes), when they are not the architecture's own.",
    )

    @field_validator("classes")
    @classmethod
    def _names(cls, value: list[str] | None) -> list[str] | None:
        from visionloop.models.base import class_names

        return None if value is None else list(class_names(value))


def read_version_config(folder: Path) -> VersionConfig:
    """A version folder's version.toml (the defaults when there is none).

    Raises:
        RepositoryError: too large, not TOML, or not a valid :class:`VersionConfig`.
    """
    data = _read_toml(folder / VERSION_CONFIG)
    try:
        return VersionConfig.model_validate(data)
    except ValidationError as exc:
        raise RepositoryError(
            f"{folder / VERSION_CONFIG} is not a valid version config: {_problems(exc)}"
        ) from None


def _check_source(source: Path) -> None:
    if not source.exists():
        raise RepositoryError(f"{source} does not exist")
    if source.is_dir():
        if not (source / CARD).is_file() and not (source / WEIGHTS).is_file():
            raise RepositoryError(
                f"{source} holds neither {CARD} (made by `visionloop export`) nor {WEIGHTS}"
            )
    elif source.suffix not in (".pt", ".pth"):
        raise RepositoryError(f"{source}: a version is a folder, or a .pt state dict")


def check_name(name: str) -> None:
    if not NAME.match(name):
        raise RepositoryError(
            f"model name {name!r} must be 1-64 letters, digits, '_', '-' or '.', starting "
            "with a letter or digit"
        )


def _is_version(name: str) -> bool:
    return name.isdigit() and not name.startswith("0")


def read_config(path: Path) -> ModelConfig:
    """A model's config.toml (the defaults when there is none).

    Raises:
        RepositoryError: too large, not TOML, or not a valid :class:`ModelConfig`.
    """
    if not path.exists():
        return ModelConfig()
    data = _read_toml(path)
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        raise RepositoryError(f"{path} is not a valid model config: {_problems(exc)}") from None


def _read_toml(path: Path) -> dict[str, object]:
    """A small TOML file ({} when there is none), its size checked before it is read."""
    if not path.exists():
        return {}
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise RepositoryError(f"{path} is {size} bytes; a config is at most {MAX_CONFIG_BYTES}")
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RepositoryError(f"cannot read {path}: {exc}") from None


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors()
    )


def write_config(path: Path, config: ModelConfig) -> None:
    """Write ``config`` as TOML (only the fields that differ from the defaults, plus the
    version policy), so the file says what was chosen."""
    lines = ["# visionloop model config: see `visionloop repo --help` and docs/ARCHITECTURE.md"]
    data = config.model_dump(exclude_defaults=True, exclude={"version_policy"})
    for key, value in data.items():
        lines.append(f"{key} = {_toml(value)}")
    policy = config.version_policy.model_dump(exclude_none=True) or {"latest": 1}
    lines.append("")
    lines.append("[version_policy]")
    lines.extend(f"{key} = {_toml(value)}" for key, value in policy.items())
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def version_files(folder: Path) -> tuple[Path | None, Path | None]:
    """(artefact folder or None, weights file or None) of a version folder.

    Raises:
        RepositoryError: the folder holds neither.
    """
    artifact = folder if (folder / CARD).is_file() else None
    weights = folder / WEIGHTS if (folder / WEIGHTS).is_file() else None
    if artifact is None and weights is None:
        raise RepositoryError(
            f"{folder} holds neither {CARD} (made by `visionloop export`) nor {WEIGHTS} "
            "(a state dict)"
        )
    return artifact, weights


def folder_bytes(folder: Path) -> int:
    """The bytes of the files in a version folder (a first guess of its memory)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())

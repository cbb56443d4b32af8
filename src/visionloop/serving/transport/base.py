"""The one small interface between the HTTP routes and whatever runs the model.

``memory`` (:class:`~visionloop.serving.runner.Runner`): the queue, batcher and model threads live
in the API process. ``redis`` (:mod:`.redis_streams`): the API replica decodes and queues jobs on
a Redis stream; worker processes anywhere batch and run them. Routes only see :class:`Transport`,
and both implementations pass one contract test suite (``tests/serving/test_transport_contract``).

Failures cross the interface as the exceptions of :mod:`visionloop.serving.runner`, whichever
transport raised them; across Redis they travel as ``(kind, message)`` data (:func:`error_kind`,
:func:`error_from`), never as pickles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch

from visionloop.imaging import CenterCrop
from visionloop.models.base import InputSpec, JSONDict, OutputSpec, describe
from visionloop.serving.batcher import DeadlineUnreachable, QueueFull

__all__ = [
    "BadJob",
    "DeadlineExceeded",
    "ItemResult",
    "ModelCard",
    "ModelFailed",
    "ModelInfo",
    "ModelStats",
    "NotReady",
    "RolloutConflict",
    "RolloutPending",
    "Transport",
    "error_from",
    "error_kind",
]

# What every transport answers with, whichever runs the model: defined by the interface, not
# by one implementation of it (the runner imports them from here).


class NotReady(Exception):
    """The model is still loading or warming up, or the server is shutting down."""


class DeadlineExceeded(Exception):
    """The request's deadline passed while it was queued (it never reached the model) or while
    its batch ran (the late result is dropped)."""


class RolloutPending(Exception):
    """A repository verb on an API replica (transport redis): the rollout is recorded, but no
    live worker serves what it asks for yet; the workers go on loading it (answered 202).
    ``result``: what the verb would have returned (e.g. the versions ``load`` asks for)."""

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


class RolloutConflict(Exception):
    """A repository verb on an API replica (transport redis) that lost to other verbs: the
    rollout record kept changing under it, or a later verb replaced it before it completed
    (answered 409)."""


class ModelFailed(Exception):
    """The forward pass of this request's batch raised. Carries the error as data."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message


@dataclass(frozen=True)
class ItemResult:
    """One image's answer: raw per-image tensors, the model's JSON, and where time went."""

    outputs: dict[str, npt.NDArray[Any]]
    result: JSONDict
    queue_ms: float
    compute_ms: float
    batch_size: int


@dataclass
class ModelStats:
    """Counters for the v2 statistics endpoint (Triton's names)."""

    inference_count: int = 0
    execution_count: int = 0
    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    queue_ns: int = 0
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0
    last_inference_ms: int = 0
    # batch size -> [executions, input ns, infer ns, output ns]
    batches: dict[int, list[int]] = field(default_factory=dict)


class BadJob(ValueError):
    """A job whose payload cannot be read (wrong fields, size or shape): answered, never run."""


class ModelInfo(Protocol):
    """What the routes need to know about the served model (a loaded
    :class:`~visionloop.models.base.VisionModel` or a worker's :class:`ModelCard`)."""

    @property
    def name(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def input_spec(self) -> InputSpec: ...
    @property
    def outputs(self) -> tuple[OutputSpec, ...]: ...
    @property
    def classes(self) -> tuple[str, ...]: ...
    @property
    def device(self) -> torch.device: ...
    def describe(self) -> JSONDict: ...


class Transport(Protocol):
    """Queue a prepared image for a model and await its answer; every request ends once."""

    @property
    def name(self) -> str:
        """The model this transport serves (known before the model is)."""
        ...

    @property
    def version(self) -> str:
        """Which version of the model it serves ("1" outside a model repository)."""
        ...

    @property
    def model(self) -> ModelInfo:
        """The served model's description. Raises NotReady until it is known."""
        ...

    @property
    def ready(self) -> bool: ...

    @property
    def stats(self) -> ModelStats: ...

    @property
    def preferred_batch_sizes(self) -> tuple[int, ...]:
        """Buckets batches are padded to, or () when they are not padded."""
        ...

    def clock(self) -> float:
        """Monotonic seconds, the clock deadlines are expressed in."""
        ...

    def queued(self) -> int:
        """Requests accepted and not yet answered or taken into a batch."""
        ...

    def admit(self, timeout_ms: float | None = None, arrived_at: float | None = None) -> None:
        """Refuse now, before decoding, what ``infer`` would refuse on arrival."""
        ...

    def deadline(self, timeout_ms: float | None = None, arrived_at: float | None = None) -> float:
        """When a request that arrived at ``arrived_at`` must be answered by."""
        ...

    async def infer(
        self,
        image: npt.NDArray[np.uint8],
        timeout_ms: float | None = None,
        arrived_at: float | None = None,
    ) -> ItemResult:
        """Queue one uint8 HWC image and wait for its answer.

        Raises:
            NotReady, QueueFull, DeadlineExceeded, ModelFailed, ValueError (wrong shape).
        """
        ...

    def retry_after_s(self) -> int:
        """A client's fair wait before retrying after a 503, in whole seconds."""
        ...

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Refuse new work, let accepted work finish (up to the timeout), release resources."""
        ...


@dataclass(frozen=True)
class ModelCard:
    """A model described as data: what a worker publishes and an API replica serves from.

    The API replica never loads weights; it needs only the input spec (to decode and resize)
    and the outputs (for v2 metadata).
    """

    name: str
    description: str
    input_spec: InputSpec
    outputs: tuple[OutputSpec, ...]
    device_name: str = "cpu"
    classes: tuple[str, ...] = ()  # VisionModel.classes: a classifier's labels or mask channels
    engine: JSONDict = field(default_factory=dict)  # what runs the forward pass, on the worker
    weak: dict[str, str] = field(default_factory=dict)  # VisionModel.weak: unlabelled classes

    def engine_info(self) -> JSONDict:
        return dict(self.engine)

    @property
    def device(self) -> torch.device:
        return torch.device(self.device_name)

    @classmethod
    def of(cls, model: ModelInfo) -> ModelCard:
        return cls(
            model.name,
            model.description,
            model.input_spec,
            model.outputs,
            str(model.device),
            tuple(model.classes),
            dict(model.engine_info()) if hasattr(model, "engine_info") else {},
            dict(getattr(model, "weak", {})),
        )

    def to_json(self) -> JSONDict:
        spec, crop = self.input_spec, self.input_spec.crop
        return {
            "name": self.name,
            "description": self.description,
            "device": self.device_name,
            "crop": [crop.short_side, crop.height, crop.width, crop.resample],
            "mean": list(spec.mean),
            "std": list(spec.std),
            "outputs": [[o.name, list(o.shape), o.dtype, o.description] for o in self.outputs],
            "classes": list(self.classes),
            "engine": self.engine,
            "weak": self.weak,
        }

    @classmethod
    def from_json(cls, data: JSONDict) -> ModelCard:
        """Raises BadJob if ``data`` is not a card."""
        try:
            short, height, width, resample = data["crop"]
            mean, std = data["mean"], data["std"]
            spec = InputSpec(
                crop=CenterCrop(int(short), int(height), int(width), resample),
                mean=(float(mean[0]), float(mean[1]), float(mean[2])),
                std=(float(std[0]), float(std[1]), float(std[2])),
            )
            outputs = tuple(
                OutputSpec(str(n), tuple(int(d) for d in shape), str(dtype), str(text))
                for n, shape, dtype, text in data["outputs"]
            )
            classes = tuple(str(c) for c in data.get("classes", []))
            engine = data.get("engine", {})
            if not isinstance(engine, dict):
                raise TypeError(f"engine must be an object, got {type(engine).__name__}")
            weak = data.get("weak", {})
            if not isinstance(weak, dict):
                raise TypeError(f"weak must be an object, got {type(weak).__name__}")
            return cls(
                str(data["name"]),
                str(data["description"]),
                spec,
                outputs,
                str(data["device"]),
                classes,
                engine,
                {str(k): str(v) for k, v in weak.items()},
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise BadJob(f"not a model card: {type(exc).__name__}: {exc}") from None

    def describe(self) -> JSONDict:
        info = describe(self.name, self.description, self.input_spec, self.outputs, self.classes,
                        self.weak)  # fmt: skip
        info["engine"] = self.engine_info()
        return info


# -- failures as data ------------------------------------------------------------------------

_KINDS: dict[str, type[Exception]] = {
    "deadline": DeadlineExceeded,
    "deadline_unreachable": DeadlineUnreachable,
    "queue_full": QueueFull,
    "not_ready": NotReady,
    "bad_job": BadJob,
}


def error_kind(exc: BaseException) -> tuple[str, str, str]:
    """``(kind, error_type, message)`` for an exception a worker sends back as data."""
    if isinstance(exc, ModelFailed):
        return "model_error", exc.error_type, exc.message
    for kind, cls in _KINDS.items():
        if type(exc) is cls:
            return kind, cls.__name__, str(exc)
    return "model_error", type(exc).__name__, str(exc)


def error_from(kind: str, error_type: str, message: str) -> Exception:
    """The exception :func:`error_kind` described (an unknown kind is a model error)."""
    cls = _KINDS.get(kind)
    if cls is not None:
        return cls(message)
    return ModelFailed(error_type, message)

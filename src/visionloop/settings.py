"""Settings: one pydantic-settings model per concern, read from ``VISIONLOOP_*`` env vars.

CLI flags mirror these fields; a flag given on the command line wins over the environment,
which wins over the defaults written here. Every bound that protects the process (bytes,
pixels) lives here so that an operator can see and change it in one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from visionloop import plugins
from visionloop.engines.kinds import ENGINES
from visionloop.serving.batcher import POLICIES
from visionloop.serving.startup import TRANSPORTS

# Names checked against their plug-in table when a setting is read, so a policy, transport or
# engine added to its table is a valid setting with nothing to change here.
PolicyName = Annotated[str, AfterValidator(lambda name: plugins.check(POLICIES, name, "policy"))]
TransportName = Annotated[
    str, AfterValidator(lambda name: plugins.check(TRANSPORTS, name, "transport"))
]
EngineChoice = Annotated[
    str, AfterValidator(lambda name: plugins.check({"auto": None, **ENGINES}, name, "engine"))
]


class ImagingSettings(BaseSettings):
    """Limits applied to every uploaded image before it is decoded."""

    model_config = SettingsConfigDict(env_prefix="VISIONLOOP_", extra="ignore")

    max_bytes: int = Field(
        default=20 * 1024 * 1024, ge=1, description="Largest accepted encoded image, in bytes."
    )
    max_pixels: int = Field(
        default=50_000_000,
        ge=1,
        description="Largest accepted image area (width x height) read from the header, "
        "checked before decoding: the decompression-bomb guard.",
    )


class CatDogSettings(BaseSettings):
    """Decision rule of the built-in ``catdog`` model.

    ``cat`` and ``dog`` are the summed ImageNet probabilities of the cat and dog classes. The
    label is the larger of the two when it reaches its threshold, otherwise ``neither``.
    """

    model_config = SettingsConfigDict(env_prefix="VISIONLOOP_CATDOG_", extra="ignore")

    cat_threshold: float = Field(default=0.5, gt=0.0, le=1.0)
    dog_threshold: float = Field(default=0.5, gt=0.0, le=1.0)
    top_k: int = Field(
        default=5, ge=0, le=1000, description="Raw ImageNet top-k returned with each answer."
    )


def _classes(value: str | None) -> str | None:
    """A comma-separated class list, checked (and normalised) as the model will read it."""
    if value is None:
        return None
    from visionloop.models.base import class_names

    return ",".join(class_names(value))


class ModelSettings(BaseSettings):
    """How a model is loaded for serving (the order is fixed by the model contract)."""

    model_config = SettingsConfigDict(env_prefix="VISIONLOOP_", extra="ignore")

    model: str = Field(default="catdog", description="Registry name, or module:factory.")
    weights: Path | None = Field(
        default=None,
        description="A state dict for the model's network (e.g. made by `visionloop bn "
        "recalibrate`), loaded with weights_only=True before fusion.",
    )
    classes: Annotated[str | None, AfterValidator(_classes)] = Field(
        default=None,
        description="Comma-separated classes the weights were trained for, in channel order "
        "(train seg --classes, e.g. cat,animal,plane), when they are not the model's own.",
    )
    device: str = Field(default="cpu", description="torch device, e.g. cpu, cuda, cuda:1.")
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    fuse_bn: bool = Field(default=True, description="Fold BatchNorm into the preceding conv.")
    channels_last: bool = True
    compile: bool = Field(default=False, description="torch.compile the model after loading.")
    threads: int = Field(
        default=0,
        ge=0,
        description="intra-op threads per executor (torch, ONNX Runtime, OpenVINO); 0 keeps "
        "the engine's default.",
    )
    engine: EngineChoice = Field(
        default="auto",
        description="What runs the forward pass. auto: on a CPU the fastest installed engine at "
        "fp32 (OpenVINO, then ONNX Runtime, then torch), or the artifact's; torch on a GPU or "
        "with compile.",
    )
    precision: Literal["fp32", "bf16", "int8"] | None = Field(
        default=None,
        description="fp32, bf16 (OpenVINO on a CPU with AVX512_BF16/AMX; torch's bfloat16) or "
        "int8 (only from an artifact that passed the accuracy gate). Default: fp32, or the "
        "artifact's.",
    )
    artifact: Path | None = Field(
        default=None,
        description="A folder made by `visionloop export` (model files + card.json): serve "
        "that engine and precision, after checking it fits the model and weights.",
    )
    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "visionloop",
        description="Where in-process engine conversions are kept (keyed by weights hash).",
    )

    @model_validator(mode="after")
    def _half_needs_gpu(self) -> ModelSettings:
        if self.dtype == "float16" and self.device == "cpu":
            raise ValueError("dtype float16 needs a GPU device, got device='cpu'")
        if self.precision == "int8" and self.artifact is None:
            raise ValueError(
                "precision int8 needs an artifact that passed the accuracy gate: "
                "visionloop export MODEL --precision int8 --calibration DIR --check DIR OUT"
            )
        if self.artifact is not None and self.engine == "torch":
            raise ValueError("an artifact runs on its own engine, not torch")
        return self


class ServeSettings(BaseSettings):
    """The HTTP server and its batching queue."""

    model_config = SettingsConfigDict(env_prefix="VISIONLOOP_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="Bind address (loopback by default).")
    port: int = Field(default=8000, ge=0, le=65535)
    max_batch_size: int = Field(default=8, ge=1, description="Most images per forward pass.")
    max_delay_ms: float = Field(
        default=10.0, ge=0, description="Longest the oldest queued request waits for company."
    )
    max_queue: int = Field(default=64, ge=1, description="Queued requests beyond this get 503.")
    timeout_ms: float = Field(
        default=5000.0, gt=0, description="Default per-request deadline; X-Timeout-Ms shortens."
    )
    instances: int = Field(default=1, ge=1, description="Model executors sharing the one queue.")
    policy: PolicyName = Field(
        default="adaptive",
        description="adaptive: wait only while it pays, refuse what would be late (default "
        "since it won in BENCHMARKS.md); fixed: always wait max_delay_ms for company.",
    )
    pad_to_buckets: bool = Field(
        default=False, description="Pad batches to powers of two (few shapes for compiled graphs)."
    )
    decode_threads: int = Field(default=2, ge=1, description="Threads decoding uploads.")
    max_files: int = Field(
        default=16, ge=1, description="Most images in one request (multipart files, v2 batch N)."
    )
    max_request_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1,
        description="Largest request body (a multipart upload, a v2 request), refused with 413 "
        "as soon as it passes this; each image is held to max_bytes too.",
    )
    max_json_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1,
        description="Largest JSON part of a v2 request (413 past it): JSON pixels cost ~8x their "
        "text in memory while parsed; the binary extension has no such cost.",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A connection that has not sent a request's headers within this is closed "
        "(408): slowloris. A body gets what is left of the request's deadline (timeout_ms).",
    )
    lag_reserve: bool = Field(
        default=True,
        description="Take twice the event loop's recent lateness off each request's deadline "
        "(the time to read it and to write its answer, which no server clock sees), so that "
        "an answer that could only arrive late is refused with 504 instead of sent as a 200.",
    )
    drain_timeout_s: float = Field(default=30.0, ge=0, description="Graceful shutdown budget.")
    api_token: str | None = Field(
        default=None, description="If set, every route but health needs 'Authorization: Bearer'."
    )
    drift_sample: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Fraction of served images whose BatchNorm statistics feed the "
        "visionloop_bn_drift gauge (an unfused copy of the model on the CPU); 0 turns it off.",
    )
    transport: TransportName = Field(
        default="memory",
        description="memory: the model runs in this process; redis: this is an API replica "
        "that queues jobs on Redis Streams for `visionloop worker` processes.",
    )
    model_repository: Path | None = Field(
        default=None,
        description="Serve every model of this folder (DIR/<model>/config.toml and "
        "DIR/<model>/<version>/), each with its own queue, batcher and executors, with the "
        "repository API for load, unload, canary, shadow, promote and rollback. The model, "
        "batching and engine settings then come from each model's config.toml. With transport "
        "redis this is an API replica of the folder: `visionloop worker --model-repository` "
        "processes load the versions, and the repository API rolls them out across them.",
    )
    memory_budget_mb: float = Field(
        default=0.0,
        ge=0.0,
        description="Model repository: refuse a load that would take the loaded models past "
        "this much resident memory (0: no budget).",
    )
    oversubscribe: bool = Field(
        default=False,
        description="Model repository: allow more compute threads (executors x threads, over "
        "every loaded version) than this process has cores.",
    )

    @model_validator(mode="after")
    def _budgets_in_process(self) -> ServeSettings:
        repository = self.model_repository is not None
        if (
            repository
            and self.transport == "redis"
            and (self.memory_budget_mb or self.oversubscribe)
        ):
            raise ValueError(
                "memory_budget_mb and oversubscribe bound the versions loaded in this process; "
                "with transport redis, API replicas load none (the workers do)"
            )
        return self


class RedisSettings(BaseSettings):
    """The Redis Streams transport (``VISIONLOOP_REDIS_*``), shared by API replicas and workers."""

    model_config = SettingsConfigDict(env_prefix="VISIONLOOP_REDIS_", extra="ignore")

    url: str = Field(default="redis://127.0.0.1:6379/0", description="redis:// or rediss:// URL.")
    prefix: str = Field(default="visionloop", min_length=1, description="Key prefix.")
    claim_idle_ms: float = Field(
        default=2000.0,
        gt=0,
        description="A job pending this long with a silent worker (dead or hung) is reclaimed "
        "by a live one; live workers refresh their jobs every claim_idle_ms / 3.",
    )
    max_deliveries: int = Field(
        default=3, ge=1, description="A job delivered more often is answered with an error."
    )
    heartbeat_s: float = Field(
        default=1.0, gt=0, description="Liveness period; a worker silent for 3 is dead."
    )
    reply_ttl_s: float = Field(
        default=30.0, gt=0, description="A dead API replica's reply stream expires after this."
    )
    stream_maxlen: int = Field(
        default=10_000, ge=1, description="Hard cap (MAXLEN ~) on every stream's length."
    )
    connect_timeout_s: float = Field(
        default=1.0, gt=0, description="Give up connecting after this: 503 fast, not a hang."
    )
    command_timeout_s: float = Field(default=5.0, gt=0, description="Socket timeout per command.")
    rollout_wait_s: float = Field(
        default=120.0,
        gt=0,
        description="Model repository: how long a repository verb (load, canary, ...) sent to "
        "an API replica waits for a live worker to announce the versions it asks for before "
        "answering 202 (the workers go on loading them).",
    )

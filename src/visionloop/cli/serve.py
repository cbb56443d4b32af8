"""``visionloop predict|models|serve|worker``: classify files, list models, serve over HTTP,
run a Redis worker.

Flags mirror the settings in :mod:`visionloop.settings`; a flag left out falls back to the
``VISIONLOOP_*`` environment variable, then to the default.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from visionloop.cli import options
from visionloop.cli.common import console, errors, escape, fail
from visionloop.cli.options import ClassesOption, DeviceOption, ModelOption

EngineOption = Annotated[
    str | None, typer.Option(help="auto, torch, onnxruntime or openvino (default auto).")
]
PrecisionOption = Annotated[
    str | None, typer.Option(help="fp32, bf16 or int8 (int8: from an --artifact only).")
]
ArtifactOption = Annotated[
    Path | None, typer.Option(help="Folder made by `visionloop export` to serve.")
]
WeightsOption = Annotated[
    Path | None,
    typer.Option(help="State dict for the model's network (train seg's best.pt; weights_only)."),
]
# serve and worker: the batching and executor flags, the same for both
MaxBatchOption = Annotated[int | None, typer.Option(help="Most images per pass.")]
MaxDelayOption = Annotated[float | None, typer.Option(help="Oldest request's wait.")]
InstancesOption = Annotated[int | None, typer.Option(help="Model executors.")]
PadOption = Annotated[bool | None, typer.Option(help="Pad batches to 2^k.")]
PolicyOption = Annotated[str | None, typer.Option(help="fixed or adaptive.")]
ThreadsOption = Annotated[int | None, typer.Option(help="torch threads per executor.")]
DriftOption = Annotated[
    float | None, typer.Option(help="Fraction of images feeding the BN drift gauge.")
]
LogLevelOption = Annotated[str, typer.Option(help="debug, info, warning.")]


@dataclass
class _Prediction:
    file: str
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None
    decode_ms: float = 0.0
    model_ms: float = 0.0

    def as_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"file": self.file, "error": self.error, "error_type": self.error_type}
        timing = {"decode": round(self.decode_ms, 3), "model": round(self.model_ms, 3)}
        return {"file": self.file, **self.result, "timing_ms": timing}


def _predict_files(paths: list[Path], model: Any, batch_size: int) -> list[_Prediction]:
    import numpy as np
    import torch

    from visionloop import imaging
    from visionloop.settings import ImagingSettings

    imaging_settings = ImagingSettings()
    limits = imaging.ImageLimits(imaging_settings.max_bytes, imaging_settings.max_pixels)
    predictions = [_Prediction(file=str(p)) for p in paths]
    ready: list[tuple[_Prediction, Any]] = []
    for path, prediction in zip(paths, predictions, strict=True):
        start = time.perf_counter()
        try:
            array = imaging.prepare(path.read_bytes(), model.input_spec.crop, limits)
        except (imaging.ImageError, OSError) as exc:
            prediction.error, prediction.error_type = str(exc), type(exc).__name__
            continue
        prediction.decode_ms = (time.perf_counter() - start) * 1e3
        ready.append((prediction, array))
    if ready:  # the first forward pass pays one-off set-up; keep it out of the timings
        model.warmup([min(batch_size, len(ready))])
    for first in range(0, len(ready), batch_size):
        chunk = ready[first : first + batch_size]
        batch = torch.from_numpy(np.stack([array for _, array in chunk]))
        start = time.perf_counter()
        outputs = {name: t.cpu() for name, t in model.forward(batch).items()}
        elapsed_ms = (time.perf_counter() - start) * 1e3
        for (prediction, _), result in zip(chunk, model.postprocess(outputs), strict=True):
            prediction.result = result
            prediction.model_ms = elapsed_ms / len(chunk)
    return predictions


def _print_table(predictions: list[_Prediction]) -> None:
    score_names = next((list(p.result["scores"]) for p in predictions if p.error is None), [])
    table = Table(title="visionloop predict")
    table.add_column("file", overflow="fold")
    table.add_column("label")
    for name in score_names:
        table.add_column(name, justify="right")
    table.add_column("ms", justify="right")
    for p in predictions:
        if p.error is not None:
            error = f"[red]error: {escape(p.error)}[/red]"
            table.add_row(escape(p.file), error, *[""] * (len(score_names) + 1))
            continue
        scores = [f"{p.result['scores'][name]:.3f}" for name in score_names]
        label, ms = escape(str(p.result["label"])), f"{p.decode_ms + p.model_ms:.1f}"
        table.add_row(escape(p.file), label, *scores, ms)
    console.print(table)


def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files (JPEG, PNG, WebP, GIF, BMP).")],
    model: ModelOption = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array on stdout.")] = False,
    device: DeviceOption = None,
    fuse_bn: Annotated[bool | None, typer.Option(help="Fold BatchNorm into convs.")] = None,
    threads: Annotated[int | None, typer.Option(min=0, help="torch threads; 0 = default.")] = None,
    engine: EngineOption = None,
    precision: PrecisionOption = None,
    artifact: ArtifactOption = None,
    weights: WeightsOption = None,
    classes: ClassesOption = None,
) -> None:
    """Classify image files. Exits 1 if any file could not be read as an image."""
    import torch

    settings = options.model_settings(
        model=model, device=device, fuse_bn=fuse_bn, threads=threads, engine=engine,
        precision=precision, artifact=artifact, weights=weights, classes=classes,
    )  # fmt: skip
    if settings.threads:
        torch.set_num_threads(settings.threads)
    loaded = options.load_model(settings)
    predictions = _predict_files(images, loaded, batch_size)
    if as_json:
        typer.echo(json.dumps([p.as_json() for p in predictions], indent=2))
    else:
        _print_table(predictions)
    if any(p.error is not None for p in predictions):
        raise typer.Exit(1)


def list_models() -> None:
    """List the registered models (built-ins and installed entry points)."""
    from visionloop.models import available

    table = Table(title="visionloop models")
    table.add_column("name")
    table.add_column("factory")
    for name, target in available().items():
        table.add_row(escape(name), escape(target))
    console.print(table)


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
    model: ModelOption = None,
    device: DeviceOption = None,
    max_batch_size: MaxBatchOption = None,
    max_delay_ms: MaxDelayOption = None,
    max_queue: Annotated[int | None, typer.Option(help="Queue bound; beyond: 503.")] = None,
    timeout_ms: Annotated[float | None, typer.Option(help="Default deadline.")] = None,
    instances: InstancesOption = None,
    pad_to_buckets: PadOption = None,
    policy: PolicyOption = None,
    threads: ThreadsOption = None,
    transport: Annotated[
        str | None, typer.Option(help="memory (model in this process) or redis (API replica).")
    ] = None,
    drift_sample: DriftOption = None,
    redis_url: Annotated[str | None, typer.Option(help="Redis URL for --transport redis.")] = None,
    engine: EngineOption = None,
    precision: PrecisionOption = None,
    artifact: ArtifactOption = None,
    weights: WeightsOption = None,
    classes: ClassesOption = None,
    model_repository: Annotated[
        Path | None,
        typer.Option(
            help="Serve every model of this folder (DIR/<model>/config.toml, "
            "DIR/<model>/<version>/); see `visionloop repo`."
        ),
    ] = None,
    memory_budget_mb: Annotated[
        float | None, typer.Option(help="Repository: refuse loads past this resident memory.")
    ] = None,
    oversubscribe: Annotated[
        bool | None, typer.Option(help="Repository: allow more compute threads than cores.")
    ] = None,
    log_level: LogLevelOption = "info",
) -> None:
    """Serve the model over HTTP (v1 predict, Open Inference Protocol v2, /metrics).

    With --transport redis this process is an API replica: it decodes uploads and queues them
    on Redis Streams for `visionloop worker` processes, on this machine or others.

    With --model-repository DIR it serves every model of DIR, each version with its own queue
    and executors, and the repository API (load, unload, canary, shadow, promote, rollback).
    """
    from visionloop.serving.api import create_app
    from visionloop.settings import RedisSettings, ServeSettings

    flags: dict[str, Any] = {
        "host": host, "port": port, "max_batch_size": max_batch_size,
        "max_delay_ms": max_delay_ms, "max_queue": max_queue, "timeout_ms": timeout_ms,
        "instances": instances, "pad_to_buckets": pad_to_buckets, "policy": policy,
        "transport": transport, "drift_sample": drift_sample,
        "model_repository": model_repository, "memory_budget_mb": memory_budget_mb,
        "oversubscribe": oversubscribe,
    }  # fmt: skip
    settings = options.settings_from(ServeSettings, **flags)
    if settings.model_repository is not None:
        from visionloop.serving.repository import Repository, RepositoryError

        with errors(RepositoryError):
            Repository(settings.model_repository).check()
    model_settings = options.model_settings(
        model=model, device=device, threads=threads, engine=engine, precision=precision,
        artifact=artifact, weights=weights, classes=classes,
    )  # fmt: skip
    redis_settings = options.settings_from(RedisSettings, url=redis_url)
    _log_to_stderr(log_level)
    _log_start(settings, model_settings, redis_settings)
    _run(create_app(settings, model_settings, redis_settings=redis_settings), settings, log_level)


def _run(asgi_app: Any, settings: Any, log_level: str) -> None:
    """Serve ``asgi_app`` with uvicorn until it is stopped (SIGTERM drains for a while)."""
    import uvicorn

    from visionloop.serving import http

    config = http.config(
        asgi_app,
        settings.header_timeout_s,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_graceful_shutdown=int(settings.drain_timeout_s),
    )
    uvicorn.Server(config).run()


def _log_to_stderr(level: str) -> None:
    import logging

    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _log_start(settings: Any, model_settings: Any, redis_settings: Any) -> None:
    """One log line: what this server is (API replica or model server) and where its docs are."""
    import logging

    log = logging.getLogger("visionloop.serve")
    base = f"http://{settings.host}:{settings.port}"
    if settings.model_repository is not None and settings.transport == "redis":
        log.info(
            "API replica of the model repository %s via %s (`visionloop worker "
            "--model-repository` loads the versions); repository API: "
            "%s/v2/repository/index; docs: %s/docs",
            settings.model_repository, redis_settings.url, base, base,
        )  # fmt: skip
    elif settings.model_repository is not None:
        log.info(
            "loading every model of %s (each with its own config.toml); repository API: "
            "%s/v2/repository/index; docs: %s/docs",
            settings.model_repository, base, base,
        )  # fmt: skip
    elif settings.transport == "redis":
        log.info(
            "API replica for %s via %s (batching is the workers'); max_queue=%d; docs: %s/docs",
            model_settings.model, redis_settings.url, settings.max_queue, base,
        )  # fmt: skip
    else:
        log.info(
            "loading %s on %s (engine %s%s); policy=%s, max_batch_size=%d, max_delay_ms=%g, "
            "max_queue=%d; docs: %s/docs",
            model_settings.model, model_settings.device, model_settings.engine,
            f", artifact {model_settings.artifact}" if model_settings.artifact else "",
            settings.policy, settings.max_batch_size, settings.max_delay_ms, settings.max_queue,
            base,
        )  # fmt: skip


def worker(
    model: ModelOption = None,
    redis_url: Annotated[str | None, typer.Option(help="Redis URL.")] = None,
    device: DeviceOption = None,
    max_batch_size: MaxBatchOption = None,
    max_delay_ms: MaxDelayOption = None,
    instances: InstancesOption = None,
    pad_to_buckets: PadOption = None,
    policy: PolicyOption = None,
    threads: ThreadsOption = None,
    claim_idle_ms: Annotated[
        float | None, typer.Option(help="Reclaim jobs pending this long with a dead worker.")
    ] = None,
    drift_sample: DriftOption = None,
    name: Annotated[str | None, typer.Option(help="Consumer name (default host-pid-rand).")] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve this worker's /metrics on 127.0.0.1:PORT.")
    ] = None,
    engine: EngineOption = None,
    precision: PrecisionOption = None,
    artifact: ArtifactOption = None,
    weights: WeightsOption = None,
    classes: ClassesOption = None,
    model_repository: Annotated[
        Path | None,
        typer.Option(
            help="Serve the versions of every model of this folder that the rollout asks for "
            "(`visionloop repo load|canary|...` sent to an API replica); each model's "
            "settings come from its config.toml."
        ),
    ] = None,
    log_level: LogLevelOption = "info",
) -> None:
    """Run a model worker: take jobs from Redis Streams, batch them, answer the API replicas.

    Start any number, on any machines that reach the same Redis. SIGTERM (or Ctrl-C) stops
    taking jobs and finishes the ones taken. If one of its loops ends on an error (e.g. an
    unexpected Redis answer) it stops the same way and exits 1: run it under a supervisor
    that restarts it.

    With --model-repository DIR it serves that model repository's versions as the rollout
    records in Redis say (API replicas: `visionloop serve --transport redis
    --model-repository DIR`), loading and unloading them as a rollout goes.
    """
    import asyncio

    from visionloop.settings import RedisSettings, ServeSettings

    if model_repository is not None:
        model_flags = {
            "--model": model, "--device": device, "--max-batch-size": max_batch_size,
            "--max-delay-ms": max_delay_ms, "--instances": instances,
            "--pad-to-buckets": pad_to_buckets, "--policy": policy, "--threads": threads,
            "--drift-sample": drift_sample, "--engine": engine, "--precision": precision,
            "--artifact": artifact, "--weights": weights, "--classes": classes,
        }  # fmt: skip
        _repository_worker(
            model_repository,
            [flag for flag, value in model_flags.items() if value is not None],
            options.settings_from(RedisSettings, url=redis_url, claim_idle_ms=claim_idle_ms),
            name,
            metrics_port,
            log_level,
        )
        return
    flags: dict[str, Any] = {
        "max_batch_size": max_batch_size, "max_delay_ms": max_delay_ms, "instances": instances,
        "pad_to_buckets": pad_to_buckets, "policy": policy, "drift_sample": drift_sample,
    }  # fmt: skip
    settings = options.settings_from(ServeSettings, **flags)
    model_settings = options.model_settings(
        model=model, device=device, threads=threads, engine=engine, precision=precision,
        artifact=artifact, weights=weights, classes=classes,
    )  # fmt: skip
    redis_settings = options.settings_from(
        RedisSettings, url=redis_url, claim_idle_ms=claim_idle_ms
    )
    _log_to_stderr(log_level)
    from visionloop.serving.worker import run_worker

    asyncio.run(run_worker(settings, model_settings, redis_settings, name, metrics_port))


def _repository_worker(
    root: Path,
    model_flags: list[str],
    redis_settings: Any,
    name: str | None,
    metrics_port: int | None,
    log_level: str,
) -> None:
    """``worker --model-repository DIR``: the folder's configs say how each model is served."""
    import asyncio

    from visionloop.serving.repository import Repository, RepositoryError
    from visionloop.settings import ServeSettings

    if model_flags:
        raise fail(
            f"{', '.join(model_flags)}: with --model-repository each model's settings come "
            "from its config.toml"
        )
    with errors(RepositoryError):
        Repository(root).check()
    drain_timeout_s = options.settings_from(ServeSettings).drain_timeout_s
    _log_to_stderr(log_level)
    from visionloop.serving.transport.redis_repository_worker import run_repository_worker

    asyncio.run(run_repository_worker(root, redis_settings, name, metrics_port, drain_timeout_s))

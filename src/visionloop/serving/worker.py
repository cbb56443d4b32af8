"""A Redis worker process: load the model, take jobs from the stream, answer the replicas.

``visionloop worker`` parses its flags into settings and calls :func:`run_worker`; the batching,
the executors and the refusals are the same :class:`~visionloop.serving.runner.Runner` as
``serve`` (inside :class:`~visionloop.serving.transport.redis_worker.RedisWorker`), configured by
the same rule (:meth:`~visionloop.serving.runner.RunnerConfig.from_settings`).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from visionloop.models import registry
from visionloop.serving.drift import tap_from_settings
from visionloop.serving.lag import freeze_heap
from visionloop.serving.metrics import Metrics
from visionloop.serving.runner import RunnerConfig
from visionloop.settings import ModelSettings, RedisSettings, ServeSettings

log = logging.getLogger("visionloop.worker")


async def run_worker(
    settings: ServeSettings,
    model_settings: ModelSettings,
    redis_settings: RedisSettings,
    name: str | None = None,
    metrics_port: int | None = None,
) -> None:
    """Serve jobs until SIGTERM or SIGINT, then finish the ones taken."""
    from visionloop.serving.transport.redis_worker import RedisWorker

    log.info("loading %s on %s", model_settings.model, model_settings.device)
    model = await asyncio.to_thread(registry.load, model_settings)
    log.info("engine: %s", model.engine_info())
    config = RunnerConfig.from_settings(settings, model_settings.threads).for_worker()
    metrics = serve_metrics(metrics_port)
    tap = await tap_from_settings(model_settings, settings.drift_sample, metrics)
    node = RedisWorker(model, config, redis_settings, metrics=metrics, name=name, tap=tap)
    log.info("%d objects frozen out of garbage collection", freeze_heap())
    await node.run(stop_on_signals())
    log.info("worker %s stopped: %s", node.name, node.counts)


def serve_metrics(port: int | None) -> Metrics:
    """A worker's metrics, on http://127.0.0.1:PORT/metrics when ``port`` is given."""
    metrics = Metrics()
    if port is not None:
        from prometheus_client import start_http_server

        start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    return metrics


def stop_on_signals() -> asyncio.Event:
    """An event SIGTERM and SIGINT set (in the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop

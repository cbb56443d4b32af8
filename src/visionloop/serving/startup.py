"""How the app reaches its model, one :class:`Startup` per transport, in the one table
:data:`TRANSPORTS`.

``ServeSettings.transport`` (``serve --transport``) names an entry; the app's lifespan starts
it in the background and stops ``state.runner`` (a
:class:`~visionloop.serving.transport.base.Transport`) at shutdown. A new transport is a
:class:`~visionloop.serving.transport.base.Transport`, a :class:`Startup` that makes it ready,
and a line in the table.

Light on purpose: the settings check names against the table, so importing this module loads
no transport; each start imports what it needs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from visionloop.serving.lag import freeze_heap

if TYPE_CHECKING:
    from visionloop.models.base import VisionModel
    from visionloop.serving.fleet import Loader
    from visionloop.serving.state import ServerState
    from visionloop.settings import RedisSettings

__all__ = ["TRANSPORTS", "InProcess", "ModelRepository", "RedisReplica", "Startup"]

log = logging.getLogger("visionloop.serve")


class Startup(Protocol):
    """Makes one kind of transport ready for the app."""

    async def start(
        self, state: ServerState, model: VisionModel | None, redis_settings: RedisSettings | None
    ) -> None:
        """Set ``state.runner`` once it can take requests, or ``state.load_error`` (logged)
        when it cannot; the routes answer 503 until then. ``model`` and ``redis_settings``:
        what :func:`~visionloop.serving.api.create_app` was given (None: not given)."""
        ...


class InProcess:
    """``memory``: load the model (or take the prepared one given) and run it in this process,
    behind the batcher."""

    async def start(
        self, state: ServerState, model: VisionModel | None, redis_settings: RedisSettings | None
    ) -> None:
        import asyncio
        import time

        from visionloop.models import registry
        from visionloop.serving.drift import tap_from_settings
        from visionloop.serving.runner import Runner, RunnerConfig

        settings = state.settings
        try:
            if model is None:
                model = await asyncio.to_thread(registry.load, state.model_settings)
            config = RunnerConfig.from_settings(settings, state.model_settings.threads)
            tap = await tap_from_settings(
                state.model_settings, settings.drift_sample, state.metrics
            )
            runner = Runner(model, config, state.metrics, tap=tap)
            started = time.perf_counter()
            sizes = await runner.start()
        except Exception as exc:  # reported by /v2/health/ready and every model route
            state.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("model failed to load")
            return
        state.runner = runner
        ms = state.model_settings
        log.info(
            "loaded %s on %s (%s, fuse_bn=%s, channels_last=%s, compile=%s), %d instance(s)",
            model.name, model.device, ms.dtype, ms.fuse_bn, ms.channels_last, ms.compile,
            settings.instances,
        )  # fmt: skip
        log.info("engine: %s", model.engine_info())
        log.info(
            "warmed up batch sizes %s in %.1f s (padding to buckets: %s); %d objects frozen "
            "out of garbage collection; ready",
            ",".join(map(str, sizes)), time.perf_counter() - started, settings.pad_to_buckets,
            freeze_heap(),
        )  # fmt: skip
        state.lag.start()  # after the freeze: its one-off collection is not the loop's lateness


class RedisReplica:
    """``redis``: an API replica; jobs go through Redis Streams to ``visionloop worker``
    processes, and it is ready once a worker has published the model."""

    async def start(
        self, state: ServerState, model: VisionModel | None, redis_settings: RedisSettings | None
    ) -> None:
        from visionloop.serving.transport.redis_streams import RedisTransport
        from visionloop.settings import RedisSettings

        redis_settings = redis_settings or RedisSettings()
        settings = state.settings
        transport = RedisTransport(
            state.model_settings.model,
            redis_settings,
            max_queue=settings.max_queue,
            timeout_ms=settings.timeout_ms,
            metrics=state.metrics,
        )
        await transport.start()
        state.runner = transport
        state.lag.start()
        log.info(
            "API replica %s for model %s: jobs go to %s on %s",
            transport.replica, transport.name, transport.keys.requests, redis_settings.url,
        )  # fmt: skip


class ModelRepository:
    """``serve --model-repository DIR``: every model of the folder in this process, each
    version behind its own runner (:class:`~visionloop.serving.fleet.Fleet`). Not a transport:
    the app starts it in place of the settings' transport."""

    def __init__(self, loader: Loader | None = None) -> None:
        self.loader = loader

    async def start(
        self, state: ServerState, model: VisionModel | None, redis_settings: RedisSettings | None
    ) -> None:
        from visionloop.serving.fleet import Fleet, FleetLimits, load_version
        from visionloop.serving.repository import Repository

        settings = state.settings
        assert settings.model_repository is not None
        limits = FleetLimits(
            oversubscribe=settings.oversubscribe,
            memory_budget_mb=settings.memory_budget_mb,
            drain_timeout_s=settings.drain_timeout_s,
        )
        fleet = Fleet(
            Repository(settings.model_repository),
            self.loader or load_version,
            state.metrics,
            limits,
        )
        state.fleet = fleet
        try:
            await fleet.start()
        except Exception as exc:  # the folder itself: reported by /v2/health/ready
            state.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("model repository failed to load")
            return
        serving = [row for row in fleet.index() if row.get("role") == "serving"]
        log.info(
            "model repository %s: %s; %d objects frozen out of garbage collection; ready",
            settings.model_repository,
            ", ".join(f"{r['name']} v{r['version']}" for r in serving) or "nothing serves",
            freeze_heap(),
        )
        state.lag.start()


TRANSPORTS: dict[str, Startup] = {
    "memory": InProcess(),
    "redis": RedisReplica(),
}

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

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from visionloop.models.base import VisionModel
    from visionloop.serving.state import ServerState
    from visionloop.settings import RedisSettings

__all__ = ["TRANSPORTS", "InProcess", "RedisReplica", "Startup"]


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
        from visionloop.serving.api import _load

        await _load(state, model)


class RedisReplica:
    """``redis``: an API replica; jobs go through Redis Streams to ``visionloop worker``
    processes, and it is ready once a worker has published the model."""

    async def start(
        self, state: ServerState, model: VisionModel | None, redis_settings: RedisSettings | None
    ) -> None:
        from visionloop.serving.api import _connect
        from visionloop.settings import RedisSettings

        await _connect(state, redis_settings or RedisSettings())


TRANSPORTS: dict[str, Startup] = {
    "memory": InProcess(),
    "redis": RedisReplica(),
}

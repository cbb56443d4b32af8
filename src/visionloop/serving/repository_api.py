"""The model repository API, in the Open Inference Protocol's shape (Triton's extension), plus
the rollout verbs: present when the server runs with ``--model-repository``.

- ``POST /v2/repository/index``, body ``{"ready": true}`` optional: every model and version
  with its state (``READY``, ``LOADING``, ``UNLOADING``, ``UNAVAILABLE``) and the reason when it
  is not ready; ours add the version's ``role``, canary ``share``, ``threads`` and
  ``memory_mb``.
- ``POST /v2/repository/models/{m}/load``: (re)load ``m`` as its folder says now (a new version
  hot-swapped in); ``/unload``: stop serving it.
- ``POST /v2/repository/models/{m}/canary`` ``{"version": v, "share": 0.1}``,
  ``/shadow`` ``{"version": v}``, ``/promote``, ``/rollback``.

Every route needs the API token when one is set. An unknown model is 404; a load or rollout
that does not happen is 400 with the reason (budgets with their figures), and leaves what was
serving as it was.

On an API replica (``--transport redis``) the same routes roll versions out across the Redis
workers (:mod:`visionloop.serving.transport.redis_fleet`): they answer once a live worker
serves what was asked, or 202 (the 200 answer's fields plus ``pending``, the reason) when none
has yet; 409 when the verb lost to other verbs (the rollout record kept changing, or a later
verb replaced it before it completed).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from visionloop.serving.fleet import Fleet
from visionloop.serving.state import ApiError, ServerState, fleet_errors
from visionloop.serving.transport.base import RolloutConflict, RolloutPending
from visionloop.serving.uploads import read_body

_Body = TypeVar("_Body", bound=BaseModel)
_Result = TypeVar("_Result")

MAX_BODY_BYTES = 64 * 1024
BODY_WITHIN_S = 10.0


class IndexRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    ready: bool = False


class CandidateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1)
    share: float = Field(default=0.1, gt=0.0, le=1.0)


def router(state: ServerState, authorise: Callable[[ServerState, Request], None]) -> APIRouter:
    api = APIRouter(prefix="/v2/repository", tags=["repository"])

    def fleet() -> Fleet:
        return _fleet(state)

    @api.post("/index")
    async def index(request: Request) -> list[dict[str, Any]]:
        """Every model and version with its state and, when not ready, why."""
        authorise(state, request)
        body = await _body(request, IndexRequest)
        rows: list[dict[str, Any]] = fleet().index(ready_only=body.ready)
        return rows

    @api.post("/models/{model}/load", response_model=None)
    async def load(model: str, request: Request) -> dict[str, Any] | JSONResponse:
        """(Re)load a model from its folder: new versions are warmed beside the serving one,
        then take over; versions its policy no longer selects drain and unload."""
        authorise(state, request)
        await _body(request, IndexRequest)  # Triton allows parameters; none are used

        def loaded(versions: list[int]) -> dict[str, Any]:
            return {"name": model, "loaded": [str(v) for v in versions], **_serving(state, model)}

        return await _verb(state, model, fleet().load(model), loaded)

    @api.post("/models/{model}/unload", response_model=None)
    async def unload(model: str, request: Request) -> dict[str, Any] | JSONResponse:
        """Stop serving a model: its versions drain and unload."""
        authorise(state, request)
        await _body(request, IndexRequest)
        return await _verb(
            state, model, fleet().unload(model), lambda _: {"name": model, "unloaded": True}
        )

    @api.post("/models/{model}/canary", response_model=None)
    async def canary(model: str, request: Request) -> dict[str, Any] | JSONResponse:
        """Send ``share`` of the unversioned requests to ``version`` (loaded if need be);
        its answers are compared with the serving version's."""
        return await _candidate(state, authorise, model, request, "canary")

    @api.post("/models/{model}/shadow", response_model=None)
    async def shadow(model: str, request: Request) -> dict[str, Any] | JSONResponse:
        """Run a copy of every served request on ``version`` and compare; it answers none."""
        return await _candidate(state, authorise, model, request, "shadow")

    @api.post("/models/{model}/promote", response_model=None)
    async def promote(model: str, request: Request) -> dict[str, Any] | JSONResponse:
        """The canary or shadow becomes the serving version; the old one drains and unloads."""
        authorise(state, request)
        return await _verb(
            state,
            model,
            fleet().promote(model),
            lambda _: {"name": model, **_serving(state, model)},
        )

    @api.post("/models/{model}/rollback", response_model=None)
    async def rollback(model: str, request: Request) -> dict[str, Any] | JSONResponse:
        """Drop the canary or shadow; without one, serve the previous version again."""
        authorise(state, request)
        return await _verb(
            state,
            model,
            fleet().rollback(model),
            lambda _: {"name": model, **_serving(state, model)},
        )

    return api


def _fleet(state: ServerState) -> Fleet:
    if state.fleet is None:  # still starting
        raise ApiError(503, "the model repository is still being read", {"Retry-After": "1"})
    return state.fleet


def _serving(state: ServerState, model: str) -> dict[str, Any]:
    assert state.fleet is not None
    slot = state.fleet.slots.get(model)
    if slot is None or slot.serving is None:
        return {"serving": None}
    return {"serving": str(slot.serving)}


async def _candidate(
    state: ServerState,
    authorise: Callable[[ServerState, Request], None],
    model: str,
    request: Request,
    mode: Literal["canary", "shadow"],
) -> dict[str, Any] | JSONResponse:
    authorise(state, request)
    body = await _body(request, CandidateRequest)
    chosen: dict[str, Any] = {mode: str(body.version)}
    return await _verb(
        state,
        model,
        _fleet(state).set_candidate(model, body.version, mode, body.share),
        lambda _: {"name": model, **chosen, **_serving(state, model)},
    )


async def _verb(
    state: ServerState,
    model: str,
    work: Awaitable[_Result],
    answer: Callable[[_Result], dict[str, Any]],
) -> dict[str, Any] | JSONResponse:
    """Run a verb: its answer; 4xx/503 for what did not happen (:func:`fleet_errors`); on an
    API replica of Redis workers, 202 (the answer plus ``pending``) for a rollout recorded
    that no worker serves yet, 409 for one that lost to other verbs."""
    try:
        with fleet_errors():
            result = await work
    except RolloutPending as exc:
        body = {**answer(exc.result), "pending": str(exc)}
        return JSONResponse(body, status_code=202)
    except RolloutConflict as exc:
        raise ApiError(409, str(exc), error_type="RolloutConflict") from None
    return answer(result)


async def _body(request: Request, kind: type[_Body]) -> _Body:
    """The JSON body as ``kind`` (an empty body: its defaults); 400 with the reason."""
    raw = await read_body(request, MAX_BODY_BYTES, BODY_WITHIN_S)
    try:
        data = json.loads(raw) if raw.strip() else {}
        return kind.model_validate(data)
    except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as exc:
        raise ApiError(400, f"bad request body: {exc}") from None

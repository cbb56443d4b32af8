"""The HTTP app: v1 predict, the Open Inference Protocol v2 (:mod:`.protocol_v2`), metrics.

Request path: body read with a byte limit -> decode + resize in a thread pool (4xx here, before
the queue) -> runner queue -> batch in a model thread -> JSON. The model loads in the
background after start-up, so ``/v2/health/live`` answers at once and ``/v2/health/ready``
says 503 until every batch size has been warmed up.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from visionloop import __version__, imaging
from visionloop.imaging import encode_png
from visionloop.models.base import IMAGE, MASKS, JSONDict, VisionModel
from visionloop.models.masks import MASK_FORMATS, encode_masks
from visionloop.serving import page, protocol_v2, repository_api
from visionloop.serving.fleet import Loader
from visionloop.serving.lag import thaw_heap
from visionloop.serving.runner import (
    DeadlineExceeded,
    ItemResult,
    ModelFailed,
    NotReady,
    QueueFull,
)
from visionloop.serving.state import (
    ANSWER_BY,
    ANSWER_CHECKED,
    ApiError,
    ClientGone,
    ServerState,
    error_response,
    timeout_from,
)
from visionloop.serving.transport.base import Transport
from visionloop.serving.uploads import FilePart, UploadLimits, read_body, read_multipart
from visionloop.settings import ImagingSettings, ModelSettings, RedisSettings, ServeSettings

log = logging.getLogger("visionloop.serve")

_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            },
        },
    }
}


def create_app(
    settings: ServeSettings | None = None,
    model_settings: ModelSettings | None = None,
    imaging_settings: ImagingSettings | None = None,
    model: VisionModel | None = None,
    redis_settings: RedisSettings | None = None,
    loader: Loader | None = None,
) -> FastAPI:
    """Build the ASGI app. ``model`` (already prepared) skips loading from the registry.

    With ``settings.model_repository`` the app serves every model of that folder
    (:mod:`visionloop.serving.fleet`; ``loader`` replaces how a version is loaded, for tests)
    and has the repository API (:mod:`visionloop.serving.repository_api`).

    With ``settings.transport == "redis"`` the app is an API replica: it loads no model and
    queues jobs on Redis Streams for ``visionloop worker`` processes (``redis_settings``); with
    a model repository too, those are ``visionloop worker --model-repository`` processes, and
    ``loader`` is refused (ValueError: nothing is loaded here).
    """
    serve = settings or ServeSettings()
    if loader is not None and serve.model_repository is not None and serve.transport == "redis":
        raise ValueError("loader: an API replica of Redis workers loads no model version")
    limits_settings = imaging_settings or ImagingSettings()
    state = ServerState(
        settings=serve,
        model_settings=model_settings or ModelSettings(),
        limits=imaging.ImageLimits(limits_settings.max_bytes, limits_settings.max_pixels),
    )
    app = FastAPI(
        title="visionloop",
        version=__version__,
        description="Image classification behind a dynamic-batching queue. "
        "v1: raw image in, JSON out. v2: Open Inference Protocol (KServe / Triton).",
        lifespan=_lifespan(state, model, redis_settings, loader),
    )
    app.state.visionloop = state
    _install_error_handlers(app, state)
    app.add_middleware(_RequestMetrics, state=state)
    app.include_router(_v1_router(state))
    app.include_router(_ops_router(state))
    app.include_router(page.router(state, _authorise))
    app.include_router(protocol_v2.router(state, _authorise))
    if state.settings.model_repository is not None:
        app.include_router(repository_api.router(state, _authorise))
    return app


def _lifespan(
    state: ServerState,
    model: VisionModel | None,
    redis_settings: RedisSettings | None,
    loader: Loader | None = None,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start the settings' transport in the background (routes answer 503 until it is ready);
    at shutdown drain it and stop the decode pool and the lag probe."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from visionloop.serving.startup import TRANSPORTS, ModelRepository, Startup

        settings = state.settings
        # the name was checked against the table when the settings were read
        startup: Startup = TRANSPORTS[settings.transport]
        if settings.model_repository is not None and settings.transport == "redis":
            # versions served by repository workers: this process loads none (no loader)
            from visionloop.serving.transport.redis_fleet import RedisRepository

            startup = RedisRepository()
        elif settings.model_repository is not None:
            startup = ModelRepository(loader)
        loading = asyncio.create_task(startup.start(state, model, redis_settings))
        try:
            yield
        finally:
            await asyncio.gather(loading, return_exceptions=True)
            if state.runner is not None:
                log.info("draining: %d queued", state.runner.queued())
                await state.runner.stop(settings.drain_timeout_s)
            if state.fleet is not None:
                await state.fleet.stop(settings.drain_timeout_s)
            state.decode_pool.shutdown(wait=False, cancel_futures=True)
            await state.lag.stop()
            thaw_heap()

    return lifespan


def _v1_router(state: ServerState) -> APIRouter:
    """The v1 route, bound to one server's state."""
    api = APIRouter(tags=["v1"])

    @api.post("/v1/models/{model}/predict", openapi_extra=_IMAGE_BODY)
    @api.post("/v1/models/{model}/versions/{version}/predict", openapi_extra=_IMAGE_BODY)
    async def predict(model: str, request: Request, version: str | None = None) -> Response:
        """Classify one image (raw body) or several (multipart, one part per file); without a
        version, the model's serving version (or its canary) answers."""
        _authorise(state, request)
        with state.lease(model, version) as runner:
            return await _predict(state, request, runner)

    return api


async def _predict(state: ServerState, request: Request, runner: Transport) -> Response:
    """One v1 request on the version it was leased."""
    timeout = timeout_from(request.headers.get("x-timeout-ms"), "X-Timeout-Ms")
    arrived = state.start_clock(request, runner, timeout)  # the deadline counts from here
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await _predict_many(state, request, runner, timeout, arrived)
    masks = _mask_request(request, runner)
    as_png = _wants_png(request, runner)
    state.admit(runner, timeout, arrived)  # an overloaded model refuses before the body
    data = await read_body(request, state.limits.max_bytes, _left(runner, timeout, arrived))
    started = time.perf_counter()
    image = await state.decode(data, runner, timeout, arrived)
    decode_ms = (time.perf_counter() - started) * 1e3
    item = await state.infer(request, runner, image, timeout, arrived)
    if as_png:
        return _png_answer(runner, item, decode_ms, started)
    return JSONResponse(_v1_body(runner, item, decode_ms, started, masks))


def _accepted(header: str) -> dict[str, float]:
    """``Accept`` media ranges and their ``q`` (1 unless given; a bad q counts as 0)."""
    ranges: dict[str, float] = {}
    for part in header.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if not media:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        ranges[media.lower()] = max(q, ranges.get(media.lower(), 0.0))
    return ranges


def _wants_png(request: Request, runner: Transport) -> bool:
    """Whether to answer the picture itself: the client prefers ``image/png`` (or
    ``image/*``) at least as much as JSON, and the model returns a picture (``restorer``).
    A client that accepts pictures and not JSON, of a model without one, gets 406 before its
    upload is read. Anything else (no ``Accept``, ``*/*``, other types): JSON, as always."""
    header = request.headers.get("accept", "").strip()
    if not header:
        return False
    ranges = _accepted(header)
    png = ranges.get("image/png", ranges.get("image/*", 0.0))
    as_json = ranges.get("application/json", ranges.get("application/*", ranges.get("*/*", 0.0)))
    has_image = any(o.name == IMAGE for o in runner.model.outputs)
    if png > 0 and has_image and png >= as_json:
        return True
    if png > 0 and as_json <= 0:  # only a picture is acceptable, and there is none
        raise ApiError(
            406, f"model {runner.name!r} version {runner.version} returns no image; accept "
            "application/json", None, "NotAcceptable",
        )  # fmt: skip
    return False


def _png_answer(runner: Transport, item: ItemResult, decode_ms: float, started: float) -> Response:
    """The restored picture as PNG; the JSON's figures travel in ``X-`` headers."""
    body = encode_png(np.asarray(item.outputs[IMAGE]))
    total = (time.perf_counter() - started) * 1e3
    headers = {
        "X-Model": runner.name, "X-Model-Version": str(runner.version),
        "X-Batch-Size": str(item.batch_size),
        "X-Timing-Ms": f"decode={decode_ms:.3f}, queue={item.queue_ms:.3f}, "
        f"inference={item.compute_ms:.3f}, total={total:.3f}",
    }  # fmt: skip
    return Response(body, media_type="image/png", headers=headers)


def _ops_router(state: ServerState) -> APIRouter:
    """What operators scrape: ``/metrics``."""
    api = APIRouter(tags=["ops"])

    @api.get("/metrics")
    async def metrics() -> Response:
        """Prometheus metrics."""
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    return api


def _left(runner: Transport, timeout_ms: float | None, arrived: float) -> float:
    """Seconds left of a request's deadline: the time its body has to arrive in."""
    return runner.deadline(timeout_ms, arrived) - runner.clock()


def _authorise(state: ServerState, request: Request) -> None:
    token = state.settings.api_token
    if not token:
        return
    sent = request.headers.get("authorization", "").encode("utf-8", "surrogateescape")
    # Constant time: how long the comparison takes must not say how much of a guess was right.
    if not hmac.compare_digest(sent, f"Bearer {token}".encode("utf-8", "surrogateescape")):
        raise ApiError(
            401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"}, "Unauthorized"
        )


@dataclass(frozen=True)
class MaskRequest:
    """What a v1 request asks of a segmenter's masks: ``?masks=png|rle|none`` (default png)
    and ``?classes=plane,cat`` (default every class the model has)."""

    fmt: str = "png"
    classes: tuple[str, ...] | None = None


def _mask_request(request: Request, runner: Transport) -> MaskRequest:
    """The request's mask parameters, checked against the version that will answer, before
    any work: a class the version does not have is a 400 naming the classes it has."""
    fmt = request.query_params.get("masks", "png")
    if fmt not in MASK_FORMATS:
        raise ApiError(400, f"masks must be one of {', '.join(MASK_FORMATS)}, got {fmt!r}")
    wanted = request.query_params.get("classes")
    if wanted is None:
        return MaskRequest(fmt)
    model = runner.model
    where = f"model {runner.name!r} version {runner.version}"
    if not any(o.name == MASKS for o in model.outputs):
        raise ApiError(400, f"{where} returns no masks: ?classes= chooses masks (its "
                       f"classes: {', '.join(model.classes) or 'none'})")  # fmt: skip
    names = tuple(dict.fromkeys(c.strip() for c in wanted.split(",") if c.strip()))
    if not names:
        raise ApiError(400, f"?classes= names no class; the classes of {where} are "
                       f"{', '.join(model.classes)}")  # fmt: skip
    unknown = [c for c in names if c not in model.classes]
    if unknown:
        raise ApiError(400, f"{where} has no class {', '.join(map(repr, unknown))}; its "
                       f"classes are {', '.join(model.classes)}")  # fmt: skip
    return MaskRequest(fmt, names)


def _v1_body(
    runner: Transport,
    item: ItemResult,
    decode_ms: float,
    started: float,
    masks: MaskRequest = MaskRequest(),
) -> JSONDict:
    extra: JSONDict = {}
    if IMAGE in item.outputs:  # a picture in JSON: base64 PNG
        png = encode_png(np.asarray(item.outputs[IMAGE]))
        extra = {"image_format": "png", "image": base64.b64encode(png).decode("ascii")}
    if MASKS in item.outputs and masks.fmt != "none":
        classes, planes = runner.model.classes, np.asarray(item.outputs[MASKS])
        if masks.classes is not None and len(planes) == len(classes):
            keep = [classes.index(c) for c in masks.classes]
            classes, planes = masks.classes, planes[keep]
        extra = {"mask_format": masks.fmt, "masks": encode_masks(planes, classes, masks.fmt)}
    return {
        "model": runner.name,
        "model_version": runner.version,
        **item.result,
        **extra,
        "batch_size": item.batch_size,
        "timing_ms": {
            "decode": round(decode_ms, 3),
            "queue": round(item.queue_ms, 3),
            "inference": round(item.compute_ms, 3),
            "total": round((time.perf_counter() - started) * 1e3, 3),
        },
    }


async def _predict_many(
    state: ServerState, request: Request, runner: Transport, timeout: float | None, arrived: float
) -> Response:
    masks = _mask_request(request, runner)  # a bad parameter costs no upload
    settings = state.settings
    limits = UploadLimits(settings.max_request_bytes, state.limits.max_bytes, settings.max_files)
    files = await read_multipart(request, limits, _left(runner, timeout, arrived))

    async def one(upload: FilePart) -> JSONDict:
        started = time.perf_counter()
        image = await state.decode(upload.data, runner, timeout, arrived)
        decode_ms = (time.perf_counter() - started) * 1e3
        item = await state.infer(request, runner, image, timeout, arrived)
        return {"file": upload.filename, **_v1_body(runner, item, decode_ms, started, masks)}

    answers = await asyncio.gather(*(one(u) for u in files), return_exceptions=True)
    predictions: list[JSONDict] = []
    for upload, answer in zip(files, answers, strict=True):
        if isinstance(answer, ClientGone):
            raise answer
        if isinstance(answer, BaseException):
            if not isinstance(answer, Exception):
                raise answer
            response = error_response(answer, runner)
            item = {"file": upload.filename, "status": response.status_code}
            predictions.append({**item, **_json(response)})
        else:
            predictions.append(answer)
    return JSONResponse(
        {"model": runner.name, "model_version": runner.version, "predictions": predictions}
    )


def _json(response: JSONResponse) -> JSONDict:
    import json

    body: JSONDict = json.loads(bytes(response.body))
    return body


def _install_error_handlers(app: FastAPI, state: ServerState) -> None:
    async def handle(request: Request, exc: Exception) -> Response:
        if isinstance(exc, ClientGone):
            return Response(status_code=499)
        return error_response(exc, state.runner)

    for kind in (
        ApiError,
        imaging.ImageError,
        QueueFull,
        DeadlineExceeded,
        NotReady,
        ModelFailed,
        ValueError,
        ClientGone,
    ):
        app.add_exception_handler(kind, handle)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse(
            {"error": str(exc.detail), "type": "HTTPException"},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse(
            {"error": str(exc.errors()), "type": "ValidationError"}, status_code=422
        )

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)


class _RequestMetrics:
    """Pure ASGI middleware timing the inference routes and counting their statuses."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        labels = _inference_route(scope.get("path", "")) if scope["type"] == "http" else None
        if labels is None:
            await self.app(scope, receive, send)
            return
        status = 499  # unless a response starts, the client went away first
        started = time.perf_counter()
        late = False

        async def tracking_send(message: MutableMapping[str, Any]) -> None:
            nonlocal status, late
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done = time.monotonic()
                answer_by = scope.get(ANSWER_BY)
                if status == 200 and answer_by is not None and done > answer_by:
                    late = True
                checked = scope.get(ANSWER_CHECKED)
                if status == 200 and checked is not None:
                    self.state.answer_written(checked, done)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            model, endpoint = labels
            if not self.state.serves(model):
                model = "unknown"  # bound the label set: the path is the client's to choose
            metrics = self.state.metrics
            metrics.latency.labels(model=model, endpoint=endpoint).observe(
                time.perf_counter() - started
            )
            metrics.requests.labels(model=model, endpoint=endpoint, status=str(status)).inc()
            if late:
                metrics.late_answers.labels(model=model, endpoint=endpoint).inc()


def _inference_route(path: str) -> tuple[str, str] | None:
    parts = path.strip("/").split("/")
    if len(parts) in (4, 6) and parts[:2] == ["v1", "models"] and parts[-1] == "predict":
        return parts[2], "v1_predict"
    if len(parts) >= 4 and parts[:2] == ["v2", "models"] and parts[-1] == "infer":
        return parts[2], "v2_infer"
    return None

"""BentoML 1.4 peer: the catdog model behind BentoML's adaptive (CORK) batching dispatcher.

Served by start.sh as ``bentoml serve server:CatDog --working-dir <this folder> --host 127.0.0.1``.

* ``POST /predict`` takes the raw image bytes (content-type image/jpeg) and answers
  ``{"label": ..., "scores": {...}}``; ``GET /readyz`` is 200 once the model is loaded.
  BentoML's own request parsing knows JSON, multipart and pickle only, so the API has a custom
  input descriptor (``RawImage``, given to ``@bentoml.api(input_spec=...)``) whose
  ``from_http_request`` reads the raw body and decodes it with ``common.decode`` in a 2-thread
  pool (visionloop's ``decode_threads`` default): per request, before the batch is formed.
  Each request then enters BentoML's batching dispatcher as a (1, 224, 224, 3) uint8 array.
* Batching: ``@bentoml.api(batchable=True, batch_dim=0, max_batch_size=8)`` in one worker
  process (``workers=1``) with one inference thread (``threads=1``).
* Deadlines (``VISIONLOOP_PEER_MODE``, see common.py), BentoML 1.4.40's own two:
  ``max_latency_ms`` on the API (the CORK dispatcher cancels the oldest queued request, 503,
  once its wait plus the estimated batch time reaches it) and the service's ``traffic.timeout``
  (seconds; TimeoutMiddleware answers 504 when no response has started by then). ``shipped``:
  BentoML's defaults (60000 ms, 60 s); ``slo``: both = ``VISIONLOOP_PEER_SLO_MS``.
* Batch sizes: BentoML's ``/metrics`` has the ``bentoml_service_adaptive_batch_size`` histogram;
  each batch is also logged to stderr (``bentoml-peer batch=N``).
"""

import os
import sys
import threading
import typing as t
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bentoml
import numpy as np
from _bentoml_sdk.io_models import IORootModel
from bentoml.exceptions import BadInput
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import common

MAX_BATCH_SIZE = 8
# Not a batching wait: BentoML's dispatcher picks its own wait (adaptive, from the measured cost
# of past batches) and *drops* requests (503) whose queueing + estimated run time would exceed
# this budget. As shipped: BentoML's default, 60000 ms; slo mode: the SLO.
MAX_LATENCY_MS = round(common.SLO_MS) if common.slo_mode() else 60_000
# The service's request timeout (TimeoutMiddleware, 504): BentoML's default 60 s as shipped.
TRAFFIC_TIMEOUT_S = common.SLO_MS / 1000 if common.slo_mode() else 60.0
print(
    f"bentoml-peer mode={common.MODE} max_latency_ms={MAX_LATENCY_MS} "
    f"traffic.timeout={TRAFFIC_TIMEOUT_S:g}s threads={common.THREADS}",
    file=sys.stderr,
    flush=True,
)
DECODE_THREADS = 2

_decode_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _decode_pool
    with _pool_lock:  # created in the worker process, after BentoML forked/spawned it
        if _decode_pool is None:
            _decode_pool = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="decode")
        return _decode_pool


def _input_spec_holder() -> t.Any:
    # common.decode(model, data) reads only model.input_spec (the same object on the class).
    from visionloop.models.catdog import CatDog as CatDogModel

    return CatDogModel


_SPEC = _input_spec_holder()


class RawImage(IORootModel[t.Any]):
    """Input: the request body is the encoded image itself (no JSON, no multipart)."""

    media_type = "image/jpeg"

    @classmethod
    async def from_http_request(cls, request: Request, serde: t.Any) -> "RawImage":
        import asyncio

        data = await request.body()
        if not data:
            raise BadInput("empty body: POST the raw image bytes")
        loop = asyncio.get_running_loop()
        try:
            image = await loop.run_in_executor(_pool(), common.decode, _SPEC, data)
        except Exception as exc:  # undecodable / too large: a 4xx, never a batch slot
            raise BadInput(f"cannot decode image: {exc}") from exc
        return cls.model_construct(root=image[np.newaxis])  # batch dim 0, size 1


RawImage.__root_input__ = True  # type: ignore[attr-defined]  # call predict(root), not predict(**fields)


class OneResult(IORootModel[t.Any]):
    """Output: the dispatcher hands each request its slice of the batch output, a 1-item list."""

    @classmethod
    async def to_http_response(cls, obj: t.Any, serde: t.Any) -> Response:
        return JSONResponse(obj[0] if isinstance(obj, list) else obj)


# Access logs off: visionloop's benchmark runs it with --log-level warning (no access log).
@bentoml.service(
    workers=1,
    threads=1,
    traffic={"timeout": TRAFFIC_TIMEOUT_S},
    logging={"access": {"enabled": False}},
)
class CatDog:
    def __init__(self) -> None:
        self.model = common.load_model()  # calls common.set_threads() in this thread
        self._torch_threads: set[int] = set()
        self.batches = 0
        self.items = 0
        print(
            f"bentoml-peer model loaded in pid={os.getpid()} "
            f"thread={threading.current_thread().name}",
            file=sys.stderr,
            flush=True,
        )

    def __is_ready__(self) -> bool:
        return self.model is not None

    @bentoml.api(
        route="/predict",
        input_spec=RawImage,
        output_spec=OneResult,
        batchable=True,
        batch_dim=0,
        max_batch_size=MAX_BATCH_SIZE,
        max_latency_ms=MAX_LATENCY_MS,
    )
    def predict(self, images: np.ndarray) -> list[dict[str, t.Any]]:
        # Runs in an anyio worker thread (BentoML's threads=1 limiter): any thread of anyio's
        # pool may be the one, so set torch's threads in each new one.
        ident = threading.get_ident()
        if ident not in self._torch_threads:
            common.set_threads()
            self._torch_threads.add(ident)
            print(
                f"bentoml-peer torch runs in pid={os.getpid()} "
                f"thread={threading.current_thread().name} "
                f"torch_threads={common.torch.get_num_threads()}",
                file=sys.stderr,
                flush=True,
            )
        self.batches += 1
        self.items += len(images)
        print(
            f"bentoml-peer batch={len(images)} batches={self.batches} items={self.items}",
            file=sys.stderr,
            flush=True,
        )
        return common.predict_batch(self.model, list(images))

"""LitServe 0.2.19 peer: the catdog model behind LitServe's batched loop.

Run with the peer venv's python (see start.sh): ``server.py --port PORT``.

* ``POST /predict`` takes the raw image bytes (content-type image/jpeg) and answers
  ``{"label": ..., "scores": {"cat": .., "dog": .., "neither": ..}}``; ``GET /health`` is 200
  once the inference worker has loaded the model.
* Decoding happens per request in the HTTP (uvicorn) process: a FastAPI dependency reads the body
  and runs ``common.decode`` on a 2-thread pool (visionloop's decode_threads default), so the
  inference worker only gets uint8 arrays and its batch path is stack -> forward -> postprocess
  (as in visionloop, which decodes in a thread pool before the batcher).
* Batching: ``LitAPI(max_batch_size=8, batch_timeout=0.010)``; one inference worker process
  (``workers_per_device=1``, ``accelerator="cpu"``) and one API server process.
* Deadline (``VISIONLOOP_PEER_MODE``, see common.py): LitServer's ``timeout`` is LitServe's only
  deadline knob. In 0.2.19 the inference worker checks it when it takes a request off the queue
  (loops/base.py collate_requests): a request that waited longer is answered 504 "Request timed
  out" without running; one taken in time runs to the end, however late. No queue bound exists.
  ``shipped``: not passed (LitServe's default, 30 s); ``slo``: ``VISIONLOOP_PEER_SLO_MS`` / 1000.
* Each batch's size is logged to stderr (``litserve-peer batch=N batches=B items=I``): LitServe
  itself reports no batch sizes.
* No ``from __future__ import annotations`` here: LitServe hands decode_request's annotation
  object to FastAPI, which must get the real ``Annotated[...]``, not a string.
"""

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import litserve as ls
import numpy as np
from fastapi import Depends, HTTPException, Request

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import common

log = logging.getLogger("litserve-peer")

MAX_BATCH_SIZE = 8
BATCH_TIMEOUT_S = 0.010
DECODE_THREADS = 2  # visionloop's serve.decode_threads default


def _crop_holder() -> Any:
    # common.decode(model, data) reads only model.input_spec; the API process needs no weights
    # for that, so it gets the model class (the same InputSpec object the loaded model has).
    from visionloop.models.catdog import CatDog

    return CatDog


_SPEC = _crop_holder()


_decode_pool: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    # Made on first use, i.e. in the (forked) API process, never in the parent.
    global _decode_pool
    if _decode_pool is None:
        _decode_pool = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="decode")
    return _decode_pool


async def decoded_body(request: Request) -> np.ndarray:
    """FastAPI dependency: raw body -> 224x224x3 uint8, decoded on the 2-thread decode pool."""
    data = await request.body()
    if not data:
        raise HTTPException(status_code=400, detail="empty body: POST the raw image bytes")
    try:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_pool(), common.decode, _SPEC, data)
    except Exception as exc:  # undecodable / too large: a 4xx, never a batch slot
        raise HTTPException(status_code=400, detail=f"cannot decode image: {exc}") from exc


class CatDogAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.model = common.load_model()  # calls common.set_threads() in this thread
        self._threads_set_in: str | None = None
        self.batches = 0
        self.items = 0
        log.warning(
            "litserve-peer model loaded in pid=%d thread=%s device=%s",
            os.getpid(),
            threading.current_thread().name,
            device,
        )

    # The annotation is what LitServe hands to FastAPI as the endpoint's parameter: the dependency
    # runs in the API process and the (picklable) array goes to the worker through the queue.
    def decode_request(  # type: ignore[override]
        self, request: Annotated[np.ndarray, Depends(decoded_body)]
    ) -> np.ndarray:
        return request

    def batch(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return inputs  # predict_batch stacks

    def predict(self, x: list[np.ndarray]) -> list[dict[str, Any]]:
        if self._threads_set_in is None:
            # The batched loop runs in the worker process's main thread, the same one as setup();
            # set the threads again here anyway, where torch actually runs.
            common.set_threads()
            self._threads_set_in = threading.current_thread().name
            log.warning(
                "litserve-peer torch runs in pid=%d thread=%s torch_threads=%d",
                os.getpid(),
                self._threads_set_in,
                common.torch.get_num_threads(),
            )
        self.batches += 1
        self.items += len(x)
        print(
            f"litserve-peer batch={len(x)} batches={self.batches} items={self.items}",
            file=sys.stderr,
            flush=True,
        )
        return common.predict_batch(self.model, x)

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    # LitServe shuts down gracefully on KeyboardInterrupt only; make SIGTERM do the same so that
    # `kill PID` (what an orchestrator sends) stops the worker and API processes too.
    # The handler is inherited by the forked uvicorn process, which LitServe itself stops with
    # SIGTERM (uvicorn re-raises it after its own shutdown): there, behave as the default.
    main_pid = os.getpid()

    def _sigterm(signum: int, frame: Any) -> None:
        if os.getpid() == main_pid:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, _sigterm)

    api = CatDogAPI(max_batch_size=MAX_BATCH_SIZE, batch_timeout=BATCH_TIMEOUT_S)
    # The request deadline: LitServe's default (30 s) as shipped, the SLO in slo mode.
    deadline = {"timeout": common.SLO_MS / 1000} if common.slo_mode() else {}
    log.warning("litserve-peer mode=%s %s", common.MODE, deadline or "timeout=default (30 s)")
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, **deadline)
    server.run(
        host=args.host,
        port=args.port,
        num_api_servers=1,
        generate_client_file=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()

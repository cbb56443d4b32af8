"""Ray Serve peer: visionloop's catdog model behind ``@serve.batch``.

Run by start.sh (``python serve_app.py --port PORT``) inside its own network namespace: Ray's
internal servers (GCS, raylet, object manager, ...) bind every interface, only Serve's HTTP
proxy is told 127.0.0.1. One process tree: this driver starts a local Ray "cluster" limited to
2 CPUs, deploys one replica and blocks until SIGTERM/SIGINT, then shuts Serve and Ray down.

Routes (all on 127.0.0.1:PORT): ``POST /predict`` raw image bytes -> {"label", "scores"};
``GET /ready`` -> 200 once the replica has loaded and warmed the model (before that the
connection is refused or the proxy answers 404/503).

Deadline (``VISIONLOOP_PEER_MODE``, see ../common.py): Serve's HTTP proxy has an end-to-end
``request_timeout_s`` (HTTPOptions): past it the proxy answers 408 and cancels the request in
the replica. ``shipped``: unset (Serve's default: none); ``slo``: ``VISIONLOOP_PEER_SLO_MS``/1000.
``max_queued_requests`` (per deployment, 503 beyond it) stays at Serve's default (-1: no bound).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

PEERS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_BATCH_SIZE = 8  # visionloop's default max_batch_size
BATCH_WAIT_S = 0.010  # visionloop's default max_delay_ms = 10
DECODE_THREADS = int(os.environ.get("VISIONLOOP_DECODE_THREADS", "2") or 2)
# Read here too (the driver does not import common.py, which loads torch): same names, values.
MODE = os.environ.get("VISIONLOOP_PEER_MODE", "shipped") or "shipped"
SLO_MS = float(os.environ.get("VISIONLOOP_PEER_SLO_MS", "250") or 250)


def http_options(port: int) -> dict[str, Any]:
    """Serve's HTTP proxy options: loopback, and in slo mode the end-to-end request timeout."""
    if MODE not in ("shipped", "slo"):
        raise SystemExit(f"VISIONLOOP_PEER_MODE must be shipped or slo, not {MODE!r}")
    options: dict[str, Any] = {"host": "127.0.0.1", "port": port}
    if MODE == "slo":
        options["request_timeout_s"] = SLO_MS / 1000
    return options


@serve.deployment(
    num_replicas=1,
    # Serve's default is 5, which would cap batches at 5; visionloop queues up to 64.
    max_ongoing_requests=64,
    ray_actor_options={"num_cpus": 1},
)
class CatDog:
    def __init__(self) -> None:
        if PEERS_DIR not in sys.path:
            sys.path.insert(0, PEERS_DIR)
        import common  # benchmarks/peers/common.py

        self.common = common
        # One thread runs torch (threads set in it, as common.set_threads asks); two decode,
        # like visionloop's executor + decode pool. The event loop only routes.
        self.torch_pool = ThreadPoolExecutor(1, "torch", initializer=common.set_threads)
        self.decode_pool = ThreadPoolExecutor(DECODE_THREADS, "decode")
        self.model = self.torch_pool.submit(common.load_model).result()
        self.torch_threads = self.torch_pool.submit(
            lambda: __import__("torch").get_num_threads()
        ).result()
        self.batches = 0
        print(
            f"visionloop-peer model loaded, torch threads={self.torch_threads}",
            file=sys.stderr,
            flush=True,
        )

    def _infer(self, images: list[Any]) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        out = self.common.predict_batch(self.model, images)
        self.batches += 1
        print(
            f"visionloop-peer batch={len(images)} n={self.batches} "
            f"ms={1000 * (time.perf_counter() - t0):.1f}",
            file=sys.stderr,
            flush=True,
        )
        return out

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
    async def predict(self, images: list[Any]) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.torch_pool, self._infer, images)

    async def __call__(self, request: Request) -> JSONResponse:
        path = request.url.path.rstrip("/") or "/"
        if path == "/ready" and request.method in ("GET", "HEAD"):
            return JSONResponse({"ready": True, "torch_threads": self.torch_threads})
        if path != "/predict":
            return JSONResponse({"error": f"no route {path}"}, status_code=404)
        if request.method != "POST":
            return JSONResponse({"error": "POST the image bytes"}, status_code=405)
        body = await request.body()
        loop = asyncio.get_running_loop()
        try:
            image = await loop.run_in_executor(
                self.decode_pool, self.common.decode, self.model, body
            )
        except ValueError as exc:  # visionloop.imaging.ImageError and kin
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(await self.predict(image))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--temp-dir", required=True)
    args = parser.parse_args()

    stop = threading.Event()
    t0 = time.perf_counter()
    ray.init(
        address="local",  # always a fresh local cluster, never someone else's
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        object_store_memory=256 * 1024 * 1024,
        _node_ip_address="127.0.0.1",
        _temp_dir=args.temp_dir,
        configure_logging=True,
        logging_level="WARNING",
    )
    # After ray.init, which installs its own SIGTERM handler (sys.exit).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        options = http_options(args.port)
        print(f"rayserve: mode={MODE} http_options={options}", file=sys.stderr, flush=True)
        serve.start(http_options=options)
        serve.run(CatDog.bind(), name="catdog", route_prefix="/", blocking=False)
        print(
            f"rayserve: ready on http://127.0.0.1:{args.port} ({time.perf_counter() - t0:.1f}s)",
            file=sys.stderr,
            flush=True,
        )
        while not stop.wait(1.0):
            pass
    finally:
        print("rayserve: shutting down", file=sys.stderr, flush=True)
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
        print("rayserve: stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Ray is shut down; skip interpreter teardown, where Ray's C++ core can abort (SIGABRT).
    os._exit(code)

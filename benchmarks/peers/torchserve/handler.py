"""TorchServe custom handler: visionloop's catdog model behind TorchServe's own batching.

TorchServe's frontend (Java) collects up to ``batchSize`` requests, waiting at most
``maxBatchDelay`` ms after the first (model-config.yaml), and hands the batch to this handler in
its single Python worker. ``preprocess`` gets one entry per request whose "data"/"body" is the raw
POSTed bytes; ``postprocess`` returns one JSON-ready dict per request, in order.

``common.py`` is packed into the .mar (``--extra-files``) and sits next to this file.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import common  # benchmarks/peers/common.py, shipped inside the .mar
import numpy as np
import torch

DECODE_THREADS = int(os.environ.get("VISIONLOOP_DECODE_THREADS", "2") or 2)
_PROBE = object()  # marks a readiness check in the batch


class CatDogHandler:
    def __init__(self) -> None:
        self.model: Any = None
        self.initialized = False
        self.context: Any = None
        self.pool: ThreadPoolExecutor | None = None
        self.batches = 0

    def initialize(self, context: Any) -> None:
        self.context = context
        common.set_threads()
        self.model = common.load_model()
        # Same as visionloop's decode_threads=2: Pillow releases the GIL while decoding.
        self.pool = ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="decode")
        self.initialized = True
        print(
            f"visionloop-peer model loaded, torch threads={torch.get_num_threads()}",
            file=sys.stderr,
            flush=True,
        )

    @staticmethod
    def _payload(request: Any) -> bytes:
        data = request.get("data") if isinstance(request, dict) else request
        if data is None and isinstance(request, dict):
            data = request.get("body")
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        if isinstance(data, str):
            data = data.encode("latin-1")
        if not isinstance(data, bytes):
            raise ValueError(f"expected raw image bytes, got {type(data).__name__}")
        return data

    @staticmethod
    def _is_probe(request: Any) -> bool:
        """A request without a body (``GET /predictions/catdog``) is the readiness check. This
        worker answers it, so it only succeeds once the model is loaded (TorchServe's /ping says
        "Healthy" while the worker is still loading). TorchServe 0.12 does not hand query
        parameters or the HTTP method to the handler, so an empty body is the only marker."""
        if not isinstance(request, dict):
            return False
        data = request.get("data", request.get("body"))
        return data is None or len(data) == 0

    def _decode_one(self, request: Any) -> Any:
        if self._is_probe(request):
            return _PROBE
        try:
            return common.decode(self.model, self._payload(request))
        except Exception as exc:  # one bad upload must not fail the whole batch
            return exc

    def preprocess(self, requests: list[Any]) -> list[Any]:
        """Decode every request of the batch (2 threads, like visionloop's decode pool)."""
        assert self.pool is not None
        return list(self.pool.map(self._decode_one, requests))

    def inference(self, decoded: list[Any]) -> list[dict[str, Any] | None]:
        """One forward pass over the images that decoded; None where decoding failed."""
        good = [i for i, d in enumerate(decoded) if isinstance(d, np.ndarray)]
        results: list[dict[str, Any] | None] = [None] * len(decoded)
        if good:
            common.set_threads()
            for i, r in zip(
                good, common.predict_batch(self.model, [decoded[i] for i in good]), strict=True
            ):
                results[i] = r
        return results

    def postprocess(self, decoded: list[Any], results: list[Any]) -> list[dict[str, Any]]:
        """One answer per request, in order; a failed decode becomes that request's 400."""
        out: list[dict[str, Any]] = []
        for i, (d, r) in enumerate(zip(decoded, results, strict=True)):
            if d is _PROBE:
                out.append({"ready": True})
            elif isinstance(d, Exception):
                self.context.set_response_status(400, str(d), idx=i)
                out.append({"error": str(d)})
            else:
                out.append(r)
        return out

    def handle(self, data: list[Any], context: Any) -> list[dict[str, Any]]:
        self.context = context
        t0 = time.perf_counter()
        decoded = self.preprocess(data)
        t1 = time.perf_counter()
        results = self.inference(decoded)
        t2 = time.perf_counter()
        out = self.postprocess(decoded, results)
        images = sum(isinstance(d, np.ndarray) for d in decoded)
        if images:
            self.batches += 1
            # Batch sizes to stderr (TorchServe copies worker stderr into its model log).
            print(
                f"visionloop-peer batch={len(data)} images={images} n={self.batches} "
                f"ms={1000 * (time.perf_counter() - t0):.1f} "
                f"(forward {1000 * (t2 - t1):.1f}, threads {torch.get_num_threads()})",
                file=sys.stderr,
                flush=True,
            )
        return out

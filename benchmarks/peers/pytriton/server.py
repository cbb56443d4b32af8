"""PyTriton 0.7.0 peer (Triton 2.51 inside): the catdog model behind Triton's dynamic batcher.

Run with the peer venv's python (see start.sh): ``server.py --port PORT``.

* Triton speaks the Open Inference Protocol v2 only, so this peer is driven with v2 requests:
  ``POST /v2/models/catdog/infer`` with one BYTES input ``image_bytes`` holding the encoded
  image, request shape ``[1, 1]`` (binary tensor extension or JSON/base64); outputs ``label``
  (BYTES, shape [1, 1]) and ``scores`` (FP32 [1, 3]: P(cat), P(dog), P(neither)).
  Ready: ``GET /v2/models/catdog/ready``. A batch-only shape ``[1]`` is refused (400): Triton
  wants non-empty ``dims`` for a model with max_batch_size > 0 (even ``reshape`` keeps the
  request shape at ``[batch, 1]``).
* Batching: ``ModelConfig(max_batch_size=8, batcher=DynamicBatcher(max_queue_delay_microseconds=
  10000))``, one model instance (one infer callable).
* Deadline (``VISIONLOOP_PEER_MODE``, see common.py): Triton's dynamic batcher has a queue
  policy (``DynamicBatcher(default_queue_policy=QueuePolicy(...))`` in PyTriton 0.7.0).
  ``shipped``: none (PyTriton's default: no timeout, unbounded queue); ``slo``:
  ``QueuePolicy(timeout_action=REJECT, default_timeout_microseconds=VISIONLOOP_PEER_SLO_MS *
  1000)``: a request still queued after that is rejected with an error instead of run.
* Decoding: Triton has no per-request hook before its batcher, so the batched callable decodes
  the N images itself, in parallel on a 2-thread pool (visionloop's decode_threads default),
  then runs one forward pass.
* Each batch's size is logged to stderr (``pytriton-peer batch=N``); Triton's own metrics
  (``nv_inference_count`` / ``nv_inference_exec_count``) are on the metrics port printed at start.
* HTTP, metrics bound to 127.0.0.1; gRPC off (nothing here uses it).
"""

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, QueuePolicy, Tensor, TimeoutAction
from pytriton.triton import Triton, TritonConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import common

MODEL_NAME = "catdog"
INPUT_NAME = "image_bytes"
MAX_BATCH_SIZE = 8
MAX_QUEUE_DELAY_US = 10_000
DECODE_THREADS = 2


def queue_policy() -> QueuePolicy | None:
    """slo mode: Triton rejects a request that is still queued after the SLO (queue wait only:
    one already in a batch runs to the end). Shipped: no policy (no timeout, no queue bound)."""
    if not common.slo_mode():
        return None
    return QueuePolicy(
        timeout_action=TimeoutAction.REJECT,
        default_timeout_microseconds=round(common.SLO_MS * 1000),
        allow_timeout_override=False,
        max_queue_size=0,  # Triton's default: unbounded
    )


log = logging.getLogger("pytriton-peer")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CatDog:
    def __init__(self) -> None:
        self.model = common.load_model()  # calls common.set_threads() in this (main) thread
        self.decode_pool = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="decode")
        self._torch_threads: set[int] = set()
        self.batches = 0
        self.items = 0

    @batch
    def infer(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        ident = threading.get_ident()
        if ident not in self._torch_threads:  # PyTriton calls us from its own handler thread
            common.set_threads()
            self._torch_threads.add(ident)
            print(
                f"pytriton-peer torch runs in pid={os.getpid()} "
                f"thread={threading.current_thread().name} "
                f"torch_threads={common.torch.get_num_threads()}",
                file=sys.stderr,
                flush=True,
            )
        encoded = [bytes(e) for e in inputs[INPUT_NAME].reshape(-1)]
        images = list(self.decode_pool.map(lambda d: common.decode(self.model, d), encoded))
        self.batches += 1
        self.items += len(images)
        print(
            f"pytriton-peer batch={len(images)} batches={self.batches} items={self.items}",
            file=sys.stderr,
            flush=True,
        )
        results = common.predict_batch(self.model, images)
        labels = np.array([[r["label"].encode()] for r in results], dtype=np.object_)
        scores = np.array(
            [[r["scores"][k] for k in ("cat", "dog", "neither")] for r in results],
            dtype=np.float32,
        )
        return {"label": labels, "scores": scores}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    metrics_port = _free_port()
    config = TritonConfig(
        http_address=args.host,
        http_port=args.port,
        allow_grpc=False,
        grpc_address=args.host,
        grpc_port=_free_port(),
        allow_metrics=True,
        allow_cpu_metrics=False,
        allow_gpu_metrics=False,
        metrics_address=args.host,
        metrics_port=metrics_port,
        exit_on_error=True,
        exit_timeout_secs=10,
    )
    model = CatDog()
    print(f"pytriton-peer mode={common.MODE} queue_policy={queue_policy()}", file=sys.stderr)
    print(
        f"pytriton-peer model loaded; Triton metrics on http://{args.host}:{metrics_port}/metrics",
        file=sys.stderr,
        flush=True,
    )

    # PyTriton stops Triton on KeyboardInterrupt (SIGINT); make SIGTERM, what `kill` and
    # orchestrators send, do the same instead of killing this process outright.
    def _sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _sigterm)

    with Triton(config=config) as triton:  # workspace: a temp dir under $PYTRITON_HOME
        triton.bind(
            model_name=MODEL_NAME,
            infer_func=model.infer,
            inputs=[Tensor(name=INPUT_NAME, dtype=bytes, shape=(1,))],
            outputs=[
                Tensor(name="label", dtype=bytes, shape=(1,)),
                Tensor(name="scores", dtype=np.float32, shape=(3,)),
            ],
            config=ModelConfig(
                max_batch_size=MAX_BATCH_SIZE,
                batcher=DynamicBatcher(
                    max_queue_delay_microseconds=MAX_QUEUE_DELAY_US,
                    default_queue_policy=queue_policy(),
                ),
            ),
            strict=True,
        )
        triton.serve()  # blocks; SIGINT/SIGTERM stop Triton and return


if __name__ == "__main__":
    main()

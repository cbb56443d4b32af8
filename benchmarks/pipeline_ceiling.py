"""The in-process pipeline ceiling: decode + forward on the same cores, no HTTP, no queue.

    .venv/bin/python benchmarks/pipeline_ceiling.py --megapixels 1.5 \\
        --out benchmarks/results/pipeline_ceiling.json

What a server on this machine could at best answer per second: batches of ``--batch`` of the
same payloads the load tests send (the sample photos as JPEG q90, scaled to
``--megapixels``), each decoded and cropped by ``imaging.prepare`` on a pool of
``--decode-threads`` (the server's default 2) and then run through the model, one after the
other, for ``--seconds`` per engine, in ``--rounds`` rounds with the engines alternating. The
served closed-loop req/s divided by this is the "served / ceiling" ratio of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from visionloop import imaging
from visionloop.bench.load import load_payloads
from visionloop.models import VisionModel, load
from visionloop.settings import ModelSettings

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="auto,torch")
    parser.add_argument("--megapixels", type=float, default=1.5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decode-threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("out/pipeline_ceiling.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    payloads = load_payloads(ROOT / "tests" / "data", megapixels=args.megapixels)
    models = {
        e: load(ModelSettings(engine=e, threads=args.threads)) for e in args.engines.split(",")
    }
    pool = ThreadPoolExecutor(args.decode_threads)
    limits = imaging.ImageLimits()
    rates: dict[str, list[float]] = {e: [] for e in models}

    def one_batch(model: VisionModel, start: int) -> None:
        crop = model.input_spec.crop
        chunk = [payloads[(start + i) % len(payloads)] for i in range(args.batch)]
        images = list(pool.map(lambda data: imaging.prepare(data, crop, limits), chunk))
        outputs = model.forward(torch.from_numpy(np.stack(images)))
        model.postprocess({k: v.cpu() for k, v in outputs.items()})

    for model in models.values():  # warm-up
        one_batch(model, 0)
    for round_ in range(args.rounds):
        for engine in list(models)[round_ % 2 :] + list(models)[: round_ % 2]:
            done, started = 0, time.perf_counter()
            while time.perf_counter() - started < args.seconds:
                one_batch(models[engine], done)
                done += args.batch
            rates[engine].append(done / (time.perf_counter() - started))
    result = {
        "command": "python " + " ".join(sys.argv),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "engines": {e: models[e].engine_info() for e in models},
        "images_per_s_median": {e: statistics.median(r) for e, r in rates.items()},
        "images_per_s_rounds": rates,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for engine, rate in result["images_per_s_median"].items():  # type: ignore[attr-defined]
        print(f"{engine}: {rate:.1f} images/s (decode {args.megapixels} MP + forward)")


if __name__ == "__main__":
    main()

"""What restoring before classifying costs: model-only time per image of ``catdog`` and
``catdog_restored`` (the restorer, then catdog, in one network), side by side in one run.

    .venv/bin/python benchmarks/restore/latency.py --out benchmarks/results/restore_latency.json

Both prepared as the server prepares them (fusion, channels_last, float32, torch engine, the
given threads), on random 224 x 224 uint8 batches; rounds alternate the two models so drift of
the machine's speed hits both; each round times ``--reps`` passes after a warm-up. Reported per
batch size: the median over rounds of ms per image, and the ratio restored / plain per round
(median, min, max). ``--sizes`` names the restorers timed (channels x blocks): 48x6 is what
``train gan`` trains by default, 24x3 what ``study.py`` and ``catdog.py`` trained and judged;
the weights do not change the time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from compare import provenance  # noqa: E402

from visionloop.models import registry  # noqa: E402
from visionloop.models.restorer import CatDogRestored, RestoreNet, RestoreThenClassify  # noqa: E402
from visionloop.settings import ModelSettings  # noqa: E402


def per_image_ms(model: object, batch: torch.Tensor, reps: int) -> float:
    forward = model.forward  # type: ignore[attr-defined]
    forward(batch)
    started = time.perf_counter()
    for _ in range(reps):
        forward(batch)
    return (time.perf_counter() - started) * 1e3 / (reps * len(batch))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", default="48x6", help="restorers: channels x blocks, commas")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/restore_latency.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = ModelSettings(engine="torch", threads=args.threads)
    models = {"catdog": registry.create("catdog").prepare(settings)}
    for shape in args.sizes.split(","):
        width, blocks = (int(x) for x in shape.split("x"))
        network = RestoreThenClassify(RestoreNet(width, blocks))
        models[f"catdog_restored {shape}"] = CatDogRestored(network).prepare(settings)  # type: ignore[arg-type]
    results = {}
    for size in [int(b) for b in args.batches.split(",")]:
        batch = torch.randint(0, 256, (size, 224, 224, 3), dtype=torch.uint8)
        times: dict[str, list[float]] = {name: [] for name in models}
        ratios: dict[str, list[float]] = {name: [] for name in models if name != "catdog"}
        with torch.inference_mode():
            for _ in range(args.rounds):
                for name, model in models.items():
                    times[name].append(per_image_ms(model, batch, args.reps))
                for name in ratios:
                    ratios[name].append(times[name][-1] / times["catdog"][-1])
        results[str(size)] = {
            "ms_per_image_median": {k: round(statistics.median(v), 2) for k, v in times.items()},
            "ratio_restored_over_plain": {
                name: {"median": round(statistics.median(r), 2), "min": round(min(r), 2),
                       "max": round(max(r), 2)}
                for name, r in ratios.items()
            },
        }  # fmt: skip
        print(size, json.dumps(results[str(size)]), flush=True)
    document = {
        **provenance("model-only ms per image: catdog vs catdog_restored (restore, then classify)"),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()

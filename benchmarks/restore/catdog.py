"""Does restoring a damaged photo give our users back the right cat / dog / neither answer?

    .venv/bin/python benchmarks/restore/study.py ...      # first: trains the arms (keeps --work)
    .venv/bin/python benchmarks/restore/catdog.py --out benchmarks/results/restore_catdog.json

The study's photos carry no cat/dog labels and nearly all are "neither", so its catdog column
can only say whether an answer moved. This one measures accuracy against labels a person gave:
the four bundled sample photos (``tests/data``: a cat, a German shepherd, an astronaut, a cup of
coffee; none of them seen in training, which used the study's ``work`` photos only), each as the
study crops it (short side 256, centre 224 x 224) and each damaged ``--damages`` times with the
study's pipeline (JPEG 10-40, downscale x2/x4, blur, noise; seeded). Every arm restores the
damaged copies with the generator each seed's run ends with (as the study judges it); ``catdog``
labels the clean, the damaged and each restored copy. Four photos are few: the damages vary,
the subjects do not, so read the figures as what these four subjects do, not as an accuracy on
phone photos at large.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from compare import provenance  # noqa: E402
from study import ARMS, centre, restore_pixels  # noqa: E402

from visionloop.models import registry  # noqa: E402
from visionloop.train.degrade import degrade  # noqa: E402

ROOT = HERE.parents[1]
LABELLED = {  # by a person, as tests/conftest.py has them
    "cat_chelsea.png": "cat",
    "dog_german_shepherd.webp": "dog",
    "neither_astronaut.png": "neither",
    "neither_coffee.png": "neither",
}


def labels(catdog: Any, images: list[np.ndarray]) -> list[str]:
    out: list[str] = []
    for i in range(0, len(images), 16):
        batch = torch.from_numpy(np.stack(images[i : i + 16]))
        out += [a["label"] for a in catdog.postprocess(catdog.forward(batch))]
    return out


def score(found: list[str], truth: list[str]) -> dict[str, Any]:
    right = [f == t for f, t in zip(found, truth, strict=True)]
    by_class = {}
    for name in sorted(set(truth)):
        picked = [r for r, t in zip(right, truth, strict=True) if t == name]
        by_class[name] = f"{sum(picked)} of {len(picked)}"
    return {"accuracy": round(sum(right) / len(right), 4), "right": f"{sum(right)} of {len(right)}",
            "by_class": by_class}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, default=Path("benchmarks/results/restore_study.json"))
    parser.add_argument("--damages", type=int, default=40, help="damaged copies per photo")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/restore_catdog.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    study = json.loads(args.study.read_text())
    settings = study["settings"]
    work, width, blocks = Path(settings["work"]), int(settings["width"]), int(settings["blocks"])
    clean, damaged, truth = [], [], []
    for name, label in LABELLED.items():
        photo = np.asarray(centre(ROOT / "tests" / "data" / name))
        for k in range(args.damages):
            clean.append(photo)
            damaged.append(
                np.asarray(degrade(Image.fromarray(photo), random.Random(f"catdog:{name}:{k}"))[0])
            )
            truth.append(label)
    catdog = registry.create("catdog")
    rows: list[dict[str, Any]] = [
        {"copy": "clean", **score(labels(catdog, clean), truth)},
        {"copy": "damaged", **score(labels(catdog, damaged), truth)},
    ]
    print(json.dumps(rows), flush=True)
    for seed_folder in sorted(work.glob("seed*")):
        for name, arm in ARMS.items():
            run = seed_folder / name.replace(" ", "_").replace(",", "")
            if not (run / "last.pt").is_file():
                continue
            restored = restore_pixels(run, width, blocks, arm.get("norm", "none"), damaged)
            row = {"copy": f"restored: {name}", "seed": int(seed_folder.name[4:]),
                   **score(labels(catdog, restored), truth)}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    if len(rows) == 2:
        raise SystemExit(f"no trained arm under {work}: run study.py first (its --work)")
    document = {
        **provenance(
            "catdog accuracy on person-labelled photos: clean, damaged, and damaged then "
            "restored by each arm of the restore study"
        ),
        "study": {"file": str(args.study), "date": study["date"], "command": study["command"]},
        "photos": LABELLED,
        "damages_per_photo": args.damages,
        "rows": rows,
        "seconds": round(time.perf_counter() - started),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()

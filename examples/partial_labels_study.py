"""Partial labels: does every label we own count? A study on the procedural dataset.

A pool of images has ``cat`` masks; only some also have ``animal`` masks. The test set is
fully labelled. Arms (same network, schedule and seed per repeat):

  (a) only the images with both masks;
  (b) every image, with the masked loss (a class not annotated contributes no loss there);
  (c) every image, treating missing ``animal`` labels as background (the mistake);
  (d) (b) plus the hierarchy cat -> animal (cat pixels count as animal positives).

Reports mean and spread of the test IoU per class and arm over seeds, writes the rows as JSON
and a plot. Default split: 1000 cat-labelled images, 500 of them with animal masks.

Run: .venv/bin/python examples/partial_labels_study.py [--seeds 0,1] [--both 500 --cat-only 500]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

import torch

from visionloop.models.catseg import CatSeg, SegNet
from visionloop.train.data import SegDataset
from visionloop.train.seg import SegConfig, evaluate, train_seg
from visionloop.train.synth import synthesize

ARMS = {
    "a: labelled-both only": {"subset": "both"},
    "b: all, masked loss": {"subset": "all"},
    "c: all, missing = background": {"subset": "all", "unannotated_as_background": True},
    "d: all, masked + hierarchy": {"subset": "all", "hierarchy": {"cat": "animal"}},
}


def labels_file(pool: Path, out: Path, both: int, cat_only: int, subset: str) -> Path:
    """A labels.csv over the pool: the first ``both`` images with both classes annotated, the
    next ``cat_only`` with cat only (omitted when ``subset == "both"``)."""
    with (pool / "labels.csv").open() as f:
        names = [row[0] for row in list(csv.reader(f))[1:]]
    rows = [[n, 1, 1] for n in names[:both]]
    if subset == "all":
        rows += [[n, 1, 0] for n in names[both : both + cat_only]]
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "cat", "animal"])
        writer.writerows(rows)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--both", type=int, default=500)
    parser.add_argument("--cat-only", type=int, default=500)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("out/partial_labels"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    pool, test = args.out / "pool", args.out / "test"
    if not (pool / "labels.csv").exists():
        synthesize(pool, args.both + args.cat_only, size=args.size, seed=100)
    if not (test / "labels.csv").exists():
        synthesize(test, args.test, size=args.size, seed=200)
    test_set = SegDataset(test, ["cat", "animal"], size=args.size)
    rows = []
    started = time.perf_counter()
    for seed in [int(s) for s in args.seeds.split(",")]:
        for arm, spec in ARMS.items():
            tag = f"{arm.split(':')[0]}-seed{seed}"
            labels = labels_file(
                pool, args.out / f"labels-{spec['subset']}.csv", args.both, args.cat_only,
                str(spec["subset"]),
            )  # fmt: skip
            config = SegConfig(
                data=pool, out=args.out / "runs" / tag, labels=labels, size=args.size,
                epochs=args.epochs, batch_size=16, patience=3, seed=seed,
                hierarchy=dict(spec.get("hierarchy", {})),  # type: ignore[call-overload]
                unannotated_as_background=bool(spec.get("unannotated_as_background", False)),
            )  # fmt: skip
            train_seg(config)
            network = SegNet(2, pretrained=False)
            network.load_state_dict(torch.load(config.out / "best.pt", weights_only=True))
            model = CatSeg(network.to(memory_format=torch.channels_last), size=args.size)
            scores = evaluate(model, test_set, config)
            rows.append({"arm": arm, "seed": seed, **scores})
            print(json.dumps(rows[-1]), flush=True)
    (args.out / "rows.json").write_text(json.dumps(rows, indent=2))
    print(table(rows))
    print(f"\n{args.both} images with both masks, {args.cat_only} cat-only, {args.test} test, "
          f"{args.size}px, {args.epochs} epochs, seeds {args.seeds}; "
          f"{time.perf_counter() - started:.0f} s")  # fmt: skip
    plot(rows, args.out / "partial_labels.png")


def table(rows: list[dict[str, object]]) -> str:
    lines = ["| arm | IoU cat | IoU animal | mean IoU |", "| --- | ---: | ---: | ---: |"]
    for arm in ARMS:
        cells = [arm]
        for key in ("iou_cat", "iou_animal", "mean_iou"):
            values = [float(str(r[key])) for r in rows if r["arm"] == arm]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {spread:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, object]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.38
    for k, key in enumerate(("iou_cat", "iou_animal")):
        means, spreads = [], []
        for arm in ARMS:
            values = [float(str(r[key])) for r in rows if r["arm"] == arm]
            means.append(statistics.mean(values))
            spreads.append(statistics.stdev(values) if len(values) > 1 else 0.0)
        xs = [i + (k - 0.5) * width for i in range(len(ARMS))]
        ax.bar(xs, means, width, yerr=spreads, capsize=3, label=key.replace("iou_", "IoU "))
    ax.set_xticks(range(len(ARMS)), [a.split(":")[0] for a in ARMS])
    ax.set_ylabel("test IoU")
    ax.set_title("Partial labels: (a) both-only, (b) masked, (c) missing=bg, (d) +hierarchy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

"""Partial labels: does every label we own count? A study on the procedural dataset.

A pool of images has ``cat`` masks; only some also have ``animal`` masks. The test set is
fully labelled and separate. Arms (same network, schedule and seeds):

  (a) only the images with both masks;
  (b) every image, with the masked loss (a class not annotated contributes no loss there);
  (c) every image, treating missing ``animal`` labels as background (the mistake);
  (d) (b) plus the hierarchy cat -> animal (cat pixels count as animal positives).

Budgets. Every arm gets the same number of optimiser steps (``--steps``), with the same cosine
schedule and warm-up share, and is judged on its final weights (no early stopping, no choice of
epoch by validation). Arm (a) is also run at equal *epochs* (the steps that see each of its
images as often as (b)-(d) see theirs), which is what an equal-epoch comparison gives it: the
difference between its two rows is under-training, not the labels. (b)-(d) train on the same
images, so for them equal steps are equal epochs.

Splits: ``--splits 500+500,100+10000`` (images with both masks + images with cat only).
Each (split, arm, budget) runs once per seed; the table gives the mean over seeds with a 95 %
t-interval, and paired differences (same seed, same split) with their own interval.

Rows are appended to ``--out`` as each run ends, and a rerun skips the rows it has: an
interrupted study resumes. ``--table`` prints the README table from ``--out`` alone.

Run: .venv/bin/python examples/partial_labels_study.py
         --out benchmarks/results/partial_labels.json   (2 processes of 1 thread each)
     .venv/bin/python examples/partial_labels_study.py --table
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

ARMS = {
    "a": "only the images with both masks",
    "b": "all, masked loss",
    "c": "all, missing animal = background",
    "d": "all, masked + hierarchy cat -> animal",
}
METRICS = ("iou_cat", "iou_animal", "mean_iou")
# Paired differences the study tests, as (minuend, subtrahend) rows of one split and seed.
CONTRASTS = (
    (("b", "steps"), ("a", "steps")),
    (("c", "steps"), ("b", "steps")),
    (("d", "steps"), ("b", "steps")),
    (("a", "steps"), ("a", "epochs")),
)


def parse_splits(text: str) -> list[tuple[int, int]]:
    splits = []
    for part in text.split(","):
        both, _, cat_only = part.partition("+")
        splits.append((int(both), int(cat_only)))
    return splits


def split_name(both: int, cat_only: int) -> str:
    return f"{both}+{cat_only}"


def jobs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every run of the study, seeds outermost: a study cut short has whole seeds."""
    out = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for both, cat_only in parse_splits(args.splits):
            for arm in ARMS:
                out.append({"split": split_name(both, cat_only), "arm": arm, "budget": "steps",
                            "seed": seed, "steps": args.steps})  # fmt: skip
            equal_epochs = max(1, round(args.steps * both / (both + cat_only)))
            out.append({"split": split_name(both, cat_only), "arm": "a", "budget": "epochs",
                        "seed": seed, "steps": equal_epochs})  # fmt: skip
    return out


def key(row: dict[str, Any]) -> tuple[str, str, str, int]:
    return (row["split"], row["arm"], row["budget"], row["seed"])


def labels_file(pool: Path, out: Path, both: int, cat_only: int, subset: str) -> Path:
    """A labels.csv over the pool: the first ``both`` images with both classes annotated, the
    next ``cat_only`` with cat only (omitted when ``subset == "both"``)."""
    with (pool / "labels.csv").open() as f:
        names = [row[0] for row in list(csv.reader(f))[1:]]
    if len(names) < both + cat_only:
        raise SystemExit(f"{pool} has {len(names)} images, the split needs {both + cat_only}")
    rows = [[n, 1, 1] for n in names[:both]]
    if subset == "all":
        rows += [[n, 1, 0] for n in names[both : both + cat_only]]
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "cat", "animal"])
        writer.writerows(rows)
    return out


def prepare(args: argparse.Namespace) -> None:
    """Synthesise the pools, the validation and test sets, and the labels files (once)."""
    from visionloop.train.synth import synthesize

    work: Path = args.work
    for index, (both, cat_only) in enumerate(parse_splits(args.splits)):
        pool = work / f"pool-{split_name(both, cat_only)}"
        if not (pool / "labels.csv").exists():
            synthesize(pool, both + cat_only, size=args.size, seed=100 + index)
        for subset in ("both", "all"):
            labels_file(pool, pool / f"labels-{subset}.csv", both, cat_only, subset)
    for name, count, seed in (("val", args.val, 300), ("test", args.test, 200)):
        if not (work / name / "labels.csv").exists():
            synthesize(work / name, count, size=args.size, seed=seed)
    for folder in work.iterdir():  # a work folder of another size or count is not reused
        if (folder / "labels.csv").exists():
            lines = (folder / "labels.csv").read_text().splitlines()
            with Image.open(folder / "images" / f"{lines[1].split(',')[0]}") as first:
                side = first.size[0]
            want = {"val": args.val, "test": args.test}.get(folder.name)
            if side != args.size or (want is not None and len(lines) - 1 != want):
                raise SystemExit(f"{folder} was made for another size or count: use another --work")


def run(job: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Train one arm for its step budget and judge its final weights on the test set."""
    from visionloop.models.catseg import CatSeg, SegNet
    from visionloop.train.data import SegDataset
    from visionloop.train.seg import SegConfig, evaluate, train_seg

    torch.set_num_threads(args.threads)
    work: Path = args.work
    pool = work / f"pool-{job['split']}"
    tag = f"{job['split']}-{job['arm']}-{job['budget']}-seed{job['seed']}"
    config = SegConfig(
        data=pool, out=work / "runs" / tag, size=args.size, val_data=work / "val",
        labels=pool / f"labels-{'both' if job['arm'] == 'a' else 'all'}.csv",
        epochs=job["steps"], steps=job["steps"], warmup=args.warmup, patience=10**9,
        batch_size=args.batch_size, seed=job["seed"],
        hierarchy={"cat": "animal"} if job["arm"] == "d" else {},
        unannotated_as_background=job["arm"] == "c",
    )  # fmt: skip
    started = time.perf_counter()
    train_seg(config)
    seconds = time.perf_counter() - started
    state = torch.load(config.out / "last.pt", weights_only=True)  # the final weights
    network = SegNet(2, pretrained=False)
    network.load_state_dict(state["network"])
    model = CatSeg(network.to(memory_format=torch.channels_last), size=args.size)
    test = SegDataset(work / "test", ["cat", "animal"], size=args.size)
    scores = evaluate(model, test, config)
    images = len(SegDataset(pool, ["cat", "animal"], size=args.size, labels=config.labels))
    return {
        **job, "steps": state["step"], "images": images,
        "epochs": round(state["step"] * args.batch_size / images, 2),
        **scores, "train_seconds": round(seconds, 1),
    }  # fmt: skip


def _run(packed: tuple[dict[str, Any], argparse.Namespace]) -> dict[str, Any]:
    return run(*packed)


def interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and the two ends of its 95 % t-interval."""
    from scipy import stats

    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half


def cell(values: list[float]) -> str:
    mean, low, high = interval(values)
    if math.isnan(low):
        return f"{mean:.3f}"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def diff_cell(values: list[float]) -> str:
    mean, low, high = interval(values)
    if math.isnan(low):
        return f"{mean:+.3f}"
    mark = " *" if low > 0 or high < 0 else ""
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]{mark}"


def table(results: dict[str, Any]) -> str:
    """The README's tables: per split, every arm's mean and 95 % interval over seeds, then the
    paired differences (* = the interval excludes zero)."""
    rows = results["rows"]
    config = results["config"]
    lines = []
    for both, cat_only in parse_splits(config["splits"]):
        split = split_name(both, cat_only)
        here = [r for r in rows if r["split"] == split]
        if not here:
            continue
        seeds = sorted({r["seed"] for r in here})
        lines += [
            f"**{both} images with both masks + {cat_only} with cat only** "
            f"({len(seeds)} seeds, {config['size']} px, test set of {config['test']}):",
            "",
            "| arm | budget | steps | epochs | IoU cat | IoU animal | mean IoU |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for arm, budget in [*((a, "steps") for a in ARMS), ("a", "epochs")]:
            group = [r for r in here if r["arm"] == arm and r["budget"] == budget]
            if not group:
                continue
            images = group[0]["images"]
            name = f"({arm}) {ARMS[arm]} ({images})"
            cells = [cell([float(r[m]) for r in group]) for m in METRICS]
            lines.append(
                f"| {name} | equal {budget} | {group[0]['steps']} | {group[0]['epochs']:g} | "
                + " | ".join(cells) + " |"
            )  # fmt: skip
        lines += ["", "| paired difference | IoU cat | IoU animal | mean IoU |",
                  "| --- | ---: | ---: | ---: |"]  # fmt: skip
        for left, right in CONTRASTS:
            pairs = _pairs(here, left, right)
            if not pairs:
                continue
            label = f"({left[0]}) - ({right[0]})" + (
                f", equal {left[1]} - equal {right[1]}" if left[1] != right[1] else ""
            )
            cells = [diff_cell([float(x[m]) - float(y[m]) for x, y in pairs]) for m in METRICS]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _pairs(
    rows: list[dict[str, Any]], left: tuple[str, str], right: tuple[str, str]
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    by = {(r["arm"], r["budget"], r["seed"]): r for r in rows}
    return [
        (by[(*left, seed)], by[(*right, seed)])
        for seed in sorted({r["seed"] for r in rows})
        if (*left, seed) in by and (*right, seed) in by
    ]


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    splits = [split_name(*s) for s in parse_splits(results["config"]["splits"])]
    groups = [*((a, "steps") for a in ARMS), ("a", "epochs")]
    fig, axes = plt.subplots(1, len(splits), figsize=(6 * len(splits), 3.6), squeeze=False)
    width = 0.38
    for ax, split in zip(axes[0], splits, strict=True):
        here = [r for r in rows if r["split"] == split]
        for k, metric in enumerate(("iou_cat", "iou_animal")):
            means, errors = [], [[], []]
            for arm, budget in groups:
                values = [float(r[metric]) for r in here
                          if r["arm"] == arm and r["budget"] == budget]  # fmt: skip
                mean, low, high = interval(values) if values else (math.nan,) * 3
                means.append(mean)
                errors[0].append(0 if math.isnan(low) else mean - low)
                errors[1].append(0 if math.isnan(high) else high - mean)
            xs = [i + (k - 0.5) * width for i in range(len(groups))]
            ax.bar(xs, means, width, yerr=errors, capsize=3, label=metric.replace("iou_", "IoU "))
        ax.set_xticks(range(len(groups)), ["a", "b", "c", "d", "a\n(equal\nepochs)"])
        ax.set_ylim(0, 1)
        ax.set_title(f"{split} (both + cat only), equal steps; 95 % intervals")
        ax.legend(loc="upper right")
    axes[0][0].set_ylabel("test IoU")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", default="500+500,100+10000")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--steps", type=int, default=600, help="per arm (equal-steps budget)")
    parser.add_argument("--warmup", type=float, default=0.05, help="share of the steps")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--val", type=int, default=96, help="validation images (logged only)")
    parser.add_argument("--jobs", type=int, default=2, help="training processes at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--work", type=Path, default=Path("out/partial_labels_study"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/partial_labels.json"))
    parser.add_argument("--table", action="store_true", help="print the tables from --out")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(args.out.read_text())), end="")
        return
    config = {k: v for k, v in vars(args).items() if k not in ("out", "work", "table", "jobs")}
    results = json.loads(args.out.read_text()) if args.out.exists() else None
    free = ("seeds", "threads")  # more seeds, or other threads, continue the same study

    def identity(c: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in c.items() if k not in free}

    if results is not None and identity(results["config"]) != identity(config):
        raise SystemExit(f"{args.out} holds a study with another configuration; use another --out")
    if results is not None:
        seen = {*results["config"]["seeds"].split(","), *args.seeds.split(",")}
        results["config"]["seeds"] = ",".join(sorted(seen, key=int))
    results = results or {"config": config, "rows": []}
    done = {key(r) for r in results["rows"]}
    todo = [j for j in jobs(args) if key(j) not in done]
    args.work.mkdir(parents=True, exist_ok=True)
    prepare(args)
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.jobs, maxtasksperchild=1) as pool:
        for row in pool.imap_unordered(_run, [(j, args) for j in todo]):
            results["rows"].append(row)
            results["rows"].sort(key=lambda r: (r["seed"], r["split"], r["arm"], r["budget"]))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1) + "\n")
            print(json.dumps(row), flush=True)
    print(f"{len(todo)} runs in {time.perf_counter() - started:.0f} s")
    print(table(results), end="")
    plot(results, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()

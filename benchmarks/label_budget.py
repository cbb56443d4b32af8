"""What a fixed budget of crowd hours labels: images and their quality, drawn from scratch, with
pre-labels, with pre-labels triaged by the model's uncertainty, and with the weak masks of a new
class (the zero-label plane channel).

    .venv/bin/python benchmarks/photos/build.py && .venv/bin/python benchmarks/planes/build.py
    .venv/bin/python benchmarks/label_budget.py --out benchmarks/results/label_budget.json

**cat and animal.** A catseg is trained on 1000 procedural images with both masks (``--steps``
optimiser steps at ``--size`` px, the partial-label study's recipe), and pre-labels a separate
pool of procedural images through the labelling loop's own path (``LibraryPrelabeler``; the
uncertainty is ``label select``'s mean per-pixel entropy). **plane.** The zero-label
``catseg_plane`` channel (CAM, gate, GrabCut) pre-labels the plane labelling pool of
``benchmarks/planes/data.py`` (224 px; about half the images hold a plane, the rest a
confuser).

Each pool image is answered by the honest editor of :mod:`visionloop.label.budget` (keeps an
object whose pre-label is close enough, draws what is missing, fixes what is off, erases what is
false), once shown nothing and once shown its pre-label; the same answer is priced by every time
model. The pool is taken in its (random) order until the budget runs out.

**Time models.** No Label Studio export with both pre-labels and lead times could be found to
calibrate one (``visionloop label timing`` fits one on a project's own exports; pass its
``--json`` output as ``--time-model``). The defaults are published figures: drawing an object's
polygon 79.2 s (COCO's instance masks, Lin et al. 2014, as reported by Cheng et al. 2021); a look
at a task 5 s and erasing a false object 3 s (assumed); fixing an outline costs a share of
drawing it, bracketed by what interactive tools report: 1/4.7 (Polygon-RNN, Castrejon et al.
2017: 4.7x faster on Cityscapes), 1/3 (Benenson et al. 2019: 3x faster than polygon drawing) and
1/2 (a slower editor). The answer is given for each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "planes"))

from compare import provenance  # noqa: E402

from visionloop.label.budget import Editor, dataset_iou, spend  # noqa: E402
from visionloop.label.masks import Label  # noqa: E402
from visionloop.label.timing import Change, TimeModel, change  # noqa: E402

CLASSES = ["cat", "animal"]
SOURCES = {
    "draw": "79.2 s per object polygon: COCO instance masks (Lin et al. 2014), as reported by "
    "Cheng et al. 2021, Pointly-supervised instance segmentation",
    "fix 1/4.7": "Polygon-RNN (Castrejon et al. 2017): 4.7x faster than drawing on Cityscapes",
    "fix 1/3": "Benenson et al. 2019, Large-scale interactive object segmentation with human "
    "annotators: 3x faster than polygon drawing",
    "fix 1/2": "a slower editor (assumed)",
    "look": "assumed (the plane curve's 5 s)",
    "erase": "assumed",
}


def time_models(args: argparse.Namespace) -> dict[str, TimeModel]:
    if args.time_model is not None:
        model = json.loads(args.time_model.read_text())["model"]
        return {"fitted": TimeModel(**{k: model[k] for k in ("look", "draw", "erase", "fix")},
                                    source=str(args.time_model))}  # fmt: skip
    out = {}
    for share in args.fix_shares.split(","):
        numerator, _, denominator = share.partition("/")
        fraction = float(numerator) / float(denominator or 1)
        out[f"fix {share}"] = TimeModel(
            look=args.look, draw=args.draw, erase=args.erase,
            fix=round(args.draw * fraction, 2), source=SOURCES.get(f"fix {share}", "given"),
        )  # fmt: skip
    return out


def catseg_pool(args: argparse.Namespace) -> dict[str, Any]:
    """Train the pre-labelling catseg, then pre-label the pool: truths, pre-labels, entropy."""
    from visionloop.label.prelabel import LibraryPrelabeler
    from visionloop.label.select import pool_scores
    from visionloop.models.catseg import CatSeg, SegNet
    from visionloop.train.seg import SegConfig, train_seg
    from visionloop.train.synth import synthesize

    work: Path = args.work  # folder names carry what made them: a cache of other settings is
    train, val = work / f"train-{args.size}", work / f"val-{args.size}"  # never reused
    pool, run = work / f"pool-{args.pool}-{args.size}", work / f"run-{args.size}-{args.steps}"
    for folder, count, seed in ((train, 1000, 100), (val, 96, 300), (pool, args.pool, 500)):
        if not (folder / "labels.csv").exists():
            synthesize(folder, count, size=args.size, seed=seed)
    config = SegConfig(
        data=train, val_data=val, out=run, size=args.size,
        epochs=args.steps, steps=args.steps, warmup=0.05, patience=10**9, seed=0,
    )  # fmt: skip
    started = time.perf_counter()
    train_seconds = None  # a run trained before, by the same settings, is reused
    if not (run / "last.pt").exists():
        train_seg(config)
        train_seconds = round(time.perf_counter() - started, 1)
    network = SegNet(2, pretrained=False)
    network.load_state_dict(torch.load(run / "last.pt", weights_only=True)["network"])
    model = CatSeg(network.eval(), size=args.size, classes=CLASSES)
    names = sorted(p.name for p in (pool / "images").iterdir())
    paths = [pool / "images" / n for n in names]
    prelabels = LibraryPrelabeler(model, batch_size=32)(paths)
    entropy, _ = pool_scores(model, paths, batch_size=32)
    truths = [
        {c: np.asarray(Image.open(pool / "masks" / c / n)) > 127 for c in CLASSES} for n in names
    ]
    return {"truths": truths, "prelabels": prelabels, "entropy": entropy,
            "train_seconds": train_seconds}  # fmt: skip


def plane_pool(args: argparse.Namespace) -> dict[str, Any]:
    """The plane labelling pool and the zero-label channel's masks on it."""
    from cam import composed
    from curve import cam_masks

    from data import build
    from visionloop.models.efficientnet_lite import efficientnet_lite0
    from visionloop.models.planecam import PlaneCam
    from visionloop.models.planeseg import PLANE_SETTINGS, PLANE_ZOOM

    folders = build(args.work / "planes", counts={"train": args.planes})
    images, truth = composed(folders["train"])
    cam = PlaneCam(efficientnet_lite0(pretrained=True), settings=PLANE_SETTINGS, zoom=PLANE_ZOOM)
    masks = cam_masks(cam, images)
    return {"truths": [{"plane": t} for t in truth], "prelabels": [{"plane": m} for m in masks]}


def answers(pool: dict[str, Any], editor: Editor, seed: int) -> dict[str, list[Any]]:
    """The editor's answer to every pool image, shown nothing and shown its pre-label; what
    each answer changed. An object redrawn in both arms gets the same outline noise (common
    random numbers: the arms differ by what they were shown, not by luck)."""
    out: dict[str, list[Any]] = {"scratch": [], "prelabels": [], "scratch_change": [],
                                 "prelabels_change": []}  # fmt: skip
    for index, (truth, shown) in enumerate(zip(pool["truths"], pool["prelabels"], strict=True)):
        empty = {c: np.zeros_like(m) for c, m in truth.items()}
        for arm, given in (("scratch", empty), ("prelabels", shown)):
            answer = editor(given, truth, seed=[seed, index])
            out[arm].append(answer)
            out[f"{arm}_change"].append(change(given, answer))
    return out


def bought(
    order: list[int],
    seconds: list[float],
    labels: list[Label],
    done_changes: list[Change],
    truths: list[Label],
    budget: float,
    free: list[bool] | None = None,
) -> dict[str, Any]:
    """One set-up in one pool order: the images the budget buys, their label IoU, and the
    work per bought image (accepted ones count as no work)."""
    count, spent = spend([seconds[i] for i in order], budget,
                         None if free is None else [free[i] for i in order])  # fmt: skip
    chosen = order[:count]
    work = sum((done_changes[i] for i in chosen if not (free and free[i])), Change())
    row: dict[str, Any] = {
        "images": count, "exhausted_pool": count == len(order), "hours": spent / 3600,
        "label_iou": dataset_iou([labels[i] for i in chosen], [truths[i] for i in chosen]),
        "drawn": work.drawn / max(1, count), "erased": work.erased / max(1, count),
        "fixed": work.fixed / max(1, count),
    }  # fmt: skip
    if free is not None:
        accepted = [i for i in chosen if free[i]]
        row["accepted"] = len(accepted)
        row["accepted_iou"] = dataset_iou([labels[i] for i in accepted],
                                          [truths[i] for i in accepted]).get("mean")  # fmt: skip
    return row


def summary(name: str, runs: list[dict[str, Any]], scratch: list[dict[str, Any]] | None) -> dict:
    """A set-up over pool orders: mean [min, max] of images, ratio to from scratch (paired by
    order) and label IoU; the work per image and the rest as means."""

    def spread(values: list[float], digits: int) -> dict[str, float]:
        return {"mean": round(statistics.mean(values), digits),
                "min": round(min(values), digits), "max": round(max(values), digits)}  # fmt: skip

    out: dict[str, Any] = {
        "setup": name, "orders": len(runs),
        "images": spread([r["images"] for r in runs], 1),
        "exhausted_pool": any(r["exhausted_pool"] for r in runs),
        "crowd_hours_spent": round(statistics.mean(r["hours"] for r in runs), 2),
        "label_iou": spread([r["label_iou"]["mean"] for r in runs], 4),
        "label_iou_by_class": {
            c: round(statistics.mean(r["label_iou"][c] for r in runs), 4)
            for c in runs[0]["label_iou"] if c != "mean"
        },
        "per_bought_image": {k: round(statistics.mean(r[k] for r in runs), 3)
                             for k in ("drawn", "erased", "fixed")},
    }  # fmt: skip
    if scratch is not None:
        ratios = [r["images"] / s["images"] for r, s in zip(runs, scratch, strict=False)]
        out["images_vs_scratch"] = spread(ratios, 2)
    if "accepted" in runs[0]:
        out["accepted_unreviewed"] = round(statistics.mean(r["accepted"] for r in runs), 1)
        judged = [r["accepted_iou"] for r in runs if r["accepted_iou"] is not None]
        out["accepted_iou"] = round(statistics.mean(judged), 4) if judged else None
    return out


def setups(
    pool: dict[str, Any],
    done: dict[str, list[Any]],
    model: TimeModel,
    budget: float,
    accept: list[float],
    orders: list[list[int]],
) -> list[dict[str, Any]]:
    """Every set-up, each over the same pool orders (uncertainty-first has its own order)."""
    truths = pool["truths"]
    scratch_s = [model.seconds(c) for c in done["scratch_change"]]
    pre_s = [model.seconds(c) for c in done["prelabels_change"]]
    scratch = [bought(o, scratch_s, done["scratch"], done["scratch_change"], truths, budget)
               for o in orders]  # fmt: skip
    rows = [
        summary("from scratch", scratch, scratch),
        summary("pre-labels", [bought(o, pre_s, done["prelabels"], done["prelabels_change"],
                                      truths, budget) for o in orders], scratch),
    ]  # fmt: skip
    if "entropy" in pool:
        entropy = np.asarray(pool["entropy"])
        ranked = [int(i) for i in np.argsort(-entropy, kind="stable")]  # label select's order
        first = bought(ranked, pre_s, done["prelabels"], done["prelabels_change"], truths, budget)
        rows.append(summary("pre-labels, most uncertain first", [first] * len(orders), scratch))
        for share in accept:
            threshold = float(np.quantile(entropy, share))
            free = [bool(e <= threshold) for e in entropy]
            labels = [shown if f else answer
                      for shown, answer, f in zip(pool["prelabels"], done["prelabels"], free,
                                                  strict=True)]  # fmt: skip
            name = f"pre-labels, the {share:.0%} most confident accepted unreviewed"
            runs = [bought(o, pre_s, labels, done["prelabels_change"], truths, budget, free)
                    for o in orders]  # fmt: skip
            rows.append(summary(name, runs, scratch))
    return rows


def orders(count: int, args: argparse.Namespace) -> list[list[int]]:
    """``--orders`` random orders of the pool (the first: as it was made)."""
    rng = np.random.default_rng(args.seed)
    return [list(range(count))] + [
        [int(i) for i in rng.permutation(count)] for _ in range(args.orders - 1)
    ]


def work_summary(pool: dict[str, Any], done: dict[str, list[Any]]) -> dict[str, Any]:
    """Objects drawn, erased, fixed per image by arm, and the pre-labels' own quality."""
    out: dict[str, Any] = {"prelabel_iou": dataset_iou(pool["prelabels"], pool["truths"])}
    for arm in ("scratch", "prelabels"):
        changes: list[Change] = done[f"{arm}_change"]
        total = sum(changes, Change())
        out[arm] = {
            "drawn_per_image": round(total.drawn / len(changes), 3),
            "erased_per_image": round(total.erased / len(changes), 3),
            "fixed_per_image": round(total.fixed / len(changes), 3),
            "unchanged_images": sum(c.unchanged for c in changes),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=8.0, help="the crowd's budget")
    parser.add_argument("--plane-hours", type=float, default=2.0, help="for the plane pool")
    parser.add_argument("--pool", type=int, default=3000, help="procedural images to label")
    parser.add_argument("--planes", type=int, default=400, help="plane pool images")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--steps", type=int, default=600, help="training of the pre-labeller")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--look", type=float, default=5.0)
    parser.add_argument("--draw", type=float, default=79.2)
    parser.add_argument("--erase", type=float, default=3.0)
    parser.add_argument("--fix-shares", default="1/4.7,1/3,1/2", help="of --draw")
    parser.add_argument("--time-model", type=Path, help="a `label timing --json` fit instead")
    parser.add_argument("--keep", type=float, default=0.9, help="the editor's keep IoU")
    parser.add_argument("--wobble", type=float, default=0.7, help="the editor's outline error")
    parser.add_argument("--accept", default="0.25,0.5", help="shares accepted by triage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--orders", type=int, default=20, help="pool orders to average over")
    parser.add_argument("--work", type=Path, default=Path("out/label_budget"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/label_budget.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    editor = Editor(keep=args.keep, wobble=args.wobble)
    models = time_models(args)
    accept = [float(s) for s in args.accept.split(",")]
    results: dict[str, Any] = {}
    for task, make, hours in (("cat and animal", catseg_pool, args.hours),
                              ("plane (a new class)", plane_pool, args.plane_hours)):  # fmt: skip
        budget = hours * 3600
        pool = make(args)
        done = answers(pool, editor, args.seed)
        shuffles = orders(len(done["scratch"]), args)
        results[task] = {
            "pool": len(pool["truths"]), "budget_hours": hours, **work_summary(pool, done),
            "train_seconds": pool.get("train_seconds"),
            "budgets": {name: setups(pool, done, model, budget, accept, shuffles)
                        for name, model in models.items()},
        }  # fmt: skip
        print(json.dumps({task: results[task]["budgets"]}, indent=1), flush=True)
    document = {
        **provenance("images labelled in a budget of crowd hours, and their label IoU, by set-up"),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "time_models": {k: m.to_json() for k, m in models.items()},
        "sources": SOURCES,
        "results": results,
        "seconds": round(time.perf_counter() - started),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()

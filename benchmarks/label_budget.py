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

    work: Path = args.work
    for name, count, seed in (("train", 1000, 100), ("val", 96, 300), ("pool", args.pool, 500)):
        if not (work / name / "labels.csv").exists():
            synthesize(work / name, count, size=args.size, seed=seed)
    config = SegConfig(
        data=work / "train", val_data=work / "val", out=work / "run", size=args.size,
        epochs=args.steps, steps=args.steps, warmup=0.05, patience=10**9, seed=0,
    )  # fmt: skip
    started = time.perf_counter()
    if not (work / "run" / "last.pt").exists():
        train_seg(config)
    train_seconds = time.perf_counter() - started
    network = SegNet(2, pretrained=False)
    network.load_state_dict(torch.load(work / "run" / "last.pt", weights_only=True)["network"])
    model = CatSeg(network.eval(), size=args.size, classes=CLASSES)
    names = sorted(p.name for p in (work / "pool" / "images").iterdir())
    paths = [work / "pool" / "images" / n for n in names]
    prelabels = LibraryPrelabeler(model, batch_size=32)(paths)
    entropy, _ = pool_scores(model, paths, batch_size=32)
    truths = [
        {c: np.asarray(Image.open(work / "pool" / "masks" / c / n)) > 127 for c in CLASSES}
        for n in names
    ]
    return {"truths": truths, "prelabels": prelabels, "entropy": entropy,
            "train_seconds": round(train_seconds, 1)}  # fmt: skip


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
    each answer changed. Both arms draw an image's outline noise from one generator (common
    random numbers: the arms differ by what they were shown, not by luck)."""
    out: dict[str, list[Any]] = {"scratch": [], "prelabels": [], "scratch_change": [],
                                 "prelabels_change": []}  # fmt: skip
    for index, (truth, shown) in enumerate(zip(pool["truths"], pool["prelabels"], strict=True)):
        empty = {c: np.zeros_like(m) for c, m in truth.items()}
        for arm, given in (("scratch", empty), ("prelabels", shown)):
            rng = np.random.default_rng([seed, index])
            answer = editor(given, truth, rng)
            out[arm].append(answer)
            out[f"{arm}_change"].append(change(given, answer))
    return out


def setup_row(
    name: str,
    seconds: list[float],
    labels: list[Label],
    truths: list[Label],
    budget: float,
    free: list[bool] | None = None,
) -> dict[str, Any]:
    count, spent = spend(seconds, budget, free)
    whole = sum(0.0 if free is not None and free[i] else s for i, s in enumerate(seconds))
    row: dict[str, Any] = {
        "setup": name, "images": count, "exhausted_pool": count == len(seconds),
        "crowd_hours_spent": round(spent / 3600, 2),
        "hours_for_the_whole_pool": round(whole / 3600, 2),
        "images_per_hour_over_the_pool": round(len(seconds) / (whole / 3600), 1) if whole else None,
        "label_iou": dataset_iou(labels[:count], truths[:count]),
    }  # fmt: skip
    if free is not None:
        accepted = [i for i in range(count) if free[i]]
        row["accepted_unreviewed"] = len(accepted)
        row["accepted_iou"] = dataset_iou([labels[i] for i in accepted],
                                          [truths[i] for i in accepted])  # fmt: skip
    return row


def setups(
    pool: dict[str, Any],
    done: dict[str, list[Any]],
    model: TimeModel,
    budget: float,
    accept: list[float],
) -> list[dict[str, Any]]:
    truths = pool["truths"]
    scratch = [model.seconds(c) for c in done["scratch_change"]]
    prelabelled = [model.seconds(c) for c in done["prelabels_change"]]
    rows = [
        setup_row("from scratch", scratch, done["scratch"], truths, budget),
        setup_row("pre-labels", prelabelled, done["prelabels"], truths, budget),
    ]
    if "entropy" in pool:
        entropy = np.asarray(pool["entropy"])
        order = [int(i) for i in np.argsort(-entropy, kind="stable")]  # label select's order
        rows.append(setup_row(
            "pre-labels, most uncertain first", [prelabelled[i] for i in order],
            [done["prelabels"][i] for i in order], [truths[i] for i in order], budget,
        ))  # fmt: skip
        for share in accept:
            threshold = float(np.quantile(entropy, share))
            free = [bool(e <= threshold) for e in entropy]
            labels = [shown if f else answer
                      for shown, answer, f in zip(pool["prelabels"], done["prelabels"], free,
                                                  strict=True)]  # fmt: skip
            name = f"pre-labels, the {share:.0%} most confident accepted unreviewed"
            rows.append(setup_row(name, prelabelled, labels, truths, budget, free))
    scratch_rate = rows[0]["images"]
    for row in rows:
        row["images_vs_scratch"] = round(row["images"] / scratch_rate, 2) if scratch_rate else None
    return rows


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
        results[task] = {
            "pool": len(pool["truths"]), "budget_hours": hours, **work_summary(pool, done),
            "train_seconds": pool.get("train_seconds"),
            "budgets": {name: setups(pool, done, model, budget, accept)
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

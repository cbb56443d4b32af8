"""The curve that answers the customer: plane IoU on held-out images with zero labels (CAM),
then after 25, 50, 100 and 200 corrected labels, and what the same labelling cost buys with
labels drawn from scratch.

    .venv/bin/python benchmarks/planes/build.py     # once (and benchmarks/photos/build.py)
    .venv/bin/python benchmarks/planes/curve.py --out benchmarks/results/plane_curve.json

The data are those of :mod:`data`: the labelling pool is ``train`` (the ``work`` cut-outs on
the ``work`` backgrounds, about half the images with a plane), the held-out set ``test`` (the
``eval`` cut-outs on the ``eval`` backgrounds: planes never seen in the pool).

**The loop, as the product runs it.** The pool is ranked once by P(plane) from the served
``catdog`` (:func:`visionloop.label.select.mine_scores` over the ``plane`` group, what
``label mine plane`` does); each step asks the crowd about the next images in that order (25,
then 25, 50 and 100 more). Their pre-labels come from the plane model being served at the
time: the zero-label CAM channel (``catseg_plane``'s settings) before the first step, then the
model the previous step trained. A simulated crowd corrects them: each task goes to one
honest annotator (``careful`` or ``sloppy`` in the label simulator's 16 : 12 mix, who behave as
:func:`visionloop.label.simulate.annotate` says: keep a pre-label that is good enough, else
redraw it). Lazy annotators and the QC that removes them are left out (the label simulation
measures those). Each step then trains a plane model (``train seg --classes plane``, ImageNet
encoder) on every label so far, for the same number of optimiser steps whatever the number of
labels (``--steps``), and the best epoch on a 20 % validation split of those labels.

**Cost.** A task costs the annotator's look (``--look`` seconds) and, when a mask is drawn,
their drawing time (the simulator's: careful 25 s, sloppy 12 s). Keeping a pre-label costs the
look only; so does an image without a plane when labelling from scratch.

**From scratch.** The same ranked pool, no pre-labels (every plane drawn by hand), as many
images as fit the cost the pre-labelled arm spent up to that step; trained and judged the same.

Reported per step, per arm and seed: the labels, the crowd's cost, the share of pre-labels
kept, the labels' IoU with the truth, the plane IoU on ``test`` (dataset IoU: intersections
and unions summed, so a false mask on an image without a plane counts), the training's wall
and CPU time (process CPU, all threads) and the pre-labelling's; and the time from nothing to
the first served zero-label mask (``catseg_plane`` built, first answer). Everything at 224 px
(the trained models run at ``--size`` and their masks are scaled up to 224 to be judged).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from cam import composed, normalise  # noqa: E402
from compare import provenance  # noqa: E402

from data import build  # noqa: E402
from visionloop.label.masks import iou  # noqa: E402
from visionloop.label.select import group_indices, mine_scores  # noqa: E402
from visionloop.label.simulate import CROWD, SECONDS, annotate  # noqa: E402
from visionloop.models import registry  # noqa: E402
from visionloop.models.catseg import SegNet  # noqa: E402
from visionloop.models.efficientnet_lite import efficientnet_lite0  # noqa: E402
from visionloop.models.planecam import PlaneCam  # noqa: E402
from visionloop.models.planeseg import PLANE_SETTINGS, PLANE_ZOOM  # noqa: E402
from visionloop.train.seg import SegConfig, train_seg  # noqa: E402

SIZE = 224
KINDS = ("careful", "sloppy")


class Clock:
    """Wall and process CPU seconds of a block."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def first_served_mask(image: np.ndarray) -> float:
    """Seconds from nothing to catseg_plane's first answer (build, load, one image)."""
    started = time.perf_counter()
    model = registry.create("catseg_plane")
    model.forward(torch.from_numpy(image[None]))
    return time.perf_counter() - started


def cam_masks(cam: PlaneCam, images: np.ndarray, batch: int = 16) -> np.ndarray:
    out = []
    for i in range(0, len(images), batch):
        chunk = images[i : i + batch]
        out.append(cam.masks(chunk, normalise(chunk))[0])
    return np.concatenate(out) if out else np.zeros((0, SIZE, SIZE), dtype=bool)


@torch.inference_mode()
def model_masks(network: SegNet, images: np.ndarray, size: int, batch: int = 16) -> np.ndarray:
    """Plane masks at 224 from a plane model that runs at ``size``."""
    network.eval()
    out = []
    for i in range(0, len(images), batch):
        x = normalise(images[i : i + batch])
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        logits = network(x.contiguous(memory_format=torch.channels_last))
        logits = F.interpolate(logits, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        out.append((logits[:, 0] >= 0).numpy())
    return np.concatenate(out) if out else np.zeros((0, SIZE, SIZE), dtype=bool)


def judge(masks: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    inter = int((masks & truth).sum())
    union = int((masks | truth).sum())
    has, marked = truth.any(axis=(1, 2)), masks.any(axis=(1, 2))
    return {
        "test_iou": round(inter / union, 4) if union else None,
        "found": f"{int((marked & has).sum())} of {int(has.sum())}",
        "false_masks": f"{int((marked & ~has).sum())} of {int((~has).sum())}",
    }


def label(
    shown: np.ndarray | None, truth: np.ndarray, rng: np.random.Generator, look: float
) -> tuple[np.ndarray, float, bool]:
    """One task: the label, its cost in seconds, and whether the pre-label was kept.
    ``shown`` None: from scratch (an empty canvas)."""
    odds = np.array([CROWD[k] for k in KINDS], dtype=float)
    kind = KINDS[int(rng.choice(len(KINDS), p=odds / odds.sum()))]
    canvas = np.zeros_like(truth) if shown is None else shown
    given = {"plane": canvas}
    answer = annotate(kind, given, {"plane": truth}, rng, SIZE)
    kept = answer is given
    # Redrawing an image with a plane costs the drawing; erasing a false mask, the look.
    cost = look + (SECONDS[kind] if not kept and truth.any() else 0.0)
    return answer["plane"], cost, kept


def write_dataset(
    folder: Path, names: list[str], pool: Path, labels: dict[str, np.ndarray]
) -> None:
    (folder / "images").mkdir(parents=True)
    (folder / "masks" / "plane").mkdir(parents=True)
    rows = ["image,plane"]
    for name in names:
        (folder / "images" / name).symlink_to((pool / "images" / name).resolve())
        Image.fromarray(labels[name].astype(np.uint8) * 255).save(folder / "masks" / "plane" / name)
        rows.append(f"{name},1")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")


def train(folder: Path, run: Path, args: argparse.Namespace, seed: int) -> tuple[SegNet, Clock]:
    count = sum(1 for _ in (folder / "images").iterdir())
    fit = count - max(1, int(count * 0.2))
    batches = max(1, math.ceil(fit / args.batch) - (fit % args.batch == 1 and fit > args.batch))
    config = SegConfig(
        data=folder, out=run, classes=["plane"], size=args.size, batch_size=args.batch,
        epochs=math.ceil(args.steps / batches), patience=10**6, seed=seed,
    )  # fmt: skip
    with Clock() as clock:
        train_seg(config)
    network = SegNet(1, pretrained=False)
    network.load_state_dict(torch.load(run / "best.pt", weights_only=True))
    return network.to(memory_format=torch.channels_last), clock  # type: ignore[call-overload]


def run_seed(
    seed: int,
    args: argparse.Namespace,
    pool: dict[str, Any],
    test: tuple[np.ndarray, np.ndarray],
    cam: PlaneCam,
) -> list[dict[str, Any]]:
    names, images, truth, order = pool["names"], pool["images"], pool["truth"], pool["order"]
    steps = [int(s) for s in args.labels.split(",")]
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(seed)
    labels: dict[str, np.ndarray] = {}
    spent, kept_total, served = 0.0, 0, None  # served: the plane model of the last step
    prelabel_cpu = 0.0
    scratch_rng = np.random.default_rng([seed, 1])  # the from-scratch crowd, labelled in order
    from_scratch = [(i, *label(None, truth[i], scratch_rng, args.look)[:2]) for i in order]
    for count in steps:
        batch = order[len(labels) : count]
        with Clock() as clock:
            shown = (cam_masks(cam, images[batch]) if served is None
                     else model_masks(served, images[batch], args.size))  # fmt: skip
        prelabel_cpu = clock.cpu
        kept = 0
        for i, mask in zip(batch, shown, strict=True):
            labels[names[i]], cost, was_kept = label(mask, truth[i], rng, args.look)
            spent += cost
            kept += was_kept
        kept_total += kept
        # From scratch: the first images of the ranked pool that this cost buys.
        scratch: dict[str, np.ndarray] = {}
        scratch_spent = 0.0
        for i, answer, cost in from_scratch:
            if scratch_spent + cost > spent:
                break
            scratch[names[i]], scratch_spent = answer, scratch_spent + cost
        source = "CAM (zero labels)" if served is None else "previous step's model"
        extra = {"kept_this_step": f"{kept} of {len(batch)}",
                 "prelabel_cpu_s": round(prelabel_cpu, 1), "prelabels_from": source}  # fmt: skip
        for arm, chosen, cost, more in (
            ("pre-labels", labels, spent, extra),
            ("from scratch", scratch, scratch_spent, {}),
        ):
            folder = args.work / f"seed{seed}" / f"{arm.replace(' ', '-')}-{count}"
            shutil.rmtree(folder, ignore_errors=True)
            write_dataset(folder / "data", list(chosen), args.work / "planes" / "train", chosen)
            network, clock = train(folder / "data", folder / "run", args, seed)
            result = judge(model_masks(network, test[0], args.size), test[1])
            with_plane = [iou(chosen[n], truth[names.index(n)]) for n in chosen
                          if truth[names.index(n)].any()]  # fmt: skip
            row = {
                "seed": seed, "step": count, "arm": arm, "labels": len(chosen),
                "labels_with_plane": len(with_plane),
                "crowd_seconds": round(cost, 1),
                "label_iou_with_truth": (
                    round(float(np.mean(with_plane)), 4) if with_plane else None),
                **result,
                "train_wall_s": round(clock.wall, 1), "train_cpu_s": round(clock.cpu, 1),
                **more,
            }  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
            if arm == "pre-labels":
                served = network
    return rows


def summarise(rows: list[dict[str, Any]], cam_row: dict[str, Any]) -> list[dict[str, Any]]:
    """Per arm and step: mean and range over seeds."""
    out = [{"arm": "CAM only (zero labels)", "labels": 0, "test_iou": cam_row["test_iou"]}]
    for arm in ("pre-labels", "from scratch"):
        for step in sorted({r["step"] for r in rows}):
            group = [r for r in rows if r["arm"] == arm and r["step"] == step]
            if not group:
                continue

            def stat(key: str, g: list[dict[str, Any]] = group) -> dict[str, float]:
                values = [float(r[key]) for r in g if r[key] is not None]
                return {"mean": round(statistics.mean(values), 4),
                        "min": round(min(values), 4), "max": round(max(values), 4)}  # fmt: skip

            out.append({
                "arm": arm, "step": step, "seeds": len(group),
                "labels": stat("labels"), "crowd_minutes": minutes(stat("crowd_seconds")),
                "label_iou_with_truth": stat("label_iou_with_truth"),
                "test_iou": stat("test_iou"),
                "train_cpu_minutes": minutes(stat("train_cpu_s")),
                "train_wall_minutes": minutes(stat("train_wall_s")),
            })  # fmt: skip
    return out


def minutes(seconds: dict[str, float]) -> dict[str, float]:
    return {k: round(v / 60, 1) for k, v in seconds.items()}


def plot(summary: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    cam = summary[0]["test_iou"]
    for arm, style in (("pre-labels", "o-"), ("from scratch", "s--")):
        rows = [r for r in summary[1:] if r["arm"] == arm]
        x = [0.0] + [r["crowd_minutes"]["mean"] for r in rows]
        y = [cam if arm == "pre-labels" else 0.0] + [r["test_iou"]["mean"] for r in rows]
        low = [y[0]] + [r["test_iou"]["min"] for r in rows]
        high = [y[0]] + [r["test_iou"]["max"] for r in rows]
        axis.plot(x, y, style, label=arm)
        axis.fill_between(x, low, high, alpha=0.15)
        for r in rows:
            axis.annotate(f"{r['labels']['mean']:.0f}", (r["crowd_minutes"]["mean"],
                          r["test_iou"]["mean"]), textcoords="offset points", xytext=(4, -10),
                          fontsize=7)  # fmt: skip
    axis.set_xlabel("crowd minutes spent (numbers: labels)")
    axis.set_ylabel("plane IoU, held-out planes")
    axis.set_title("Plane masks: zero labels, then corrected labels")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=int, default=400)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--labels", default="25,50,100,200", help="cumulative labels per step")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--steps", type=int, default=200, help="optimiser steps per training")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--look", type=float, default=5.0, help="seconds to look at a task")
    parser.add_argument("--work", type=Path, default=Path("out/plane_curve"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/plane_curve.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    folders = build(args.work / "planes", counts={"train": args.pool, "test": args.test})
    names = sorted(p.name for p in (folders["train"] / "images").iterdir())
    images, truth = composed(folders["train"])
    test = composed(folders["test"])
    first = first_served_mask(test[0][0])
    with Clock() as mining:
        scores = mine_scores(registry.create("catdog"),
                             [folders["train"] / "images" / n for n in names],
                             group_indices("plane"))  # fmt: skip
    order = [int(i) for i in np.argsort(-scores, kind="stable")]
    cam = PlaneCam(efficientnet_lite0(pretrained=True), settings=PLANE_SETTINGS, zoom=PLANE_ZOOM)
    cam_row = judge(cam_masks(cam, test[0]), test[1])
    print(json.dumps({"cam": cam_row, "first_served_mask_s": round(first, 2)}), flush=True)
    pool = {"names": names, "images": images, "truth": truth, "order": order}
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        rows += run_seed(seed, args, pool, test, cam)
    summary = summarise(rows, cam_row)
    top = [order[: int(s)] for s in args.labels.split(",")]
    pool_figures = {
        "images": len(names), "with_plane": int(truth.any(axis=(1, 2)).sum()),
        "with_plane_in_first": {str(len(t)): int(truth[t].any(axis=(1, 2)).sum()) for t in top},
        "mining_cpu_s": round(mining.cpu, 1),
    }  # fmt: skip
    document = {
        **provenance(
            "plane IoU on held-out composed images: zero labels (CAM), then after N "
            "corrected labels (pre-labels from the model being served), vs labels from scratch "
            "at the same crowd cost"
        ),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "pool": pool_figures,
        "test": {"images": len(test[0]), "with_plane": int(test[1].any(axis=(1, 2)).sum())},
        "crowd": {k: CROWD[k] for k in KINDS},
        "draw_seconds": {k: SECONDS[k] for k in KINDS},
        "cam_only": cam_row,
        "first_served_mask_s": round(first, 2),
        "rows": rows,
        "summary": summary,
        "seconds": round(time.perf_counter() - started),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    plot(summary, args.out.with_suffix(".png"))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

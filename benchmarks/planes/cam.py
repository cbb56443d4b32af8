"""Zero-label plane masks measured: the ImageNet head's activation map, gated and refined by
GrabCut (:mod:`visionloop.models.planecam`), thresholds chosen on ``tune``, judged on ``test``
and on plane-free photos.

    .venv/bin/python benchmarks/planes/build.py       # once: the cut-outs (and photos/build.py)
    .venv/bin/python benchmarks/planes/cam.py --out benchmarks/results/plane_cam.json

The datasets are those of :mod:`data` (``tune`` and ``test`` share no cut-out and no
background). The thresholds and the zoom are chosen on ``tune`` plus ``tune_free`` (plane-free
photos, empty masks): the best dataset IoU among the settings that mask at most 5 % of the
plane-free images (:func:`visionloop.models.planecam.tune`).

Reported on ``test``: the dataset IoU of the plane masks (summed intersections over summed
unions, so a false positive on an image without a plane counts), the mean IoU over the images
that have a plane, how often an image with a plane gets a mask and one without gets none; on
``free`` (plane-free photos, centre-cropped to 224 as the server does): the share of photos
with any plane pixel and the mean plane area. The same for the map thresholded without GrabCut
(its own thresholds tuned the same way), to show what the refinement adds; and the time per
image of each step.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from compare import machine  # noqa: E402

from data import build  # noqa: E402
from visionloop.imaging import CenterCrop, center_crop  # noqa: E402
from visionloop.label.prelabel import read_photo  # noqa: E402
from visionloop.models.efficientnet_lite import efficientnet_lite0  # noqa: E402
from visionloop.models.planecam import (  # noqa: E402
    CamSettings,
    PlaneCam,
    decide,
    iou_counts,
    tune,
)

SIZE = 224


def composed(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W, 3) uint8 and plane masks (N, H, W) bool of a composed folder."""
    names = sorted(p.name for p in (folder / "images").iterdir())
    images = np.stack([np.asarray(Image.open(folder / "images" / n).convert("RGB"))
                       for n in names])  # fmt: skip
    masks = np.stack([np.asarray(Image.open(folder / "masks" / "plane" / n)) > 127 for n in names])
    return images, masks


def photos(folder: Path) -> np.ndarray:
    """Plane-free photos as the server reads them: decoded upright, centre crop 224."""
    crop = CenterCrop(short_side=SIZE, height=SIZE, width=SIZE, resample="bilinear")
    return np.stack([center_crop(read_photo(p, min_short_side=SIZE), crop)
                     for p in sorted(folder.iterdir())])  # fmt: skip


def normalise(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    return (x - 127.5) / 127.5


def maps(
    cam: PlaneCam, images: np.ndarray, batch: int = 16
) -> tuple[np.ndarray, np.ndarray, float]:
    """Group probabilities, maps, and ms per image for the network's pass."""
    ps, ms = [], []
    started = time.perf_counter()
    for i in range(0, len(images), batch):
        p, m = cam.maps(normalise(images[i : i + batch]))
        ps.append(p.numpy())
        ms.append(m.numpy())
    elapsed = (time.perf_counter() - started) * 1e3 / len(images)
    return np.concatenate(ps), np.concatenate(ms), elapsed


def judge(
    images: np.ndarray,
    probabilities: np.ndarray,
    cams: np.ndarray,
    truth: np.ndarray | None,
    settings: CamSettings,
) -> dict[str, Any]:
    started = time.perf_counter()
    masks = [decide(i, m, float(p), settings)
             for i, m, p in zip(images, cams, probabilities, strict=True)]  # fmt: skip
    ms = (time.perf_counter() - started) * 1e3 / len(images)
    predicted = np.array([m.any() for m in masks])
    out: dict[str, Any] = {"images": len(images), "ms_per_image_decide": round(ms, 2)}
    if truth is None:  # plane-free
        out["with_any_plane_pixel"] = int(predicted.sum())
        out["share_with_any_plane_pixel"] = round(float(predicted.mean()), 4)
        out["mean_plane_area"] = round(float(np.mean([m.mean() for m in masks])), 5)
        return out
    inter, union = iou_counts(masks, truth)
    has = np.array([t.any() for t in truth])
    ious = [float((m & t).sum() / (m | t).sum()) for m, t in zip(masks, truth, strict=True)
            if t.any()]  # fmt: skip
    out |= {
        "with_plane": int(has.sum()),
        "dataset_iou": round(inter / union, 4) if union else None,
        "mean_iou_images_with_plane": round(float(np.mean(ious)), 4),
        "found": f"{int((predicted & has).sum())} of {int(has.sum())}",
        "false_masks": f"{int((predicted & ~has).sum())} of {int((~has).sum())}",
        "mean_false_area_without_plane": round(
            float(np.mean([m.mean() for m, h in zip(masks, has, strict=True) if not h])), 5
        ) if (~has).any() else None,
    }  # fmt: skip
    return out


def chosen_iou(best: CamSettings, tried: list[dict[str, Any]]) -> float:
    """The tuning IoU of the settings ``tune`` chose (within its cap on false masks)."""
    (row,) = [t for t in tried if (t["gate"], t["seed"], t["background"])
              == (best.gate, best.seed, best.background)]  # fmt: skip
    return round(float(row["iou"]), 4)


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    folders = build(args.data, counts={"tune": args.tune, "train": 0, "test": args.test})
    network = efficientnet_lite0(pretrained=True)
    sets = {"tune": composed(folders["tune"]), "test": composed(folders["test"])}
    free = photos(folders["free"])
    tune_free = photos(folders["tune_free"])  # tuned on with empty masks, as plane-free
    images = np.concatenate([sets["tune"][0], tune_free])
    truth = np.concatenate([sets["tune"][1], np.zeros(tune_free.shape[:3], dtype=bool)])
    zooms: dict[float, dict[str, Any]] = {}
    for zoom in args.zooms:  # the zoom too is chosen on tune, with GrabCut
        p, m, ms = maps(PlaneCam(network, zoom=zoom), images)
        best, tried = tune(images, p, m, truth)
        zooms[zoom] = {"tune_iou": chosen_iou(best, tried),
                       "ms_per_image_network": round(ms, 2)}  # fmt: skip
        print(f"zoom {zoom}: {zooms[zoom]}", file=sys.stderr)
    zoom = max(zooms, key=lambda z: zooms[z]["tune_iou"])
    cam = PlaneCam(network, zoom=zoom)
    computed = {
        "tune": maps(cam, images),
        "test": maps(cam, sets["test"][0]),
        "free": maps(cam, free),
    }
    results: dict[str, Any] = {}
    for variant, base in (("cam+grabcut", CamSettings()), ("cam only", CamSettings(refine=False))):
        p, m, _ = computed["tune"]
        backgrounds = (0.1,) if not base.refine else (0.05, 0.1, 0.2)
        best, tried = tune(images, p, m, truth, base=base, backgrounds=backgrounds)
        tune_iou = chosen_iou(best, tried)
        if not base.refine:
            best = replace(best, background=0.0)  # unused without GrabCut
        test_images, test_truth = sets["test"]
        results[variant] = {
            "settings": best.as_dict() | {"zoom": zoom},
            "tune_iou": tune_iou,
            "grid": tried,
            "test": judge(test_images, *computed["test"][:2], test_truth, best),
            "free": judge(free, *computed["free"][:2], None, best),
        }
        print(variant, json.dumps({k: results[variant][k] for k in ("settings", "tune_iou",
              "test", "free")}), file=sys.stderr)  # fmt: skip
    return {
        "what": "zero-label plane masks: CAM of the ImageNet head, gated, refined by GrabCut",
        "command": "benchmarks/planes/cam.py " + " ".join(args.argv),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "threads": args.threads,
        "sets": {
            "tune": {
                "images": len(sets["tune"][0]),
                "with_plane": int(sets["tune"][1].any(axis=(1, 2)).sum()),
            },
            "test": {
                "images": len(sets["test"][0]),
                "with_plane": int(sets["test"][1].any(axis=(1, 2)).sum()),
            },
            "tune_free": {"images": len(tune_free)},
            "free": {"images": len(free)},
        },
        "zooms_on_tune": {str(z): v for z, v in zooms.items()},
        "zoom": zoom,
        "ms_per_image_network": {k: round(v[2], 2) for k, v in computed.items()},
        "results": results,
        "sources": json.loads((args.planes / "MANIFEST.json").read_text()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/plane_cam.json"))
    parser.add_argument("--data", type=Path, default=Path(".planes/data"))
    parser.add_argument("--planes", type=Path, default=Path(".planes"))
    parser.add_argument("--tune", type=int, default=60)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--zooms", type=float, nargs="+", default=[1.0, 1.5, 2.0, 2.5])
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    document = run(args)
    for item in document["sources"]:
        item.pop("width", None), item.pop("height", None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

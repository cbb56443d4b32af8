"""The GAN recipe, arm by arm: which of its points hold for a small photo restorer on 2 cores.

    .venv/bin/python benchmarks/photos/build.py          # once: the photos
    .venv/bin/python benchmarks/restore/study.py --out benchmarks/results/restore_study.json

Photos: the photographs of ``.photos`` (GCompris, OpenCV samples, MATE wallpapers; licences in
its MANIFEST.json), split in two by a hash of each name (:func:`planes.data.backgrounds`: the
same split, the same exclusions): ``work`` photos train, ``eval`` photos judge, never mixed.

Arms, each for the same number of optimiser steps (``--pretrain`` + ``--gan`` epochs of the
same batches), per seed:

- **L1**: the generator with L1 only, all the way;
- **L1 + content**: L1 plus the Lite0 content loss, all the way;
- the GAN arms start from one L1 pretrain of ``--pretrain`` epochs (the recipe's warm start)
  and fine-tune for ``--gan`` epochs with L1 + content + 0.1 x adversarial:
  **LSGAN, PatchGAN**; **LSGAN, U-Net SN** (the default); **vanilla GAN, U-Net SN** (binary
  cross-entropy instead of least squares); **RaLSGAN, U-Net SN** (relativistic);
  **LSGAN, U-Net SN, no EMA** (judged on the raw generator); **LSGAN, U-Net SN, BatchNorm in G**
  (its own pretrain with BatchNorm too).

Judged on every ``eval`` photo (short side to 256, centre 224 x 224, a fixed damage per photo):
PSNR and SSIM on the luma (BasicSR's way, 4 px border), the Lite0 feature distance
(uncalibrated), NIQE with a pristine model fitted on clean ``work`` crops (no reference; lower
is more natural), and what our users care about: the ``catdog`` label of the restored copy
against its label on the clean copy (and the degraded copy's, for the floor), and the same for
its ImageNet top-1 class, which moves long before the three-way label does. The eval photos
carry no cat/dog labels and nearly all are "neither", so agreement with the clean copy says
whether restoring brings the classifier back to what it says on an undamaged photo;
``catdog.py`` beside this file measures accuracy on person-labelled cat, dog and neither photos.
Every arm is judged with the generator it ends with (its moving average where it keeps one),
after the same number of steps, not at the epoch its own validation liked best.

Writes the results file and, beside it, ``<out>.png``: crops of four eval photos, degraded /
L1 / LSGAN U-Net / clean.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "planes"))

from compare import provenance  # noqa: E402

from data import backgrounds  # noqa: E402
from visionloop import imaging  # noqa: E402
from visionloop.models import registry  # noqa: E402
from visionloop.models.restorer import RestoreNet  # noqa: E402
from visionloop.train.degrade import degrade  # noqa: E402
from visionloop.train.engine import Diverged  # noqa: E402
from visionloop.train.gan import GanConfig, train_gan  # noqa: E402
from visionloop.train.image_metrics import FeatureDistance, psnr_y, ssim_y  # noqa: E402
from visionloop.train.niqe import Niqe  # noqa: E402

ROOT = HERE.parents[1]
SIDE = 224

ARMS: dict[str, dict[str, Any]] = {
    "L1": {"kind": "long", "content_weight": 0.0},
    "L1 + content": {"kind": "long", "content_weight": 1.0},
    "LSGAN, PatchGAN": {"discriminator": "patch", "gan_loss": "lsgan"},
    "LSGAN, U-Net SN": {"discriminator": "unet", "gan_loss": "lsgan"},
    "vanilla GAN, U-Net SN": {"discriminator": "unet", "gan_loss": "vanilla"},
    "RaLSGAN, U-Net SN": {"discriminator": "unet", "gan_loss": "ralsgan"},
    "LSGAN, U-Net SN, no EMA": {"discriminator": "unet", "gan_loss": "lsgan", "ema": None},
    "LSGAN, U-Net SN, BatchNorm in G": {"discriminator": "unet", "gan_loss": "lsgan",
                                        "norm": "batch"},
}  # fmt: skip


def centre(path: Path, side: int = SIDE) -> Image.Image:
    """The photo as training reads it (the server's guards, upright, RGB): short side to 256,
    the centre ``side`` square."""
    limits = imaging.ImageLimits()
    image = imaging.decode(imaging.read_file(path, limits.max_bytes), limits)
    scale = 256 / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)),
                         Image.Resampling.BICUBIC)  # fmt: skip
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


def link(paths: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(paths):
        target = folder / f"{i:04d}{p.suffix.lower()}"
        if not target.exists():
            target.symlink_to(p.resolve())
    return folder


def train_arm(
    name: str,
    arm: dict[str, Any],
    seed: int,
    args: argparse.Namespace,
    photos: Path,
    pretrained: dict[str, Path],
) -> tuple[Path, dict[str, Any]]:
    """The arm's run folder and its training figures (its best validation epoch's, and CPU s)."""
    base = {"photos": photos, "val_fraction": 0.15, "crop": args.crop, "batch_size": args.batch,
            "width": args.width, "blocks": args.blocks, "seed": seed, "patience": 10**6,
            "crops_per_photo": args.crops, "lr_g": args.lr}  # fmt: skip
    folder = args.work / f"seed{seed}" / name.replace(" ", "_").replace(",", "")
    started = time.process_time()
    if arm.get("kind") == "long":
        config = GanConfig(out=folder, epochs=args.pretrain + args.gan,
                           content_weight=arm["content_weight"], **base)  # fmt: skip
        figures = fit(config)
        return folder, {"cpu_s": round(time.process_time() - started, 1), **figures}
    norm = arm.get("norm", "none")
    extra: dict[str, Any] = {}
    if norm not in pretrained:  # the first arm of a kind of generator trains the shared warm start
        pre = args.work / f"seed{seed}" / f"pretrain-{norm}"
        fit(GanConfig(out=pre, epochs=args.pretrain, norm=norm, **base))
        pretrained[norm] = pre / "best.pt"
        extra["pretrain_cpu_s"] = round(time.process_time() - started, 1)
        started = time.process_time()
    config = GanConfig(
        out=folder, stage="gan", init=pretrained[norm], epochs=args.gan, norm=norm,
        content_weight=1.0, adv_weight=0.1, discriminator=arm["discriminator"],
        gan_loss=arm["gan_loss"], ema=arm.get("ema", 0.999), **base,
    )  # fmt: skip
    figures = fit(config)
    return folder, {"cpu_s": round(time.process_time() - started, 1), **extra, **figures}


def fit(config: GanConfig) -> dict[str, Any]:
    """Train; a run that diverges keeps its last good epoch (judged like the others) and says
    so in its figures rather than ending the study."""
    try:
        return train_gan(config)
    except Diverged as exc:
        if not (config.out / "best.pt").is_file():
            raise
        return {"diverged": str(exc)}


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    """The generator a run ends with (its moving average where it keeps one): every arm is
    judged after the same number of steps, not at the epoch its own validation liked best."""
    state = torch.load(run / "last.pt", weights_only=False, map_location="cpu")
    return state["ema"]["module"] if state.get("ema") else state["generator"]


@torch.no_grad()
def restore_pixels(
    run: Path, width: int, blocks: int, norm: str, images: list[np.ndarray]
) -> list[np.ndarray]:
    """``images`` (uint8 HWC) restored by the generator ``run`` ends with, 8 at a time."""
    net = RestoreNet(width, blocks, norm)  # type: ignore[arg-type]
    net.load_state_dict(final_weights(run))
    net.eval()
    out: list[np.ndarray] = []
    for i in range(0, len(images), 8):
        x = torch.from_numpy(np.stack(images[i : i + 8])).permute(0, 3, 1, 2).float() / 255
        out += list((net(x) * 255).round().byte().permute(0, 2, 3, 1).numpy())
    return out


class Judge:
    """The eval photos, clean and damaged, and every number an arm is judged by."""

    def __init__(self, eval_photos: list[Path], work_photos: list[Path], seed: int = 0) -> None:
        self.clean = [centre(p) for p in eval_photos]
        self.damaged = [degrade(c, random.Random(f"eval:{seed}:{i}"))[0]
                        for i, c in enumerate(self.clean)]  # fmt: skip
        self.niqe = Niqe.fit(np.asarray(centre(p)) for p in work_photos)
        self.catdog = registry.create("catdog")
        self.distance = FeatureDistance()
        self.clean_labels = self.labels(self.clean)

    def labels(self, images: list[Image.Image]) -> list[tuple[str, int]]:
        """catdog's label and the ImageNet top-1 class of each image."""
        out = []
        for i in range(0, len(images), 16):
            batch = torch.from_numpy(np.stack([np.asarray(x) for x in images[i : i + 16]]))
            outputs = self.catdog.forward(batch)
            top = outputs["probabilities"].argmax(dim=1).tolist()
            answers = self.catdog.postprocess(outputs)
            out += [(a["label"], int(t)) for a, t in zip(answers, top, strict=True)]
        return out

    def restore(self, run: Path, width: int, blocks: int, norm: str) -> list[Image.Image]:
        pixels = restore_pixels(run, width, blocks, norm, [np.asarray(d) for d in self.damaged])
        return [Image.fromarray(p) for p in pixels]

    def figures(self, images: list[Image.Image]) -> dict[str, Any]:
        a = torch.from_numpy(np.stack([np.asarray(x) for x in images])).permute(0, 3, 1, 2).double()
        b = (
            torch.from_numpy(np.stack([np.asarray(x) for x in self.clean]))
            .permute(0, 3, 1, 2)
            .double()
        )
        labels = self.labels(images)
        pairs = list(zip(labels, self.clean_labels, strict=True))
        agree = sum(x[0] == y[0] for x, y in pairs)
        top1 = sum(x[1] == y[1] for x, y in pairs)
        psnr = float(psnr_y(a, b).mean())
        return {
            "psnr_y": round(psnr, 3) if np.isfinite(psnr) else None,  # None: identical images
            "ssim_y": round(float(ssim_y(a, b).mean()), 4),
            "feature_distance": round(
                float(self.distance(a.float() / 255, b.float() / 255).mean()), 4
            ),
            "niqe": round(statistics.mean(self.niqe.score(np.asarray(x)) for x in images), 3),
            "catdog_agrees_with_clean": f"{agree} of {len(images)}",
            "catdog_agreement": round(agree / len(images), 4),
            "imagenet_top1_agreement": round(top1 / len(images), 4),
        }


def grid(rows: list[list[Image.Image]], path: Path, size: int = 96) -> None:
    """Crops of the same region, one photo per row, one column per version."""
    canvas = Image.new("RGB", (size * len(rows[0]) + 4 * (len(rows[0]) - 1),
                               size * len(rows) + 4 * (len(rows) - 1)), "white")  # fmt: skip
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            box = (64, 64, 64 + size, 64 + size)
            canvas.paste(image.crop(box), (c * (size + 4), r * (size + 4)))
    canvas.resize((canvas.width * 2, canvas.height * 2), Image.Resampling.NEAREST).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--pretrain", type=int, default=3, help="epochs of the L1 warm start")
    parser.add_argument("--gan", type=int, default=3, help="epochs of the GAN stage")
    parser.add_argument("--crops", type=int, default=6, help="crops of each photo per epoch")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4, help="every generator's Adam rate")
    parser.add_argument("--width", type=int, default=24)
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--arms", default=";".join(ARMS), help="names separated by ;")
    parser.add_argument("--work", type=Path, default=Path("out/restore_study"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/restore_study.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    photos = ROOT / ".photos"
    work_photos, eval_photos = backgrounds(photos, "work"), backgrounds(photos, "eval")
    train_folder = link(work_photos, args.work / "photos" / "work")
    judge = Judge(eval_photos, work_photos)
    rows: list[dict[str, Any]] = [
        {"arm": "degraded (no restoration)", **judge.figures(judge.damaged)},
        {"arm": "clean", **judge.figures(judge.clean)},
    ]
    print(json.dumps(rows), flush=True)
    pictures: dict[str, list[Image.Image]] = {}
    names = [a.strip() for a in args.arms.split(";")]
    for seed in [int(s) for s in args.seeds.split(",")]:
        pretrained: dict[str, Path] = {}
        for name in names:
            arm = ARMS[name]
            run, training = train_arm(name, arm, seed, args, train_folder, pretrained)
            restored = judge.restore(run, args.width, args.blocks, arm.get("norm", "none"))
            row = {"arm": name, "seed": seed, **judge.figures(restored), "training": training}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if seed == int(args.seeds.split(",")[0]):
                pictures[name] = restored[:4]
    document = {
        **provenance(
            "a small photo restorer trained arm by arm on the GAN recipe's points, judged "
            "on held-out photos"
        ),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "photos": {"work": len(work_photos), "eval": len(eval_photos)},
        "rows": rows,
        "summary": summarise(rows),
        "seconds": round(time.perf_counter() - started),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    shown = [n for n in ("L1", "LSGAN, U-Net SN") if n in pictures]
    grid([[judge.damaged[i], *(pictures[n][i] for n in shown), judge.clean[i]] for i in range(4)],
         args.out.with_suffix(".png"))  # fmt: skip
    print(json.dumps(document["summary"], indent=1))


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for name in dict.fromkeys(r["arm"] for r in rows):
        group = [r for r in rows if r["arm"] == name]
        entry: dict[str, Any] = {"arm": name, "seeds": len(group)}
        keys = ("psnr_y", "ssim_y", "feature_distance", "niqe", "catdog_agreement",
                "imagenet_top1_agreement")  # fmt: skip
        for key in keys:
            values = [float(r[key]) for r in group if r[key] is not None]
            if not values:
                continue
            entry[key] = {"mean": round(statistics.mean(values), 4),
                          "min": round(min(values), 4), "max": round(max(values), 4)}  # fmt: skip
        out.append(entry)
    return out


if __name__ == "__main__":
    main()

"""Decode at the size we need: full decode vs DCT-domain scaling (Pillow's draft, simplejpeg,
pillow-simd's draft), each followed by the one resize + crop of ``imaging.center_crop``.

    .venv/bin/python benchmarks/decode.py --simd-python /tmp/simd/bin/python \\
        --out benchmarks/results/decode.json

Inputs: the check photos (``benchmarks/photos/build.py``) as phone-sized JPEGs: each scaled to
``--megapixels`` (bicubic) and saved at quality 90. Timing: median ms per photo over all of
them, ``--repeats`` passes. Agreement: the catdog label and ImageNet top-1 of each method's
224x224 input against the full decode's, on every photo. pillow-simd replaces Pillow, so its row
runs in its own interpreter (``--simd-python``, a venv with pillow-simd, numpy, simplejpeg) and
hands its crops back in a file.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from visionloop import imaging

CROP = imaging.CenterCrop(short_side=256, height=224, width=224, resample="bicubic")
LIMITS = imaging.ImageLimits()


def phone_jpegs(folder: Path, megapixels: float, count: int) -> list[bytes]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".png", ".webp"))
    out = []
    for path in files[:count]:
        image = imaging.to_rgb(Image.open(path))
        scale = math.sqrt(megapixels * 1e6 / (image.width * image.height))
        size = (round(image.width * scale), round(image.height * scale))
        buffer = io.BytesIO()
        image.resize(size, Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def full(data: bytes) -> np.ndarray:
    return imaging.center_crop(imaging.decode(data, LIMITS), CROP)


def draft(data: bytes) -> np.ndarray:
    return imaging.prepare(data, CROP, LIMITS)


def simplejpeg_scaled(data: bytes) -> np.ndarray:
    import simplejpeg

    width, height = simplejpeg.decode_jpeg_header(data)[:2]
    scale = CROP.short_side / min(width, height)
    pixels = simplejpeg.decode_jpeg(
        data,
        colorspace="RGB",
        min_width=math.ceil(width * scale),
        min_height=math.ceil(height * scale),
    )
    return imaging.center_crop(Image.fromarray(pixels), CROP)


def timed(
    method: Callable[[bytes], np.ndarray], photos: list[bytes], repeats: int
) -> dict[str, Any]:
    for data in photos[:5]:
        method(data)
    per_photo: list[float] = []
    crops: list[np.ndarray] = []
    for r in range(repeats):
        for data in photos:
            start = time.perf_counter()
            crop = method(data)
            per_photo.append((time.perf_counter() - start) * 1e3)
            if r == 0:
                crops.append(crop)
    return {"ms_median": statistics.median(per_photo), "ms_mean": statistics.mean(per_photo),
            "crops": np.stack(crops)}  # fmt: skip


def simd_row(args: argparse.Namespace, work: Path) -> dict[str, Any] | None:
    if not args.simd_python:
        return None
    out = work / "simd.npz"
    subprocess.run([args.simd_python, __file__, "--simd-worker", str(out), "--photos",
                    str(args.photos), "--megapixels", str(args.megapixels), "--count",
                    str(args.count), "--repeats", str(args.repeats)], check=True)  # fmt: skip
    saved = np.load(out, allow_pickle=False)
    return {"ms_median": float(saved["ms_median"]), "ms_mean": float(saved["ms_mean"]),
            "crops": saved["crops"], "pillow": str(saved["pillow"])}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=Path(".photos/check"))
    parser.add_argument("--megapixels", type=float, default=1.5)
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--simd-python", help="interpreter of a venv with pillow-simd")
    parser.add_argument("--simd-worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("out/decode.json"))
    args = parser.parse_args()
    photos = phone_jpegs(args.photos, args.megapixels, args.count)
    if args.simd_worker:  # inside the pillow-simd interpreter: time the draft path, save crops
        row = timed(draft, photos, args.repeats)
        np.savez(args.simd_worker, pillow=Image.__version__, **row)
        return
    import PIL
    import torch

    from visionloop.models import create
    from visionloop.settings import ModelSettings

    rows = {
        "full decode + resize": timed(full, photos, args.repeats),
        "Pillow draft + resize (imaging.prepare)": timed(draft, photos, args.repeats),
    }
    with contextlib.suppress(ImportError):
        rows["simplejpeg scaled + resize"] = timed(simplejpeg_scaled, photos, args.repeats)
    with tempfile.TemporaryDirectory() as work:
        simd = simd_row(args, Path(work))
    if simd is not None:
        rows[f"pillow-simd {simd.pop('pillow')} draft + resize"] = simd
    model = create("catdog").prepare(ModelSettings(engine="torch"))

    def predict(crops: np.ndarray) -> tuple[np.ndarray, list[str]]:
        with torch.inference_mode():
            raw = torch.cat([model.network(model.normalise(torch.from_numpy(crops[i : i + 32])))
                             for i in range(0, len(crops), 32)])  # fmt: skip
        labels = [r["label"] for r in model.postprocess(model.outputs_from(raw))]
        return raw.argmax(1).numpy(), labels

    base_top, base_labels = predict(rows["full decode + resize"]["crops"])
    result: dict[str, Any] = {
        "command": "python " + " ".join(sys.argv),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "photos": len(photos), "megapixels": args.megapixels,
        "mean_kib": round(sum(map(len, photos)) / len(photos) / 1024, 1),
        "pillow": PIL.__version__, "methods": {},
    }  # fmt: skip
    for name, row in rows.items():
        top, labels = predict(row["crops"])
        diff = np.abs(row["crops"].astype(np.int16) - rows["full decode + resize"]["crops"])
        same = [a == b for a, b in zip(labels, base_labels, strict=True)]
        result["methods"][name] = {
            "ms_median": round(row["ms_median"], 3), "ms_mean": round(row["ms_mean"], 3),
            "label_agreement": float(np.mean(same)),
            "top1_agreement": float(np.mean(top == base_top)),
            "mean_abs_pixel_diff": float(diff.mean()),
        }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{len(photos)} photos, {args.megapixels} MP JPEG q90, {result['mean_kib']} KiB mean")
    print(
        "| method | ms/photo (median) | label agreement | top-1 agreement | mean abs pixel diff |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, m in result["methods"].items():
        print(f"| {name} | {m['ms_median']:.2f} | {m['label_agreement']:.4f} | "
              f"{m['top1_agreement']:.4f} | {m['mean_abs_pixel_diff']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()

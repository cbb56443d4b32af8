"""Decode + resize cost of a 1.5 MP phone-sized JPEG, with and without reduce-on-decode.

The two paths are timed in alternating order (A B, B A, ...), ``--number`` decodes per repeat,
so a machine whose speed drifts slows both alike; the spread over repeats is reported.

Run: .venv/bin/python benchmarks/decode_latency.py [--repeats 10] [--number 20]
     [--out benchmarks/results/decode_latency.json]
"""

from __future__ import annotations

import argparse
import io
import json
import time
import timeit
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from visionloop import imaging
from visionloop.bench.ceiling import command_line, machine_info, round_order, spread

PHOTO = Path(__file__).resolve().parents[1] / "tests" / "data" / "dog_german_shepherd.webp"
PATHS = ("draft", "full")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="even: each goes first as often")
    parser.add_argument("--number", type=int, default=20, help="decodes per repeat and path")
    parser.add_argument("--out", type=Path, help="write the repeats here as JSON")
    args = parser.parse_args()
    photo = Image.open(PHOTO).convert("RGB").resize((1500, 1000), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    crop, limits = imaging.CenterCrop(256, 224, 224), imaging.ImageLimits()

    def with_draft() -> None:
        imaging.prepare(data, crop, limits)

    def without_draft() -> None:
        imaging.center_crop(imaging.decode(data, limits), crop)

    paths: dict[str, Callable[[], None]] = {"draft": with_draft, "full": without_draft}
    for run in paths.values():  # warm-up, not measured
        run()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    repeats = []
    for r in range(args.repeats):
        order = round_order(PATHS, r)
        ms = {name: timeit.timeit(paths[name], number=args.number) / args.number * 1e3
              for name in order}  # fmt: skip
        repeats.append({"repeat": r, "order": order, "draft_ms": ms["draft"],
                        "full_ms": ms["full"], "ratio": ms["full"] / ms["draft"]})  # fmt: skip
    ratio = spread(r["ratio"] for r in repeats)
    draft, full = spread(r["draft_ms"] for r in repeats), spread(r["full_ms"] for r in repeats)
    print(f"1500x1000 JPEG, {len(data) // 1024} KiB -> 224x224 RGB, {args.repeats} repeats "
          f"x {args.number}, median [min-max]")  # fmt: skip
    for name, s in (("reduce-on-decode (Image.draft)", draft), ("full decode", full)):
        print(f"  {name:31} {s['median']:6.2f} ms/image [{s['min']:.2f}-{s['max']:.2f}]")
    print(f"  ratio full / draft:             {ratio['median']:6.2f}x "
          f"[{ratio['min']:.2f}-{ratio['max']:.2f}]")  # fmt: skip
    if args.out:
        result = {
            "what": "decode + crop of a 1500x1000 JPEG q90: reduce-on-decode vs full decode, "
            "alternating order",
            "command": command_line(),
            "date": started,
            "machine": machine_info(),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "jpeg_bytes": len(data),
            "repeats": repeats,
            "summary": {"draft_ms": draft, "full_ms": full, "ratio": ratio},
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

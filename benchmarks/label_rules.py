"""Issue 21's QC rule changes: tuned on the tuning crowd, judged on the fresh crowd.

    .venv/bin/python benchmarks/label_rules.py --stage tune \
        --out benchmarks/results/label_rules_tune.json
    .venv/bin/python benchmarks/label_rules.py --stage judge --choose KEY=VALUE,... \
        --out benchmarks/results/label_rules_judge.json

**The weaknesses.** The ban rule may fire after 5 honeypots (2 passed), and baits are made from
gold with tiny objects, where an honest hand's IoU falls under the threshold. The simulator's
images (``visionloop.label.simulate``) have no tiny objects, so here one more tiny object (0.1 to
0.8 % of the image) is put on ``--small-objects`` of the images, pool and gold alike.

**Stage tune** runs the tuning crowd (the kinds the rules were first tuned on) over a grid: the
honeypots seen before a ban (``warmup``), the probability under which a good pass rate is ruled
out (``confidence``), and the smallest object a bait may have (``min_bait_object``), at two
model qualities, ``--seeds`` crowds each. Read it, pick a setting, and name it with
``--choose``.

**Stage judge** runs the fresh crowd (``visionloop.label.crowd_fresh``, committed before stage
tune was first run) under the rules before issue 21 (warm-up 4, confidence 0.05, any bait, no
copy ban) and under the chosen ones with the copy ban (``copy_min_tasks`` 3); the held-out crowd
too, for reference (it showed the weaknesses, so it is not out of sample for these fixes).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from compare import provenance  # noqa: E402

from visionloop.label.crowd_fresh import FRESH, FRESH_CROWD  # noqa: E402
from visionloop.label.crowd_heldout import HELD_OUT, HELD_OUT_CROWD  # noqa: E402
from visionloop.label.quality import Rules  # noqa: E402
from visionloop.label.simulate import CROWD, TUNING, SimConfig, simulate  # noqa: E402

CROWDS = {
    "tuning": (CROWD, TUNING),
    "heldout": (HELD_OUT_CROWD, HELD_OUT),
    "fresh": (FRESH_CROWD, FRESH),
}
BEFORE = {"warmup": 4, "confidence": 0.05, "min_bait_object": 0.0, "copy_min_tasks": None}
GRID = {"warmup": [4, 6, 8], "confidence": [0.05, 0.02], "min_bait_object": [0.0, 0.005]}


def run(job: tuple[str, str, dict[str, Any], float, int, int, float]) -> dict[str, Any]:
    crowd, label, setting, quality, seed, images, small = job
    rule_keys = {k: v for k, v in setting.items() if k != "min_bait_object"}
    config = SimConfig(
        strategy="honeypots", images=images, model_quality=quality, seed=seed,
        crowd=dict(CROWDS[crowd][0]), behaviours=CROWDS[crowd][1], label=crowd,
        rules=replace(Rules(), **rule_keys), small_objects=small,
        min_bait_object=setting.get("min_bait_object", 0.0),
    )  # fmt: skip
    out = simulate(config)
    return {**out, "rules": label, "setting": setting, "small_objects": small}


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (crowd, rules, model quality), summed over seeds."""
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["crowd"], r["rules"], r["model_quality"]), []).append(r)
    rows = []
    for (crowd, rules, quality), group in groups.items():
        lazy, honest = sum(r["lazy"] for r in group), sum(r["honest"] for r in group)
        caught = sum(r["lazy_caught"] for r in group)
        wrong = sum(r["honest_banned"] for r in group)
        kinds: dict[str, list[int]] = {}
        for r in group:
            for kind, v in r["by_kind"].items():
                kinds.setdefault(kind, [0, 0])
                kinds[kind][0] += v["banned"]
                kinds[kind][1] += v["people"]
        rows.append({
            "crowd": crowd, "rules": rules, "model_quality": quality, "crowds": len(group),
            "lazy_caught": caught, "lazy": lazy, "honest_banned": wrong, "honest": honest,
            "label_iou": round(sum(r["final_iou"] for r in group) / len(group), 4),
            "paid_per_image": round(sum(r["paid_tasks"] for r in group)
                                    / sum(r["images"] for r in group), 3),
            "banned_by_kind": {k: f"{b}/{n}" for k, (b, n) in sorted(kinds.items())},
        })  # fmt: skip
    return rows


def name(setting: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in setting.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", choices=["tune", "judge"], required=True)
    parser.add_argument("--choose", default="", help="For judge: key=value,... of the grid.")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--qualities", default="0.4,0.8")
    parser.add_argument("--small-objects", type=float, default=0.3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    qualities = [float(q) for q in args.qualities.split(",")]
    if args.stage == "tune":
        settings = [dict(zip(GRID, values, strict=True))
                    for values in itertools.product(*GRID.values())]  # fmt: skip
        plan = [("tuning", name(s), s) for s in settings]
    else:
        if not args.choose:
            parser.error("--stage judge needs --choose (read stage tune first)")
        chosen: dict[str, Any] = {"copy_min_tasks": 3}
        for item in args.choose.split(","):
            key, _, value = item.partition("=")
            if key not in GRID:
                parser.error(f"--choose: {key!r} is not one of {', '.join(GRID)}")
            chosen[key] = type(GRID[key][-1])(value)
        rules = (("before", BEFORE), ("chosen " + name(chosen), chosen))
        plan = [(crowd, label, s) for crowd in ("fresh", "heldout") for label, s in rules]
    jobs = [
        (crowd, label, setting, q, seed, args.images, args.small_objects)
        for crowd, label, setting in plan
        for q in qualities
        for seed in range(args.seeds)
    ]
    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        runs = list(pool.map(run, jobs))
    rows = summarise(runs)
    for row in rows:
        print(json.dumps({k: v for k, v in row.items() if k != "banned_by_kind"}))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "provenance": provenance("issue 21 QC rules: " + args.stage), "stage": args.stage,
        "seconds": round(time.perf_counter() - started, 1), "small_objects": args.small_objects,
        "summary": rows, "runs": runs,
    }, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

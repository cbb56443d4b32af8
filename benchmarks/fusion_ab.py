"""Conv+BN fusion on the catdog network, side by side: unfused vs ``visionloop.bn.fuse``,
timed in alternating order in one process (A B, B A, A B, ...: this VM's speed drifts, and
whichever runs first in every round would otherwise carry the drift alone).

Run: .venv/bin/python benchmarks/fusion_ab.py [--rounds 6] [--batch 8] [--min-run-time 3]
     [--threads N] [--out benchmarks/results/fusion_ab.json]

Prints a Markdown table of the rounds; ``--out`` writes them as JSON (per-round ms of both,
the order of each round, the ratios with their median and min-max, the command, date, machine
and torch threads).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils import benchmark

from visionloop.bench.ceiling import command_line, machine_info, round_order, spread
from visionloop.bn import fuse
from visionloop.models.efficientnet_lite import efficientnet_lite0

LABELS = ("unfused", "fused")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="even: each goes first as often")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--min-run-time", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: default")
    parser.add_argument("--out", type=Path, help="write the rounds here as JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = efficientnet_lite0().eval()
    nets = {"unfused": base, "fused": fuse(base)[0]}
    nets = {k: v.to(memory_format=torch.channels_last) for k, v in nets.items()}
    x = torch.randn(args.batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print("| round | order | unfused ms | fused ms | speed-up |")
    print("| ---: | --- | ---: | ---: | ---: |")
    rounds = []
    with torch.inference_mode():
        for name in LABELS:  # one unmeasured call each: allocator, kernel selection
            nets[name](x)
        for r in range(args.rounds):
            order = round_order(LABELS, r)
            ms = {}
            for name in order:
                timer = benchmark.Timer(
                    "n(x)", globals={"n": nets[name], "x": x}, num_threads=torch.get_num_threads()
                )
                ms[name] = timer.blocked_autorange(min_run_time=args.min_run_time).median * 1e3
            ratio = ms["unfused"] / ms["fused"]
            rounds.append({"round": r, "order": order, "unfused_ms": ms["unfused"],
                           "fused_ms": ms["fused"], "speedup": ratio})  # fmt: skip
            print(f"| {r} | {' '.join(order)} | {ms['unfused']:.1f} | {ms['fused']:.1f} "
                  f"| {ratio:.2f}x |")  # fmt: skip
    speedup = spread(r["speedup"] for r in rounds)
    low, high = speedup["min"], speedup["max"]
    print(f"\nspeed-up unfused / fused: median {speedup['median']:.2f}x, "
          f"min-max {low:.2f}-{high:.2f}x over {args.rounds} rounds")  # fmt: skip
    if args.out:
        result = {
            "what": "EfficientNet-Lite0 forward, unfused vs BN-fused, alternating order (ABBA)",
            "command": command_line(),
            "date": started,
            "machine": machine_info(),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "batch": args.batch,
            "threads": torch.get_num_threads(),
            "rounds": rounds,
            "summary": {
                "speedup": speedup,
                "unfused_ms": spread(r["unfused_ms"] for r in rounds),
                "fused_ms": spread(r["fused_ms"] for r in rounds),
            },
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Conv+BN fusion on the catdog network, side by side: unfused vs ``visionloop.bn.fuse``,
timed alternately in one process (this VM's speed drifts; alternating keeps the ratio honest).

Run: .venv/bin/python benchmarks/fusion_ab.py [--rounds 4] [--batch 8] [--min-run-time 3]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch.utils import benchmark

from visionloop.bn import fuse
from visionloop.models.efficientnet_lite import efficientnet_lite0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--min-run-time", type=float, default=3.0)
    args = parser.parse_args()
    base = efficientnet_lite0().eval()
    nets = {"unfused": base, "fused": fuse(base)[0]}
    nets = {k: v.to(memory_format=torch.channels_last) for k, v in nets.items()}
    x = torch.randn(args.batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    print("| round | unfused ms | fused ms | speed-up |\n| ---: | ---: | ---: | ---: |")
    ratios = []
    with torch.inference_mode():
        for r in range(args.rounds):
            ms = {}
            for name, net in nets.items():
                timer = benchmark.Timer(
                    "n(x)", globals={"n": net, "x": x}, num_threads=torch.get_num_threads()
                )
                ms[name] = timer.blocked_autorange(min_run_time=args.min_run_time).median * 1e3
            ratios.append(ms["unfused"] / ms["fused"])
            print(f"| {r} | {ms['unfused']:.1f} | {ms['fused']:.1f} | {ratios[-1]:.2f}x |")
    print(f"\nmedian speed-up {statistics.median(ratios):.2f}x over {args.rounds} rounds")


if __name__ == "__main__":
    main()

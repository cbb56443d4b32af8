"""Every benchmark table of BENCHMARKS.md, regenerated from scratch in one command.

    .venv/bin/python benchmarks/run_all.py --quick        # ~10.5 min on 2 cores (make bench)
    .venv/bin/python benchmarks/run_all.py --full         # ~3 h: what BENCHMARKS.md quotes
    .venv/bin/python benchmarks/run_all.py --quick --only fusion,decode
    .venv/bin/python benchmarks/run_all.py --render-only  # no runs: tables from the files
    .venv/bin/python benchmarks/run_all.py --full --dry-run   # print the commands, run nothing

Each section runs its commands (recorded, exactly as run, in each results file under
``"run_all"``), writes ``--results-dir`` (default ``benchmarks/results``)/NAME.json, and then
every table of BENCHMARKS.md between ``<!-- results:NAME begin -->`` and
``<!-- results:NAME end -->`` is rewritten from the files alone (``benchmarks/render.py``); the
prose around the markers is not touched. A section whose file is missing leaves its marker
as it is; a marker missing from BENCHMARKS.md stops the run before anything is measured.
--quick writes the same file names as --full (the preset is recorded in each file and shown
under its table), so a quick run replaces the full figures of the sections it ran.

Sections (estimated minutes on the 2-vCPU dev machine, quick / full):

- ``ceiling`` (0.5 / 2): ``python -m visionloop.bench.ceiling``, the model-only forward pass of
  ``visionloop bench ceiling``, torch eager, fused vs unfused, batch 1 and 8, rounds in ABBA
  order (2 / 6 rounds).
- ``fusion`` (0.4 / 1.2): ``benchmarks/fusion_ab.py``, the network alone, unfused vs fused,
  ABBA (4 / 8 rounds).
- ``decode`` (0.1 / 0.3): ``benchmarks/decode_latency.py``, reduce-on-decode vs full decode,
  alternating (6 / 20 repeats).
- ``perf_analyzer`` (1 / 3): ``benchmarks/perf_analyzer/run.sh [--quick] --json``; its setup
  (a venv under .perf_analyzer/, apt libb64-0d) must have been done once.
- ``naive_batched`` (3.4 / 4.6): compare.py, closed loop, 4 and 32 clients, naive vs batched
  (3 repeats of 10 / 15 s per level).
- ``saturation`` (2.7 / 3.5): compare.py, closed loop, 32 clients, fixed vs adaptive (3 repeats
  of 10 / 15 s), between two model-only ceilings at batch 8 with the served engine (``auto``) on
  the server's CPU and threads, so "served / ceiling" is measured in the same run.
- ``peers`` (3.2 / 68): compare.py, open loop, ``X-Timeout-Ms: 250`` and a 250 ms SLO, rates as
  fractions of the capacity the saturation section just measured (adaptive's median; 30/s if
  there is no file): full 0.3, 0.6, 0.9, 1.2 and 2x capacity, 3 repeats of 10 s after 2 s of
  warm-up, 2 refined rates around each system's best; two runs, the peers as shipped (with
  adaptive: each system as a user gets it, the peers on eager PyTorch, visionloop on its default
  engine) and like for like: the peers on visionloop's engine and tuned to the SLO with their
  own knobs (``<peer>-fast-slo``, with adaptive), so that only the servers differ. visionloop's
  naive and fixed policies have their own sections (naive_batched, saturation), not this one.
  Quick: adaptive and LitServe as shipped only, 0.3, 0.6 and 1x capacity and 1 refined rate
  around each system's best, 2 repeats. Peers need
  their set-up (``benchmarks/peers/<name>/setup.sh``) done once.
- ``drift`` (full only, 6.5): the BatchNorm drift tap, closed loop, 32 clients, 3 repeats.
- ``distributed`` (full only, 15.3): Redis with 1 or 2 workers vs in process, closed (4, 32
  clients) and open (0.3 and 0.6x capacity), 3 repeats each. Pinned like the rest, Redis, the
  replica and the workers share the server's one core: this measures the cost of the Redis hop;
  1 vs 2 workers only shows scaling with more server CPUs (``--server-cpus 0-2`` on 4 cores).
- Neither preset runs naive at 10 % load in the peers section, so issue 4's "p50 at 10 %
  load" row reads "not measured".
- ``issue4_targets``: no run; the table of issue 4's targets from the saturation and peers
  files.

Estimates: every system start ~10 s (a peer up to 20 s), each level its warm-up plus duration,
times systems x levels x repeats. Measured on 2026-12-01 (2 cores): the whole quick run took
9 min 48 s with the earlier peer grid (0.6, 1, 2x), and its peers step alone 4 min 12 s with
the present one, about 10.5 minutes in all, within the 15 the issue allows
(``benchmarks/results/quick_2026-12-01/``). The full run that BENCHMARKS.md quotes took about
3 h, not the 1 h 45 min estimated: most of it the two peer runs (6 and 6 systems x 3 repeats
x 7 rates, with overloaded peers answering their backlog for up to the 30 s client timeout
after each level, plus restarts for the refined rates).

Pinning (serving sections): the server's process tree on CPU 0 (``--server-cpus 0``), the load
generator on CPU 1 (``--generator-cpus 1``), one compute thread per system (``--threads 1``).
On 2 cores an unpinned generator takes what it needs from the server's core, more against a
server that holds thousands of open requests (40-75 % of a core against the overloaded peers
in the 2026-11-27 run), so the systems did not get the same CPU; pinned, every system gets one
whole core and nothing else, and the generator's share cannot move the result. One thread
because two compute threads on one core only take turns (and contend with the decode threads
and event loop). The price: absolute req/s are about half of what the server does with both
cores; only the ratios side by side are quoted. perf_analyzer is pinned the same way. The
model-only sections (ceiling, fusion, decode) are not pinned: they measure the model with the
default threads, no generator involved. On a larger machine: ``--server-cpus 0-3
--generator-cpus 4 --threads 4``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import render  # benchmarks/render.py: this script's folder is first on sys.path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CAPACITY = 30.0  # req/s, when the saturation section has no file to take it from


def _python() -> str:
    exe = Path(sys.executable)
    try:
        return exe.relative_to(ROOT).as_posix()
    except ValueError:
        return str(exe)


PY = _python()


def rel(path: Path) -> str:
    """A path as the commands show it: relative to the repository (they run there)."""
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


COMPARE = [PY, "benchmarks/compare.py"]


@dataclass(frozen=True)
class Step:
    """One command of a section and the results file it writes."""

    section: str
    argv: tuple[str, ...]
    out: Path

    @property
    def command(self) -> str:
        return shlex.join(self.argv)


@dataclass(frozen=True)
class Options:
    preset: str  # "quick" or "full"
    results: Path
    server_cpus: str = "0"
    generator_cpus: str = "1"
    threads: int = 1

    @property
    def quick(self) -> bool:
        return self.preset == "quick"

    def pick(self, quick: object, full: object) -> str:
        return str(quick if self.quick else full)

    def pin(self) -> list[str]:
        return [
            "--server-cpus",
            self.server_cpus,
            "--generator-cpus",
            self.generator_cpus,
            "--threads",
            str(self.threads),
        ]


# Section -> the marker pairs of BENCHMARKS.md it fills; the order is the run order (the peers
# and distributed rates need the capacity the saturation section measures).
SECTIONS: dict[str, tuple[str, ...]] = {
    "ceiling": ("ceiling",),
    "fusion": ("fusion",),
    "decode": ("decode",),
    "perf_analyzer": ("perf_analyzer",),
    "naive_batched": ("naive_batched",),
    "saturation": ("saturation",),
    "peers": ("peers_shipped", "peers_slo"),
    "drift": ("drift",),
    "distributed": ("distributed",),
    "issue4_targets": ("issue4_targets",),
}
FULL_ONLY = ("drift", "distributed")
PEERS_SHIPPED = "adaptive,litserve,bentoml,torchserve,pytriton,rayserve"
PEERS_SLO = (
    "adaptive,litserve-fast-slo,bentoml-fast-slo,torchserve-fast-slo,pytriton-fast-slo,"
    "rayserve-fast-slo"
)


def capacity(results: Path) -> float:
    """adaptive's median closed-loop req/s in the saturation file, else DEFAULT_CAPACITY."""
    path = results / "saturation.json"
    if not path.exists():
        return DEFAULT_CAPACITY
    data = render.load_compare(path)
    values = [
        v for o in data.offered("adaptive") for v in data.values("adaptive", o, "throughput_rps")
    ]
    return statistics.median(values) if values else DEFAULT_CAPACITY


def rates(results: Path, fractions: tuple[float, ...]) -> str:
    c = capacity(results)
    return ",".join(f"{max(round(c * f, 1), 0.5):g}" for f in fractions)


def compare(opts: Options, section: str, name: str, what: str, *args: str) -> Step:
    """A compare.py run, pinned, writing ``--results NAME.json`` (plots to out/bench/NAME)."""
    out = opts.results / f"{name}.json"
    tail = ["--out", f"out/bench/{name}", "--results", rel(out), "--what", what]
    return Step(section, (*COMPARE, *args, *opts.pin(), *tail), out)


def closed(opts: Options, repeats: tuple[int, int], duration: float = 20) -> list[str]:
    """Closed-loop flags: 10 s per level after 2 s of warm-up in quick, else ``duration``/3."""
    quick, full = repeats
    if opts.quick:
        return shlex.split(f"--mode closed --duration 10 --warmup 2 --repeats {quick}")
    return shlex.split(f"--mode closed --duration {duration:g} --warmup 3 --repeats {full}")


def script(section: str, out: Path, *argv: str) -> Step:
    """A benchmark writing ``out`` (given as its last argument)."""
    return Step(section, (*argv, rel(out)), out)


def ceiling_step(opts: Options, name: str) -> Step:
    """The model-only ceiling as the saturation section's server runs: engine auto, fused,
    batch 8, on the server's CPUs with its threads."""
    flags = shlex.split("--engine auto --variants fused --batch-sizes 8")
    rounds = ["--rounds", opts.pick(2, 3), "--min-run-time", opts.pick(2, 3)]
    return script("saturation", opts.results / f"{name}.json",
                  "taskset", "-c", opts.server_cpus, PY, "-m", "visionloop.bench.ceiling",
                  *flags, "--threads", str(opts.threads), *rounds, "--out")  # fmt: skip


def section_steps(section: str, opts: Options) -> list[Step]:
    """The commands of one section under ``opts`` (empty if the preset leaves it out)."""
    r, pick = opts.results, opts.pick
    if section in FULL_ONLY and opts.quick:
        return []
    if section == "ceiling":
        flags = shlex.split("--engine torch --variants fused,unfused --batch-sizes 1,8")
        return [script(section, r / "ceiling.json", PY, "-m", "visionloop.bench.ceiling",
                       *flags, "--rounds", pick(2, 6), "--min-run-time", pick(1, 3),
                       "--out")]  # fmt: skip
    if section == "fusion":
        return [script(section, r / "fusion_ab.json", PY, "benchmarks/fusion_ab.py",
                       "--batch", "8", "--rounds", pick(4, 8), "--min-run-time", pick(1, 3),
                       "--out")]  # fmt: skip
    if section == "decode":
        return [script(section, r / "decode_latency.json", PY, "benchmarks/decode_latency.py",
                       "--repeats", pick(6, 20), "--number", pick(10, 20), "--out")]  # fmt: skip
    if section == "perf_analyzer":
        return [script(section, r / "perf_analyzer.json", "bash",
                       "benchmarks/perf_analyzer/run.sh", *(["--quick"] if opts.quick else []),
                       "--server-cpus", opts.server_cpus, "--pa-cpus", opts.generator_cpus,
                       "--server-arg", "--threads", "--server-arg", str(opts.threads),
                       "--json")]  # fmt: skip
    return _served_steps(section, opts)


def _served_steps(section: str, opts: Options) -> list[Step]:
    r = opts.results
    if section == "naive_batched":
        return [compare(opts, section, "naive_batched", "naive vs batched, closed loop",
                        "--systems", "naive,batched", "--clients", "4,32",
                        *closed(opts, (3, 3), duration=15))]  # fmt: skip
    if section == "saturation":
        return [
            ceiling_step(opts, "saturation_ceiling_before"),
            compare(opts, section, "saturation", "saturation: fixed vs adaptive, 32 clients",
                    "--systems", "fixed,adaptive", "--clients", "32",
                    *closed(opts, (3, 3), duration=15)),
            ceiling_step(opts, "saturation_ceiling_after"),
        ]  # fmt: skip
    if section == "peers":
        return _peer_steps(opts)
    if section == "drift":
        return [compare(opts, section, "drift_overhead", "cost of the BN drift tap, 32 clients",
                        "--systems", "adaptive,adaptive-drift1,adaptive-drift10",
                        "--clients", "32", *closed(opts, (3, 3), duration=30))]  # fmt: skip
    if section == "distributed":
        systems = ["--systems", "adaptive,redis-1w,redis-2w"]
        both = shlex.split("--duration 15 --warmup 3 --repeats 3")
        return [
            compare(opts, section, "distributed_closed", "Redis vs in process, closed loop",
                    *systems, "--mode", "closed", "--clients", "4,32", *both),
            compare(opts, section, "distributed_open", "Redis vs in process, open loop",
                    *systems, "--mode", "open", "--rates", rates(r, (0.3, 0.6)), *both),
        ]  # fmt: skip
    return []  # issue4_targets: rendered from the other sections' files, nothing to run


def _peer_steps(opts: Options) -> list[Step]:
    """Open loop, 250 ms deadline and SLO, rates as fractions of the measured capacity."""
    # Quick keeps 0.3x: a peer's knee can be below 0.6x of ours (LitServe's 28.0/s in the full
    # run, 0.6x of the quick run's 69.9/s is 41.9/s), and a grid with no rate under it cannot
    # find it.
    grid = (0.3, 0.6, 1.0) if opts.quick else (0.3, 0.6, 0.9, 1.2, 2.0)
    common = ["--mode", "open", "--rates", rates(opts.results, grid),
              *shlex.split("--deadline-ms 250 --slo-ms 250"),
              *shlex.split("--duration 10 --warmup 2 --repeats 2 --refine 1" if opts.quick
                           else "--duration 10 --warmup 2 --repeats 3 --refine 2")]  # fmt: skip
    if opts.quick:
        return [compare(opts, "peers", "peers_shipped", "side by side, peers as shipped, 250 ms",
                        "--systems", "adaptive,litserve", *common)]  # fmt: skip
    return [
        compare(opts, "peers", "peers_shipped", "side by side, peers as shipped, 250 ms",
                "--systems", PEERS_SHIPPED, *common),
        compare(opts, "peers", "peers_slo",
                "side by side, peers on our engine, tuned to the 250 ms SLO",
                "--systems", PEERS_SLO, *common),
    ]  # fmt: skip


def plan(opts: Options, only: list[str] | None = None) -> list[Step]:
    """Every command the preset would run, in order (rates from the files there are now)."""
    return [s for name in only or list(SECTIONS) for s in section_steps(name, opts)]


def record(step: Step, preset: str, started: float, rc: int) -> None:
    """Add how run_all ran the step to its results file (a JSON object)."""
    doc = json.loads(step.out.read_text())
    if not isinstance(doc, dict):
        return
    doc["run_all"] = {
        "command": step.command,
        "preset": preset,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "returncode": rc,
    }
    step.out.write_text(json.dumps(doc, indent=2) + "\n")


def _mtime(path: Path) -> int | None:
    return path.stat().st_mtime_ns if path.exists() else None


def run(opts: Options, only: list[str]) -> list[str]:
    """Run the sections in order; the failures, one line each. A step that leaves its results
    file as it was (or absent) has failed, whatever its exit status."""
    failures = []
    opts.results.mkdir(parents=True, exist_ok=True)
    for name in only:
        for step in section_steps(name, opts):  # now: the peers' rates read saturation.json
            print(f"\n== {name}: {step.command}", flush=True)
            started, before = time.time(), _mtime(step.out)
            rc = subprocess.run(step.argv, cwd=ROOT, env={**os.environ}).returncode
            if _mtime(step.out) in (None, before):
                failures.append(f"{name}: {rel(step.out)} not written (exit {rc}): {step.command}")
                continue
            record(step, opts.preset, started, rc)
            if rc != 0:
                failures.append(f"{name}: exit {rc}: {step.command}")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--quick", action="store_true", help="about 10.5 minutes on 2 cores")
    mode.add_argument("--full", action="store_true", help="about 3 h: what is quoted")
    mode.add_argument("--render-only", action="store_true", help="no runs: tables from files")
    parser.add_argument("--only", help=f"comma-separated sections of: {', '.join(SECTIONS)}")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--generator-cpus", default="1")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    only = args.only.split(",") if args.only else list(SECTIONS)
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    names = [m for s in only for m in SECTIONS[s]]
    if "issue4_targets" not in names:
        names.append("issue4_targets")  # cheap, and it reads the files the run just wrote
    render.check_markers(args.markdown.read_text(), names)  # before anything is measured
    failures = []
    if not args.render_only:
        opts = Options(
            "quick" if args.quick else "full",
            args.results_dir,
            args.server_cpus,
            args.generator_cpus,
            args.threads,
        )
        if args.dry_run:
            found = (args.results_dir / "saturation.json").exists()
            print(f"# open-loop rates from a capacity of {capacity(args.results_dir):g} req/s "
                  f"({'saturation.json now' if found else 'the default'}; a run re-reads it "
                  "after its saturation section)")  # fmt: skip
            for step in plan(opts, only):
                print(f"{step.section}: {step.command}")
            return 0
        failures = run(opts, only)
    for line in render.render_file(args.markdown, args.results_dir, names):
        print(line)
    for line in failures:
        print(f"FAILED {line}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""Helpers for run.sh: input data, a free port, readiness, compatibility check, /metrics, summary.

Runs with the project's venv (Pillow is needed only by ``input-data``); everything else is the
standard library, so it talks to any server given by URL.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import io
import json
import os
import platform
import re
import socket
import struct
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

MODEL = "catdog"
IMAGE_SUFFIXES = (".png", ".webp", ".jpg", ".jpeg")
METRIC_LINE = re.compile(r"^(\w+)(?:\{([^}]*)\})?\s+(\S+)$")


def get_json(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, {}


# --- input data -------------------------------------------------------------------------------


def input_data(images: Path, out: Path, quality: int) -> None:
    """perf_analyzer --input-data JSON: one step per photo, re-encoded as JPEG.

    For a BYTES tensor, perf_analyzer copies the decoded ``b64`` payload verbatim as the
    serialized tensor, so each payload is the 4-byte little-endian length followed by the JPEG.
    ``shape`` excludes the batch dimension (``-b 1`` adds it): each request is ``[1, 1]``.
    """
    from PIL import Image

    steps = []
    for path in sorted(images.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        buffer = io.BytesIO()
        Image.open(path).convert("RGB").save(buffer, "JPEG", quality=quality)
        jpeg = buffer.getvalue()
        payload = base64.b64encode(struct.pack("<I", len(jpeg)) + jpeg).decode()
        steps.append({"image_bytes": {"b64": payload, "shape": [1]}})
        print(f"  {path.name}: {len(jpeg)} bytes as JPEG q{quality}")
    if not steps:
        sys.exit(f"no images in {images}")
    out.write_text(json.dumps({"data": steps}))


# --- server -----------------------------------------------------------------------------------


def free_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])


def wait_ready(url: str, timeout: float, pid: int | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid is not None and not Path(f"/proc/{pid}").exists():
            sys.exit(f"server process {pid} exited before it was ready")
        try:
            if get_json(f"{url}/v2/health/ready")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.25)
    sys.exit(f"server at {url} not ready after {timeout:.0f} s")


def check(url: str) -> None:
    """Exit non-zero, saying why, if perf_analyzer 2.51 cannot drive the server at ``url``."""
    problems = []
    _, meta = get_json(f"{url}/v2/models/{MODEL}")
    _, conf = get_json(f"{url}/v2/models/{MODEL}/config")
    _, stats = get_json(f"{url}/v2/models/{MODEL}/stats")
    batching = int(str(conf.get("max_batch_size", 0))) > 0
    for tensor in meta.get("inputs", []):  # type: ignore[attr-defined]
        if batching and len(tensor["shape"]) < 2:
            problems.append(
                f"metadata: input {tensor['name']} has shape {tensor['shape']} with "
                "max_batch_size > 0: empty per-item shape (Triton would say [-1, 1])"
            )
    for tensor in conf.get("input", []):  # type: ignore[attr-defined]
        if not tensor.get("optional", False):
            problems.append(
                f"config: input {tensor['name']} is not marked optional, so perf_analyzer "
                "requires data for it too"
            )
    for model in stats.get("model_stats", []):  # type: ignore[attr-defined]
        missing = {"compute_input", "compute_output"} - set(model["inference_stats"])
        if missing:
            problems.append(f"stats: inference_stats lacks {sorted(missing)}")
    for problem in problems:
        print(f"  incompatible: {problem}", file=sys.stderr)
    sys.exit(2 if problems else 0)


def scrape(url: str, out: Path) -> None:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        out.write_bytes(response.read())


# --- summary ----------------------------------------------------------------------------------


def parse_metrics(path: Path) -> dict[tuple[str, str], float]:
    """(name, labels) -> value for the catdog series of one /metrics scrape."""
    values = {}
    for line in path.read_text().splitlines():
        match = METRIC_LINE.match(line)
        if match and f'model="{MODEL}"' in (match[2] or ""):
            labels = ",".join(
                part for part in (match[2] or "").split(",") if not part.startswith("model=")
            )
            values[(match[1], labels)] = float(match[3])
    return values


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus-style quantile from cumulative (upper bound, count) pairs."""
    total = buckets[-1][1]
    if total <= 0:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


def metrics_figures(before: Path, after: Path) -> dict[str, float | None]:
    """What the server's own /metrics saw between two scrapes (all requests, not windows)."""
    start, end = parse_metrics(before), parse_metrics(after)

    def delta(name: str, labels: str = "") -> float:
        return end.get((name, labels), 0.0) - start.get((name, labels), 0.0)

    infer = 'endpoint="v2_infer"'
    count = delta("visionloop_request_latency_seconds_count", infer)
    if count <= 0:
        return {"requests": 0.0}
    buckets = sorted(
        (float(key[1].split('le="')[1].split('"')[0]), end[key] - start.get(key, 0.0))
        for key in end
        if key[0] == "visionloop_request_latency_seconds_bucket" and infer in key[1]
    )
    batches = delta("visionloop_batch_size_count")
    errors = sum(
        end[key] - start.get(key, 0.0)
        for key in end
        if key[0] == "visionloop_requests_total"
        and infer in key[1]
        and 'status="200"' not in key[1]
    )
    return {
        "requests": count,
        "non_200": errors,
        "mean_ms": delta("visionloop_request_latency_seconds_sum", infer) / count * 1e3,
        "p50_ms_bucket": histogram_quantile(buckets, 0.5) * 1e3,
        "p99_ms_bucket": histogram_quantile(buckets, 0.99) * 1e3,
        "mean_batch": delta("visionloop_batch_size_sum") / batches if batches else None,
    }


def metrics_delta(before: Path, after: Path) -> str:
    """The same, as one line of the summary."""
    m = metrics_figures(before, after)
    if not m["requests"]:
        return "server /metrics: no v2 requests seen"
    return (
        f"server /metrics over the whole run (warm-up and ramps included): {m['requests']:.0f} "
        f"requests, {m['non_200']:.0f} non-200, mean {m['mean_ms']:.1f} ms, ~p50 "
        f"{m['p50_ms_bucket']:.0f} ms, ~p99 {m['p99_ms_bucket']:.0f} ms (bucket-interpolated), "
        f"mean batch {m['mean_batch'] if m['mean_batch'] is not None else float('nan'):.2f}"
    )


COMPONENTS = (
    "Client Send",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Client Recv",
)


def step_figures(path: Path) -> list[dict[str, object]]:
    """One dict per load step of a perf_analyzer CSV: the figures of the summary's table."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    steps: list[dict[str, object]] = []
    for row in rows:
        load_key = next(iter(row))  # "Concurrency" or "Request Rate"
        ms = {k: float(v) / 1000 for k, v in row.items() if k in COMPONENTS or "latency" in k}
        steps.append(
            {
                "mode": "concurrency" if load_key == "Concurrency" else "request_rate",
                "load": float(row[load_key]),
                "infer_per_s": float(row["Inferences/Second"]),
                **{f"p{p}_ms": ms[f"p{p} latency"] for p in (50, 90, 99)},
                "avg_ms": sum(ms[k] for k in COMPONENTS),
                "server_queue_compute_ms": ms["Server Queue"] + ms["Server Compute Infer"],
            }
        )
    return steps


def table_rows(path: Path) -> tuple[list[list[str]], float]:
    """Table rows of one perf_analyzer CSV, and its throughput-weighted mean latency in ms."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    out, weighted, weights = [], 0.0, 0.0
    for row in rows:
        load_key = next(iter(row))  # "Concurrency" or "Request Rate"
        ms = {k: float(v) / 1000 for k, v in row.items() if k in COMPONENTS or "latency" in k}
        ips, avg = float(row["Inferences/Second"]), sum(ms[k] for k in COMPONENTS)
        weighted, weights = weighted + ips * avg, weights + ips
        out.append(
            [
                "concurrency" if load_key == "Concurrency" else "rate/s",
                f"{float(row[load_key]):g}",
                f"{ips:.2f}",
                *(f"{ms[f'p{p} latency']:.1f}" for p in (50, 90, 99)),
                f"{avg:.1f}",
                f"{ms['Server Queue'] + ms['Server Compute Infer']:.1f}",
            ]
        )
    return out, weighted / weights if weights else float("nan")


def log_problems(path: Path) -> tuple[list[str], list[str]]:
    """perf_analyzer's errors and warnings in a console log, each with the load step it hit."""
    step, errors, warnings = "setup", [], []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        if line.startswith(("Request concurrency:", "Request Rate:")):
            step = line.split(" inference")[0]
        elif "[WARNING]" in line:
            warnings.append(f"{step}: {line.strip()}")
        elif re.match(r"(?i)\s*(error|failed|thread \[\d+\] had error|terminate)", line):
            errors.append(f"{step}: {line.strip()}")
    return errors, warnings


def machine() -> dict[str, object]:
    """CPU count, affinity, model name and AVX-512 flags (standard library only)."""
    model, flags = "", set[str]()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "cpu_model": model,
        "avx512_flags": sorted(f for f in flags if f.startswith("avx512")),
        "python": platform.python_version(),
    }


def summary_json(
    run_dir: Path, names: list[str], failures: list[str], meta: dict[str, object]
) -> dict[str, object]:
    """The summary as one JSON object: the steps of every run, the server's own view, the
    failures, and what ``run.sh`` passed in ``meta`` (command, date, versions, settings)."""
    runs = {}
    for name in names:
        csv_path = run_dir / f"{name}.csv"
        before, after = run_dir / f"{name}.metrics.before", run_dir / f"{name}.metrics.after"
        runs[name] = {
            "steps": step_figures(csv_path) if csv_path.exists() else [],
            "server_metrics": metrics_figures(before, after)
            if before.exists() and after.exists()
            else None,
        }
    return {
        "what": "perf_analyzer against visionloop's v2 endpoint",
        **meta,
        "machine": machine(),
        "run_dir": str(run_dir),
        "runs": runs,
        "failures": failures,
    }


def summary(
    run_dir: Path,
    names: list[str],
    json_out: Path | None = None,
    meta: dict[str, object] | None = None,
) -> int:
    header = ["mode", "load", "infer/s", "p50 ms", "p90 ms", "p99 ms", "avg ms", "srv q+c ms"]
    rows, notes, failures = [], [], []
    for name in names:
        errors, warnings = log_problems(run_dir / f"{name}.log")
        failures += [f"{name}: {e}" for e in errors]
        notes += [f"{name}: {w}" for w in warnings]
        csv_path = run_dir / f"{name}.csv"
        if not csv_path.exists():
            failures.append(f"{name}: no CSV (see {name}.log)")
            continue
        new_rows, mean_ms = table_rows(csv_path)
        rows += new_rows
        before, after = run_dir / f"{name}.metrics.before", run_dir / f"{name}.metrics.after"
        if new_rows and before.exists() and after.exists():
            notes.append(
                f"{name}: perf_analyzer, throughput-weighted mean of steps: {mean_ms:.1f} ms"
            )
            notes.append(f"{name}: {metrics_delta(before, after)}")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [
        "",
        "infer/s and latencies: perf_analyzer client side, measured windows only; avg = sum of",
        "the CSV's components; srv q+c = server queue + compute from /v2/models/catdog/stats",
        "(excludes HTTP parsing and image decoding, which the server does before queueing).",
        *notes,
        *(f"FAILED {f}" for f in failures),
    ]
    text = "\n".join(lines)
    print(text)
    (run_dir / "summary.txt").write_text(text + "\n")
    if json_out is not None:
        document = summary_json(run_dir, names, failures, meta or {})
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(document, indent=2) + "\n")
    return 3 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("input-data")
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--quality", type=int, default=90)
    sub.add_parser("free-port")
    for name in ("wait-ready", "check", "scrape"):
        p = sub.add_parser(name)
        p.add_argument("--url", required=True)
        if name == "wait-ready":
            p.add_argument("--timeout", type=float, default=120)
            p.add_argument("--pid", type=int)
        if name == "scrape":
            p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("summary")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--json", type=Path, help="also write the summary here as JSON")
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                   help="recorded in the JSON as is (repeatable)")  # fmt: skip
    p.add_argument("names", nargs="+")
    args = parser.parse_args()
    if args.command == "input-data":
        input_data(args.images, args.out, args.quality)
    elif args.command == "free-port":
        free_port()
    elif args.command == "wait-ready":
        wait_ready(args.url, args.timeout, args.pid)
    elif args.command == "check":
        check(args.url)
    elif args.command == "scrape":
        scrape(args.url, args.out)
    else:
        meta = dict(item.split("=", 1) for item in args.meta)
        sys.exit(summary(args.dir, args.names, args.json, meta))


if __name__ == "__main__":
    main()

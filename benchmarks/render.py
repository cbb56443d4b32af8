"""Markdown tables of BENCHMARKS.md, made from the results files alone.

Each renderer takes the results folder and returns the Markdown of one marker pair of
BENCHMARKS.md (``<!-- results:NAME begin -->`` ... ``<!-- results:NAME end -->``): a line
naming the file, command, date and machine, a table, and one summary line of ratios, each as
median [min-max] over the repeats. Rendering reads nothing but the files, so the same files
give the same text, and writing it twice changes nothing.

Compare files (``benchmarks/compare.py --results``) are one JSON object with ``rows``; older
ones are a bare list of rows without ``repeat`` or ``server_cpu_pct``: both are read, a row
without ``repeat`` counting as repeat 0.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
Row = dict[str, Any]
VISIONLOOP = ("naive", "batched", "fixed", "adaptive")
PEER_NAMES = {
    "litserve": "LitServe",
    "bentoml": "BentoML",
    "torchserve": "TorchServe",
    "pytriton": "PyTriton",
    "rayserve": "Ray Serve",
}


class MarkerError(ValueError):
    """BENCHMARKS.md lacks a marker pair, or has it twice or in the wrong order."""


class MissingResults(FileNotFoundError):
    """A renderer's results file is not there (the section has not been run)."""


# --- markers ----------------------------------------------------------------------------------


def markers(name: str) -> tuple[str, str]:
    return f"<!-- results:{name} begin -->", f"<!-- results:{name} end -->"


def check_markers(text: str, names: Iterable[str]) -> None:
    """Raise MarkerError naming every marker pair that is missing, doubled or reversed."""
    problems = []
    for name in names:
        begin, end = markers(name)
        counts = (text.count(begin), text.count(end))
        if counts != (1, 1):
            problems.append(f"{begin} / {end} found {counts[0]} / {counts[1]} times (want 1 / 1)")
        elif text.index(begin) > text.index(end):
            problems.append(f"{end} comes before {begin}")
    if problems:
        raise MarkerError("BENCHMARKS.md markers: " + "; ".join(problems))


def replace_between(text: str, name: str, body: str) -> str:
    """``text`` with everything between the marker pair ``name`` replaced by ``body``."""
    check_markers(text, [name])
    begin, end = markers(name)
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body.strip()}\n{end}{tail}"


# --- figures ----------------------------------------------------------------------------------


def spread(values: Iterable[float]) -> tuple[float, float, float]:
    data = sorted(values)
    if not data:
        raise ValueError("no values")
    return statistics.median(data), data[0], data[-1]


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_spread(values: Iterable[float], digits: int = 1, suffix: str = "") -> str:
    """``median [min-max]``; just the value when there is one (or all are equal)."""
    data = list(values)
    if not data:
        return "-"
    median, low, high = spread(data)
    if len(data) == 1 or low == high:
        return f"{median:.{digits}f}{suffix}"
    return f"{median:.{digits}f}{suffix} [{low:.{digits}f}-{high:.{digits}f}]"


def paired_ratios(a: dict[int, float], b: dict[int, float]) -> list[float]:
    """a / b per repeat where both have it; every a with every b when no repeat is shared."""
    shared = sorted(set(a) & set(b))
    if shared:
        return [a[r] / b[r] for r in shared if b[r]]
    return [x / y for x in a.values() for y in b.values() if y]


def table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str) -> str:
    """A Markdown table; ``align`` is one letter per column, l or r."""
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = [header, rule, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


# --- files ------------------------------------------------------------------------------------


def shown(path: Path) -> str:
    """The file as BENCHMARKS.md names it: relative to the repository, else its name."""
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return path.name


def read_json(path: Path) -> Any:
    if not path.exists():
        raise MissingResults(f"no results file {path}")
    return json.loads(path.read_text())


@dataclass
class Compare:
    """One compare.py results file: its context (empty for a bare list) and rows."""

    path: Path
    meta: dict[str, Any]
    rows: list[Row]

    def of(self, label: str, offered: float | None = None) -> list[Row]:
        return [
            r
            for r in self.rows
            if r["label"] == label and (offered is None or float(r["offered"]) == offered)
        ]

    def labels(self) -> list[str]:
        return list(dict.fromkeys(r["label"] for r in self.rows))

    def offered(self, label: str | None = None) -> list[float]:
        return sorted({float(r["offered"]) for r in self.rows if label in (None, r["label"])})

    def by_repeat(self, label: str, offered: float, key: str) -> dict[int, float]:
        """``key`` of one (label, offered) per repeat (the mean if a repeat has two rows)."""
        values: dict[int, list[float]] = {}
        for r in self.of(label, offered):
            if r.get(key) is not None:
                values.setdefault(int(r.get("repeat", 0)), []).append(float(r[key]))
        return {k: statistics.mean(v) for k, v in values.items()}

    def values(self, label: str, offered: float, key: str) -> list[float]:
        """``key`` of every row of (label, offered); None and NaN (no answer to time) left out."""
        found = [float(r[key]) for r in self.of(label, offered) if r.get(key) is not None]
        return [v for v in found if not math.isnan(v)]


def load_compare(path: Path) -> Compare:
    doc = read_json(path)
    if isinstance(doc, list):
        return Compare(path, {}, [{**r, "repeat": r.get("repeat", 0)} for r in doc])
    rows = [{**r, "repeat": r.get("repeat", 0)} for r in doc["rows"]]
    return Compare(path, {k: v for k, v in doc.items() if k != "rows"}, rows)


def source_line(paths: Sequence[Path], docs: Sequence[Any]) -> str:
    """Which files, which command, when, where: the first line of every rendered block."""
    parts = []
    for path, doc in zip(paths, docs, strict=True):
        meta = doc if isinstance(doc, dict) else {}
        ran = meta.get("run_all", {})
        command = ran.get("command") or meta.get("command")
        if not meta:
            parts.append(f"`{shown(path)}` (rows only: the file records no command or date)")
            continue
        text = f"`{shown(path)}`"
        if command:
            text += f" from `{command}`"
        if meta.get("date"):
            text += f", {meta['date']}"
        if ran.get("preset"):
            text += f", run_all --{ran['preset']}"
        parts.append(text)
    machine = next((d["machine"] for d in docs if isinstance(d, dict) and "machine" in d), None)
    line = "Results: " + "; ".join(parts) + "."
    if machine:
        line += f" Machine: {describe_machine(machine)}."
    return line


def describe_machine(m: dict[str, Any]) -> str:
    cpu = m.get("cpu_model") or m.get("cpu") or "CPU"
    text = f"{m.get('cpu_count', m.get('cpus', '?'))} x {cpu}"
    flags = m.get("avx512_flags")
    if flags is not None:
        extras = [
            name
            for flag, name in (("avx512_vnni", "VNNI"), ("avx512_bf16", "BF16"))
            if flag in flags
        ]
        text += (
            ", no AVX-512"
            if not flags
            else ", AVX-512" + (f" ({', '.join(extras)})" if extras else "")
        )
    for key in ("torch", "torch_threads"):
        if key in m:
            text += f", {key.replace('_', ' ')} {m[key]}"
    return text


def load_label(offered: float, mode: str) -> str:
    return f"{offered:g} clients" if mode == "closed" else f"{offered:g}/s"


def system_name(label: str) -> str:
    """How a table names a system: visionloop's by policy, peers by their own name, with
    "-fast" (on visionloop's engine) and "(tuned to the SLO)" where that applies."""
    slo = label.endswith("-slo")
    base = label.removesuffix("-slo")
    fast = base.endswith("-fast")
    peer = base.removesuffix("-fast")
    if peer not in PEER_NAMES:
        return label if label.startswith(("redis", "adaptive-")) else f"visionloop {label}"
    return PEER_NAMES[peer] + ("-fast" if fast else "") + (" (tuned to the SLO)" if slo else "")


def is_peer(label: str) -> bool:
    return label.removesuffix("-slo").removesuffix("-fast") in PEER_NAMES


# --- model-only sections ----------------------------------------------------------------------


def _rate_spread(ms: list[float], size: int) -> str:
    """images/s of the median ms [of the slowest - of the fastest]: consistent with ms/batch."""
    median, low, high = spread(ms)
    if len(ms) == 1 or low == high:
        return f"{1e3 * size / median:.1f}"
    return f"{1e3 * size / median:.1f} [{1e3 * size / high:.1f}-{1e3 * size / low:.1f}]"


def render_ceiling(results: Path) -> str:
    """``python -m visionloop.bench.ceiling``: fused vs unfused, per batch size, over rounds."""
    path = results / "ceiling.json"
    doc = read_json(path)
    rounds = doc["rounds"]
    groups: dict[tuple[str, int], list[Row]] = {}
    for t in rounds:
        groups.setdefault((t["label"], int(t["batch_size"])), []).append(t)
    rows = []
    for (label, size), ts in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        ms = [t["median_ms"] for t in ts]
        rows.append(
            [
                label,
                str(size),
                fmt_spread(ms, 2),
                fmt(statistics.median(ms) / size, 2),
                _rate_spread(ms, size),
                str(len(ts)),
            ]
        )
    ratios = []
    for size in sorted({s for _, s in groups}):
        fused = {t["round"]: t["median_ms"] for t in groups.get(("fused", size), [])}
        unfused = {t["round"]: t["median_ms"] for t in groups.get(("unfused", size), [])}
        if fused and unfused:
            per_round = paired_ratios(unfused, fused)
            ratios.append(f"batch {size} {fmt_spread(per_round, 2, 'x')}")
    header = ["variant", "batch", "ms/batch", "ms/image", "images/s", "rounds"]
    summary = (
        f"Fused speed-up (unfused / fused ms, per round): {', '.join(ratios)}."
        if ratios
        else "One variant only: no ratio."
    )
    return "\n\n".join(
        [
            source_line([path], [doc]),
            table(header, rows, "lrrrrr"),
            "ms/batch and images/s: median [min-max] over rounds whose order alternates (ABBA).",
            summary,
        ]
    )


def render_fusion(results: Path) -> str:
    """``benchmarks/fusion_ab.py``: unfused vs fused network, per round."""
    path = results / "fusion_ab.json"
    doc = read_json(path)
    rows = [
        [
            str(r["round"]),
            " ".join(r["order"]),
            fmt(r["unfused_ms"]),
            fmt(r["fused_ms"]),
            f"{r['speedup']:.2f}x",
        ]
        for r in doc["rounds"]
    ]
    speedups = [r["speedup"] for r in doc["rounds"]]
    return "\n\n".join(
        [
            source_line([path], [doc]),
            table(["round", "order", "unfused ms", "fused ms", "speed-up"], rows, "rlrrr"),
            f"Speed-up unfused / fused: {fmt_spread(speedups, 2, 'x')} (median [min-max] over "
            f"{len(speedups)} rounds, batch {doc['batch']}, {doc['threads']} threads).",
        ]
    )


def render_decode(results: Path) -> str:
    """``benchmarks/decode_latency.py``: reduce-on-decode vs full decode, alternating."""
    path = results / "decode_latency.json"
    doc = read_json(path)
    reps = doc["repeats"]
    rows = [
        ["reduce-on-decode (`Image.draft`)", fmt_spread((r["draft_ms"] for r in reps), 2)],
        ["full decode, then resize", fmt_spread((r["full_ms"] for r in reps), 2)],
    ]
    return "\n\n".join(
        [
            source_line([path], [doc]),
            table(["path", "ms/image"], rows, "lr"),
            f"Full / draft: {fmt_spread((r['ratio'] for r in reps), 2, 'x')} (median [min-max] "
            f"over {len(reps)} alternating repeats of {doc['args']['number']} decodes).",
        ]
    )


def render_perf_analyzer(results: Path) -> str:
    """``benchmarks/perf_analyzer/run.sh --json``: the summary table and the server's view."""
    path = results / "perf_analyzer.json"
    doc = read_json(path)
    rows, notes = [], []
    for name, run in doc["runs"].items():
        steps = run["steps"]
        for s in steps:
            load = f"{s['load']:g}" if s["mode"] == "concurrency" else f"{s['load']:g}/s"
            rows.append(
                [
                    s["mode"].replace("_", " "),
                    load,
                    fmt(s["infer_per_s"], 2),
                    *(fmt(s[f"p{p}_ms"]) for p in (50, 90, 99)),
                    fmt(s["avg_ms"]),
                    fmt(s["server_queue_compute_ms"]),
                ]
            )
        server = run.get("server_metrics") or {}
        if steps and server.get("mean_ms"):
            weight = sum(s["infer_per_s"] for s in steps)
            client = sum(s["infer_per_s"] * s["avg_ms"] for s in steps) / weight
            notes.append(
                f"{name.replace('_', ' ')} {client:.1f} vs {server['mean_ms']:.1f} ms "
                f"({client / server['mean_ms']:.2f}x)"
            )
    header = ["mode", "load", "infer/s", "p50 ms", "p90 ms", "p99 ms", "avg ms", "srv q+c ms"]
    failures = doc.get("failures") or []
    summary = (
        "perf_analyzer mean latency (throughput-weighted) vs the server's own /metrics mean: "
        + ("; ".join(notes) if notes else "no server view recorded")
        + f". One run, no repeats. Failures: {len(failures) or 'none'}."
    )
    return "\n\n".join([source_line([path], [doc]), table(header, rows, "lrrrrrrr"), summary])


# --- served sections (compare.py) -------------------------------------------------------------


def _closed_rows(data: Compare, labels: Sequence[str]) -> list[list[str]]:
    rows = []
    for label in labels:
        for offered in data.offered(label):
            rs = data.of(label, offered)
            rows.append(
                [
                    system_name(label),
                    f"{offered:g}",
                    fmt_spread(data.values(label, offered, "throughput_rps"), 2),
                    fmt_spread(data.values(label, offered, "p50_ms")),
                    fmt_spread(data.values(label, offered, "p99_ms")),
                    fmt_spread(data.values(label, offered, "mean_batch"), 2),
                    fmt_spread(data.values(label, offered, "server_cpu_pct"), 0),
                    fmt_spread(data.values(label, offered, "client_cpu_pct"), 0),
                    str(len(rs)),
                ]
            )
    return rows


CLOSED_HEADER = [
    "system",
    "clients",
    "req/s",
    "p50 ms",
    "p99 ms",
    "batch",
    "server CPU %",
    "generator CPU %",
    "repeats",
]
CLOSED_NOTE = (
    "Each cell: median [min-max] over repeats (one value when there is one repeat); CPU % of "
    "one core, server process tree and load generator."
)


def _ratio_text(data: Compare, a: str, b: str, key: str = "throughput_rps") -> str:
    parts = []
    for offered in data.offered(a):
        ratios = paired_ratios(data.by_repeat(a, offered, key), data.by_repeat(b, offered, key))
        if ratios:
            parts.append(f"{load_label(offered, 'closed')} {fmt_spread(ratios, 2, 'x')}")
    return ", ".join(parts) or "not measured"


def render_naive_batched(results: Path) -> str:
    path = results / "naive_batched.json"
    data = load_compare(path)
    return "\n\n".join(
        [
            source_line([path], [read_json(path)]),
            table(
                CLOSED_HEADER,
                _closed_rows(data, [x for x in VISIONLOOP if data.of(x)]),
                "lrrrrrrrr",
            ),
            CLOSED_NOTE,
            "Batched / naive, paired by repeat: throughput "
            f"{_ratio_text(data, 'batched', 'naive')}; p99 "
            f"{_ratio_text(data, 'batched', 'naive', 'p99_ms')}.",
        ]
    )


def ceiling_rates(results: Path) -> list[float]:
    """Images/s of every round of the saturation section's ceiling files (before and after)."""
    rates = []
    for name in ("saturation_ceiling_before.json", "saturation_ceiling_after.json"):
        if (results / name).exists():
            rates += [t["images_per_s"] for t in read_json(results / name)["rounds"]]
    return rates


def served_ratio(data: Compare, label: str, ceiling: list[float]) -> list[float]:
    """served / ceiling: median over median, then the extremes (lowest served over highest
    ceiling, highest over lowest), so the range holds the noise of both."""
    served = [v for o in data.offered(label) for v in data.values(label, o, "throughput_rps")]
    if not served or not ceiling:
        return []
    s, c = spread(served), spread(ceiling)
    return [s[0] / c[0], s[1] / c[2], s[2] / c[1]]


def render_saturation(results: Path) -> str:
    path = results / "saturation.json"
    data = load_compare(path)
    ceiling = ceiling_rates(results)
    parts = [
        source_line([path], [read_json(path)]),
        table(
            CLOSED_HEADER,
            _closed_rows(data, [x for x in ("fixed", "adaptive") if data.of(x)]),
            "lrrrrrrrr",
        ),
        CLOSED_NOTE,
    ]
    summary = (
        f"Adaptive / fixed throughput, paired by repeat: {_ratio_text(data, 'adaptive', 'fixed')}."
    )
    if ceiling:
        files = [
            results / n
            for n in ("saturation_ceiling_before.json", "saturation_ceiling_after.json")
            if (results / n).exists()
        ]
        parts.append(
            "Model-only ceiling at batch 8, measured in the same run (before and after the "
            f"served runs): {fmt_spread(ceiling, 1)} images/s over {len(ceiling)} rounds; "
            + source_line(files, [read_json(f) for f in files]).removeprefix("Results: ")
        )
        for label in ("fixed", "adaptive"):
            r = served_ratio(data, label, ceiling)
            if r:
                summary += f" Served / ceiling, {label}: {r[0]:.2f} [{r[1]:.2f}-{r[2]:.2f}]."
    parts.append(summary)
    return "\n\n".join(parts)


def best_by_repeat(data: Compare, label: str) -> dict[int, float]:
    """The best goodput of ``label`` over its rates, per repeat (grid and refine rows)."""
    best: dict[int, float] = {}
    for r in data.of(label):
        repeat = int(r.get("repeat", 0))
        best[repeat] = max(best.get(repeat, 0.0), float(r["goodput_rps"]))
    return best


def peer_comparison(data: Compare, ours: str = "adaptive") -> tuple[str, list[float]] | None:
    """The best peer (by median best goodput) and ours / the best peer's per repeat: each
    repeat's best peer, so a peer lucky in one repeat counts there."""
    peers = [x for x in data.labels() if is_peer(x)]
    if not peers or not data.of(ours):
        return None
    bests = {p: best_by_repeat(data, p) for p in peers}
    top = max(peers, key=lambda p: (statistics.median(bests[p].values()), p))
    repeats = sorted(set().union(*(b.keys() for b in bests.values())))
    best_peer = {r: max(b.get(r, 0.0) for b in bests.values()) for r in repeats}
    return top, paired_ratios(best_by_repeat(data, ours), best_peer)


def render_peers(results: Path, name: str) -> str:
    """Open loop, every system: goodput per rate, then per row latency and both CPUs."""
    path = results / f"{name}.json"
    data = load_compare(path)
    rates = data.offered()
    labels = data.labels()
    goodput = [
        [
            system_name(x),
            *(
                fmt_spread(data.values(x, o, "goodput_rps"), 1) if data.of(x, o) else ""
                for o in rates
            ),
        ]
        for x in labels
    ]
    detail = []
    for x in labels:
        for o in data.offered(x):
            statuses: dict[str, int] = {}
            for r in data.of(x, o):
                for status, count in r["statuses"].items():
                    statuses[status] = statuses.get(status, 0) + int(count)
            detail.append(
                [
                    system_name(x),
                    f"{o:g}",
                    fmt_spread(data.values(x, o, "goodput_rps"), 1),
                    fmt_spread(data.values(x, o, "p50_ms"), 0),
                    fmt_spread(data.values(x, o, "p99_ms"), 0),
                    fmt_spread(data.values(x, o, "client_cpu_pct"), 0),
                    fmt_spread(data.values(x, o, "server_cpu_pct"), 0),
                    " ".join(f"{k}:{v}" for k, v in sorted(statuses.items())),
                ]
            )
    best = sorted(
        ((statistics.median(best_by_repeat(data, x).values()), x) for x in labels),
        key=lambda bx: (-bx[0], bx[1]),
    )
    best_text = ", ".join(
        f"{system_name(x)} {fmt_spread(best_by_repeat(data, x).values(), 1)}" for _, x in best
    )
    comparison = peer_comparison(data)
    ratio = (
        f"**adaptive / best peer ({system_name(comparison[0])}) = "
        f"{fmt_spread(comparison[1], 2, 'x')}** (per repeat: adaptive's best goodput over the "
        "best of any peer in that repeat)."
        if comparison and comparison[1]
        else "No adaptive-vs-peer ratio: the file lacks adaptive or any peer."
    )
    slo = data.rows[0].get("slo_ms", 250.0) if data.rows else 250.0
    versions = data.meta.get("peer_versions") or {}
    source = source_line([path], [read_json(path)])
    if versions:
        source += " Peer versions: " + ", ".join(
            f"{system_name(k)} {v}" for k, v in sorted(versions.items())
        )
        source += "."
    return "\n\n".join(
        [
            source,
            f"Goodput (answers/s with status 200 within {slo:g} ms), median [min-max] over "
            "repeats, by offered load (a blank cell: rate not measured for that system):",
            table(["system", *(f"{o:g}/s" for o in rates)], goodput, "l" + "r" * len(rates)),
            "Per row, summed statuses over the repeats; generator and server CPU in % of one core:",
            table(
                [
                    "system",
                    "rate/s",
                    "goodput/s",
                    "p50 ms",
                    "p99 ms",
                    "generator CPU %",
                    "server CPU %",
                    "statuses",
                ],
                detail,
                "lrrrrrrl",
            ),
            f"Best goodput over the rates, median [min-max] over repeats: {best_text}. {ratio}",
        ]
    )


def render_drift(results: Path) -> str:
    path = results / "drift_overhead.json"
    data = load_compare(path)
    labels = [x for x in ("adaptive", "adaptive-drift1", "adaptive-drift10") if data.of(x)]
    rows = _closed_rows(data, labels)
    ratios = [
        f"{x.removeprefix('adaptive-drift')}% {_ratio_text(data, x, 'adaptive')}"
        for x in labels[1:]
    ]
    return "\n\n".join(
        [
            source_line([path], [read_json(path)]),
            table(CLOSED_HEADER, rows, "lrrrrrrrr"),
            CLOSED_NOTE,
            f"Throughput with the tap / without, paired by repeat: {'; '.join(ratios) or '-'}.",
        ]
    )


def render_distributed(results: Path) -> str:
    paths = [results / "distributed_closed.json", results / "distributed_open.json"]
    found = [p for p in paths if p.exists()]
    if not found:
        raise MissingResults(f"no results file {paths[0]} or {paths[1]}")
    rows, notes = [], []
    for path in found:
        data = load_compare(path)
        for x in ("adaptive", "redis-1w", "redis-2w"):
            for o in data.offered(x):
                mode = data.of(x, o)[0]["mode"]
                all_ok = all(set(r["statuses"]) == {"200"} for r in data.of(x, o))
                rows.append(
                    [
                        x if x != "adaptive" else "adaptive (memory)",
                        load_label(o, mode),
                        fmt_spread(data.values(x, o, "throughput_rps"), 2),
                        fmt_spread(data.values(x, o, "p50_ms")),
                        fmt_spread(data.values(x, o, "p99_ms")),
                        fmt_spread(data.values(x, o, "server_cpu_pct"), 0),
                        "yes" if all_ok else "no",
                    ]
                )
        for a, b in (("redis-1w", "adaptive"), ("redis-2w", "redis-1w")):
            for o in data.offered(a):
                r = paired_ratios(
                    data.by_repeat(a, o, "throughput_rps"), data.by_repeat(b, o, "throughput_rps")
                )
                if r:
                    mode = data.of(a, o)[0]["mode"]
                    notes.append(f"{a} / {b} at {load_label(o, mode)} {fmt_spread(r, 3, 'x')}")
    header = ["system", "load", "req/s", "p50 ms", "p99 ms", "server CPU %", "all 200"]
    return "\n\n".join(
        [
            source_line(found, [read_json(p) for p in found]),
            table(header, rows, "llrrrrl"),
            CLOSED_NOTE,
            f"Throughput ratios, paired by repeat: {'; '.join(notes) or '-'}.",
        ]
    )


# --- targets of issue 4 -----------------------------------------------------------------------


def verdict(values: Sequence[float], target: float) -> str:
    """met: the whole range clears the target; missed: none of it does; else within noise."""
    if not values:
        return "not measured"
    _, low, high = spread(values)
    if low >= target:
        return "met"
    if high < target:
        return "missed"
    return "within the spread, not shown"


def _optional(loader: Callable[[Path], Compare], path: Path) -> Compare | None:
    return loader(path) if path.exists() else None


def _target_rows(results: Path) -> list[list[str]]:
    sat = _optional(load_compare, results / "saturation.json")
    peers = _optional(load_compare, results / "peers_shipped.json")
    ceiling = ceiling_rates(results)
    rows = []
    for label in ("fixed", "adaptive"):
        r = served_ratio(sat, label, ceiling) if sat else []
        rows.append(
            [
                f"served throughput at saturation >= 0.85 x model-only ceiling ({label})",
                f"{r[0]:.2f} [{r[1]:.2f}-{r[2]:.2f}]" if r else "-",
                verdict(r[1:], 0.85),
            ]
        )
    like_for_like = _optional(load_compare, results / "peers_slo.json")
    for data, which in ((peers, "as shipped"), (like_for_like, "on our engine, tuned to the SLO")):
        comparison = peer_comparison(data) if data else None
        ratios = comparison[1] if comparison else []
        rows.append(
            [
                f"goodput at 250 ms SLO >= 1.3 x best peer ({which})",
                fmt_spread(ratios, 2, "x"),
                verdict(ratios, 1.3),
            ]
        )
    p50: list[float] = []
    p50_label = "adaptive p50 at ~10% load <= naive + 2 ms (margin, ms)"
    if peers and peers.of("naive") and peers.of("adaptive"):
        low = min(peers.offered("adaptive"))
        a, n = peers.by_repeat("adaptive", low, "p50_ms"), peers.by_repeat("naive", low, "p50_ms")
        p50 = [n[r] + 2 - a[r] for r in sorted(set(a) & set(n))]
        p50_label = f"adaptive p50 at {low:g}/s (the lowest rate) <= naive + 2 ms (margin, ms)"
    rows.append([p50_label, fmt_spread(p50, 1), verdict(p50, 0.0)])
    sat_ratio = []
    if sat:
        sat_ratio = [
            x
            for o in sat.offered("adaptive")
            for x in paired_ratios(
                sat.by_repeat("adaptive", o, "throughput_rps"),
                sat.by_repeat("fixed", o, "throughput_rps"),
            )
        ]
    rows.append(
        [
            "adaptive throughput at saturation >= fixed's",
            fmt_spread(sat_ratio, 3, "x"),
            verdict(sat_ratio, 1.0),
        ]
    )
    overload: list[float] = []
    if sat and peers and peers.of("adaptive") and sat.of("adaptive"):
        top = max(peers.offered("adaptive"))
        capacity = statistics.median(
            v for o in sat.offered("adaptive") for v in sat.values("adaptive", o, "throughput_rps")
        )
        overload = [g / capacity for g in peers.values("adaptive", top, "goodput_rps")]
        rows.append(
            [
                f"adaptive goodput at {top:g}/s ({top / capacity:.1f}x capacity) >= 0.9 x capacity",
                fmt_spread(overload, 2, "x"),
                verdict(overload, 0.9),
            ]
        )
    else:
        rows.append(["adaptive goodput at 2x overload >= 0.9 x capacity", "-", "not measured"])
    return rows


def render_issue4_targets(results: Path) -> str:
    needed = [results / f"{n}.json" for n in ("saturation", "peers_shipped", "peers_slo")]
    if not any(p.exists() for p in needed):
        raise MissingResults("none of " + ", ".join(map(str, needed)))
    return "\n\n".join(
        [
            "From " + " and ".join(f"`{shown(p)}`" for p in needed if p.exists()) + " (capacity: "
            "adaptive's closed-loop median at saturation; the ceiling: the saturation section's).",
            table(
                ["target", "measured, median [min-max]", "verdict"], _target_rows(results), "lll"
            ),
            "Verdicts: met when the whole min-max range clears the target, missed when none of it "
            "does, otherwise the target is within the spread and not shown either way.",
        ]
    )


RENDERERS: dict[str, Callable[[Path], str]] = {
    "ceiling": render_ceiling,
    "fusion": render_fusion,
    "decode": render_decode,
    "perf_analyzer": render_perf_analyzer,
    "naive_batched": render_naive_batched,
    "saturation": render_saturation,
    "peers_shipped": lambda results: render_peers(results, "peers_shipped"),
    "peers_slo": lambda results: render_peers(results, "peers_slo"),
    "drift": render_drift,
    "distributed": render_distributed,
    "issue4_targets": render_issue4_targets,
}


def render_file(markdown: Path, results: Path, names: Iterable[str] | None = None) -> list[str]:
    """Rewrite the marker pairs ``names`` (all by default) of ``markdown`` from ``results``.

    Every marker is checked first (MarkerError before anything is written); a section whose
    files are missing is left as it is. Returns one line per section saying what happened.
    """
    names = list(RENDERERS if names is None else names)
    text = markdown.read_text()
    check_markers(text, names)
    report = []
    for name in names:
        try:
            body = RENDERERS[name](results)
        except MissingResults as exc:
            report.append(f"{name}: left as it is ({exc})")
            continue
        text = replace_between(text, name, body)
        report.append(f"{name}: rendered")
    markdown.write_text(text)
    return report

"""bench ceiling: times real forward passes and reports consistent figures."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from visionloop.bench.ceiling import (
    main,
    median_timings,
    round_order,
    spread,
    time_alternating,
    time_forward,
)
from visionloop.cli import app


def test_time_forward_reports_one_timing_per_batch_size(catdog):
    timings = time_forward(catdog, [1, 2], "fused", min_run_time=0.05)
    assert [t.batch_size for t in timings] == [1, 2]
    for t in timings:
        assert t.median_ms > 0
        assert t.runs >= 1
        assert t.per_image_ms * t.batch_size == t.median_ms
        assert abs(t.images_per_s - 1e3 / t.per_image_ms) < 1e-6


def test_cli_ceiling_prints_fused_and_unfused_rows():
    result = CliRunner().invoke(
        app, ["bench", "ceiling", "--batch-sizes", "1", "--min-run-time", "0.05"]
    )
    assert result.exit_code == 0, result.output
    rows = [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in result.stdout.splitlines()
        if line.strip().startswith("│")
    ]
    # One row per variant ("fused" alone, not as part of "unfused"), each with its figures.
    assert [row[:2] for row in rows] == [["fused", "1"], ["unfused", "1"]]
    for row in rows:
        assert all(float(cell) > 0 for cell in row[2:]), row


def test_cli_ceiling_alternates_which_variant_goes_first(monkeypatch):
    """Timing the unfused model always second let the machine's drift pick the ratio."""
    from visionloop.bench import ceiling

    orders: list[list[str]] = []
    real = ceiling._time_one

    def spy(model, size, label, min_run_time):
        if not orders or len(orders[-1]) == 2:
            orders.append([])
        orders[-1].append(label)
        return real(model, size, label, min_run_time)

    monkeypatch.setattr(ceiling, "_time_one", spy)
    result = CliRunner().invoke(
        app, ["bench", "ceiling", "--batch-sizes", "1", "--min-run-time", "0.01", "--rounds", "2"]
    )
    assert result.exit_code == 0, result.output
    assert orders == [["fused", "unfused"], ["unfused", "fused"]]


def test_cli_ceiling_rejects_a_zero_batch_size():
    result = CliRunner().invoke(app, ["bench", "ceiling", "--batch-sizes", "0"])
    assert result.exit_code == 2


def test_round_order_alternates_abba():
    assert [round_order(["a", "b"], r) for r in range(4)] == [
        ["a", "b"],
        ["b", "a"],
        ["a", "b"],
        ["b", "a"],
    ]


def test_time_alternating_swaps_who_goes_first_each_round(catdog):
    timings = time_alternating({"a": catdog, "b": catdog}, [1], rounds=2, min_run_time=0.01)
    assert [(t.round, t.position, t.label) for t in timings] == [
        (0, 0, "a"),
        (0, 1, "b"),
        (1, 0, "b"),
        (1, 1, "a"),
    ]
    medians = median_timings(timings)
    assert [(t.label, t.batch_size) for t in medians] == [("a", 1), ("b", 1)]
    assert all(t.median_ms > 0 for t in medians)


def test_spread_is_median_min_max():
    assert spread([3.0, 1.0, 2.0, 10.0]) == {"median": 2.5, "min": 1.0, "max": 10.0, "n": 4}


def test_script_writes_every_round_with_machine_and_command(tmp_path):
    out = tmp_path / "ceiling.json"
    main(["--batch-sizes", "1", "--rounds", "2", "--min-run-time", "0.01", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert [(r["label"], r["round"]) for r in doc["rounds"]] == [
        ("fused", 0),
        ("unfused", 0),
        ("unfused", 1),
        ("fused", 1),
    ]
    assert doc["engines"]["fused"]["engine"] == "torch"
    assert {"cpu_count", "cpu_model", "avx512_flags", "torch", "torch_threads"} <= set(
        doc["machine"]
    )
    assert "--rounds 2" in doc["command"]

"""bench ceiling: times real forward passes and reports consistent figures."""

from __future__ import annotations

from typer.testing import CliRunner

from visionloop.bench.ceiling import time_forward
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


def test_cli_ceiling_rejects_a_zero_batch_size():
    result = CliRunner().invoke(app, ["bench", "ceiling", "--batch-sizes", "0"])
    assert result.exit_code == 2
